"""One training step, written once, and the engine that runs it for one network or N stacked ones.

    train_step(params, states, x, y, sets) -> (new params, new states, loss, output, gradient norms)

The gradients come from autograd (`gradients`, `member_gradients`: with their norms and clipping); the update
is torch.optim's own functional code (`torch.optim.sgd.sgd`, `adam.adam`, `adamw.adamw`, the functions the
optimizer classes call), once per set of members with equal optimizer settings. The parameters may carry a
leading member axis (a population's, model.MLP): every member's step at once. `train_step` is pure (torch.func
over copies of its inputs), which is what torch.compile traces; `Engine` makes the same two calls in place
through the model's own parameters, which is faster uncompiled.
`Engine` runs K mini-batches per Lightning training step, for a single run (MLPSystem) and for a population
(MLPSystem.population) alike, eagerly or in groups compiled by `torch.compile`, and keeps each
`torch.optim.Optimizer` (its state, its param_groups that the schedulers change) in step with what it
computed, so checkpoints, schedulers and resuming see ordinary optimizers. Which of its ways a run takes is
decided by the path policy, mlptrain.training_path."""

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim.adam import adam
from torch.optim.adamw import adamw
from torch.optim.sgd import sgd

from mlptrain.model import MLP

log = logging.getLogger(__name__)

Tensors = list[torch.Tensor]
State = dict[str, Tensors]  # optimizer state key -> one tensor per parameter, in parameter order
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
COMPILE_GROUP = 10  # updates per compiled call: more unrolls a longer graph for little gain (docs/benchmarks.md)


def _sgd_update(params: Tensors, grads: Tensors, state: State, group: Mapping[str, Any], hyper: Mapping) -> State:
    buffers: list[torch.Tensor | None] = list(state.get("momentum_buffer", [None] * len(params)))
    sgd(
        params,
        grads,
        buffers,
        weight_decay=group["weight_decay"],
        momentum=hyper["momentum"] if "momentum" in hyper else group["momentum"],
        lr=hyper["lr"],
        dampening=group["dampening"],
        nesterov=group["nesterov"],
        maximize=group["maximize"],
        foreach=group["foreach"],
        fused=group["fused"],
    )
    return {"momentum_buffer": buffers} if group["momentum"] else {}  # type: ignore[dict-item]


def _adam_update(
    params: Tensors, grads: Tensors, state: State, group: Mapping[str, Any], hyper: Mapping, decoupled: bool = False
) -> State:
    beta1, beta2 = hyper["betas"] if "betas" in hyper else group["betas"]
    # AdamW, or Adam(decoupled_weight_decay=True) on torch versions that have it: the same decoupled maths.
    update = adamw if decoupled or group.get("decoupled_weight_decay") else adam
    amsgrad = group["amsgrad"]
    update(
        params,
        grads,
        state["exp_avg"],
        state["exp_avg_sq"],
        state["max_exp_avg_sq"] if amsgrad else [],
        state["step"],
        amsgrad=amsgrad,
        beta1=beta1,
        beta2=beta2,
        lr=hyper["lr"],
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=group["maximize"],
        foreach=group["foreach"],
        capturable=group["capturable"],
        differentiable=group["differentiable"],
        fused=group["fused"],
    )
    return state


@dataclass(frozen=True)
class Update:
    """How one torch.optim class's functional update is called, and which of its state it carries."""

    apply: Callable[[Tensors, Tensors, State, Mapping[str, Any], Mapping[str, Any]], State]
    state_keys: Callable[[Mapping[str, Any]], tuple[str, ...]]
    scheduled: tuple[str, ...]  # param_group keys a schedule may change step by step (passed as `hyper`)


def _adam_state(group: Mapping[str, Any]) -> tuple[str, ...]:
    return ("exp_avg", "exp_avg_sq", "step", *(("max_exp_avg_sq",) if group["amsgrad"] else ()))


UPDATES: dict[type[Optimizer], Update] = {
    SGD: Update(_sgd_update, lambda group: ("momentum_buffer",) if group["momentum"] else (), ("lr", "momentum")),
    Adam: Update(_adam_update, _adam_state, ("lr", "betas")),
    AdamW: Update(partial(_adam_update, decoupled=True), _adam_state, ("lr", "betas")),
}


def find_update(optimizer: Optimizer) -> Update | None:
    return UPDATES.get(type(optimizer))  # the class itself: a subclass may change the update


def unsupported_reason(optimizer_class: type, optimizer_kwargs: Mapping[str, Any]) -> str | None:
    """Why the fast path cannot make this optimizer's updates, or None when it can."""
    if optimizer_class not in UPDATES:
        names = ", ".join(f"torch.optim.{kind.__name__}" for kind in UPDATES)
        public = optimizer_class.__module__.startswith("torch.optim")  # torch.optim.rmsprop.RMSprop: as users name it
        name = f"torch.optim.{optimizer_class.__name__}" if public else optimizer_class.__qualname__
        return f"{name} has no functional update here ({names} do)"
    if optimizer_kwargs.get("differentiable"):
        return "differentiable=true is for differentiating through the update"
    return None


@dataclass(frozen=True)
class Clip:
    """Lightning's gradient clipping (trainer.gradient_clip_val / gradient_clip_algorithm), as torch computes it."""

    value: float
    algorithm: str = "norm"

    def __call__(self, grads: Tensors, members: bool = False) -> Tensors:
        """grads of one network; members=True: of N networks, stacked (N, ...), each clipped as its own."""
        if self.algorithm == "value":  # torch.nn.utils.clip_grad_value_
            return [g.clamp(-self.value, self.value) for g in grads]
        # torch.nn.utils.clip_grad_norm_: the 2-norm of all a network's gradients together, scaled down to `value`
        stacked = grads if members else [g[None] for g in grads]  # one network: a member axis of 1
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2.0, dim=1) for g in stacked], 1)  # (N, n)
        scale = torch.clamp(self.value / (torch.linalg.vector_norm(norms, 2.0, dim=1) + 1e-6), max=1.0)  # (N,)
        clipped = [g * scale.view(-1, *[1] * (g.dim() - 1)) for g in stacked]
        return clipped if members else [g[0] for g in clipped]


def gradients(
    model: nn.Module,
    loss_fn: LossFn,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    functional: bool,
    scale: int = 1,
) -> tuple[Tensors, torch.Tensor, torch.Tensor]:
    """d loss(model(x), y) / d params by autograd: (gradients in params' order, loss, output (B, 10)).
    scale: the loss is divided by it before its gradient is taken, as Lightning's loop divides each mini-batch's
    loss by trainer.accumulate_grad_batches; the loss returned is not.

    With N members' parameters stacked (N, ...) (model.MLP evaluates them at once), x (N, B, 784) and y (N, B):
    the loss is each member's (N,), the output (N, B, 10), and the gradients are those of the losses' sum,
    which for each member's parameters is its own loss's gradient.
    functional=True evaluates the model at `params` with torch.func (what torch.compile traces); False runs
    the model's own parameters, which `params` must then be, through plain autograd: on a CPU, torch.func's
    wrapping costs about 0.5 ms a call, more than a whole step of Nielsen's network.
    """
    if not functional:
        output = model(x)
        loss = loss_fn(output, y)
        scaled = loss if scale == 1 else loss / scale
        total = scaled if loss.dim() == 0 else scaled.sum()  # one network's loss as it is: no extra node
        return list(torch.autograd.grad(total, list(params.values()))), loss.detach(), output.detach()
    names = list(params)

    def loss_of(values: Tensors) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        output = torch.func.functional_call(model, dict(zip(names, values)), (x,))
        loss = loss_fn(output, y)
        return (loss if loss.dim() == 0 else loss.sum()), (loss, output)

    grads, (loss, output) = torch.func.grad(loss_of, has_aux=True)(list(params.values()))
    return grads, loss.detach(), output.detach()


def member_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    clip: Clip | None = None,
    norms_of: Sequence[str] = (),
    functional: bool = False,
    masks: Sequence[torch.Tensor] | None = None,
) -> tuple[Tensors, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`gradients`, then each network's gradient norms before clipping and its clipping, as Lightning's loop
    makes them. One network: norms (len(norms_of),); N members stacked (N, ...): each its own, (N, len(norms_of)).

    masks: for members of different widths, zero-padded to the widest (a population's), each parameter's
    (N, ...) True where it is a member's own; the padding's gradients are held at exactly zero, so it stays
    zero under every update, and adds nothing to a norm or a clipping."""
    grads, loss, output = gradients(model, loss_fn, params, x, y, functional)
    grads, norms = finish_gradients(held(grads, masks), list(params), loss.dim() > 0, clip, norms_of)
    return grads, loss, output, norms


def held(grads: Tensors, masks: Sequence[torch.Tensor] | None) -> Tensors:
    """The gradients with the zero-padding's held at exactly zero (`member_gradients`' masks; None: as they are)."""
    return grads if masks is None else [g.where(mask, 0) for g, mask in zip(grads, masks)]


def finish_gradients(
    grads: Tensors, names: Sequence[str], members: bool, clip: Clip | None, norms_of: Sequence[str]
) -> tuple[Tensors, torch.Tensor | None]:
    """An update's gradients (members: N stacked networks'), clipped, and their norms before clipping, as
    Lightning's loop makes them just before optimizer.step(); `member_gradients`."""
    norms = None
    if norms_of:
        found = [grads[names.index(name)] for name in norms_of]
        norms = torch.stack(
            [torch.linalg.vector_norm(g.flatten(1), dim=1) if members else torch.linalg.vector_norm(g) for g in found],
            -1,
        )
    if clip is not None:
        grads = clip(grads, members=members)
    return grads, norms


def _part(tensor: torch.Tensor, part: slice) -> torch.Tensor:
    """A set of members' slice of a stacked tensor; the tensor itself for the whole (and for one network's)."""
    return tensor if part == slice(None) else tensor[part]


def train_step(
    model: nn.Module,
    loss_fn: LossFn,
    update: Update,
    params: Mapping[str, torch.Tensor],
    states: Sequence[State],
    x: torch.Tensor,
    y: torch.Tensor,
    sets: Sequence[tuple[slice, Mapping[str, Any], Mapping[str, Any]]],
    clip: Clip | None = None,
    norms_of: Sequence[str] = (),
    masks: Sequence[torch.Tensor] | None = None,
) -> tuple[Tensors, list[State], torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One mini-batch update, as Lightning's automatic loop makes it with torch.optim optimizers: a pure
    function (its inputs are left unchanged), which is what torch.compile traces. `Engine` makes the same
    update in place, through the same two functions.

    params: name -> tensor (model.named_parameters() order), one network's or N members' stacked (N, ...);
    x (B, 784) or (N, B, 784), y (B,) or (N, B). sets: for each set of members with equal optimizer settings,
    its slice of the stack (slice(None): all, or the one network), its optimizer's settings (param_groups[0])
    and this step's scheduled values (lr, momentum or betas; numbers or 0-dim tensors); states: each set's
    optimizer state (`update.state_keys`), one tensor per parameter. Returns the new parameters and states,
    the loss (() or (N,)), the output and the gradient norms (`member_gradients`, which `masks` go to).
    """
    grads, loss, output, norms = member_gradients(model, loss_fn, params, x, y, clip, norms_of, True, masks)
    new_params = [p.clone() for p in params.values()]  # torch.optim updates in place: on copies
    new_states = []
    for (part, group, hyper), state in zip(sets, states):
        state = {key: [t.clone() for t in tensors] for key, tensors in state.items()}
        set_params, set_grads = [_part(p, part) for p in new_params], [_part(g, part) for g in grads]
        with torch.no_grad():
            state = update.apply(set_params, set_grads, state, group, hyper)
        new_states.append(state)
    return new_params, new_states, loss, output, norms


def _eager_settings(group: Mapping[str, Any], device: torch.device, stacked: bool) -> Mapping[str, Any]:
    """An optimizer's settings for the in-place updates. For N stacked members on a CPU, torch.optim's fused
    implementation: one pass over each tensor, where the single-tensor one (torch's default there) makes one per
    operation, which for N members costs N times the memory traffic; the same update, to rounding. Elsewhere the
    optimizer's own, so a single run's updates are those of Lightning's loop, bit for bit."""
    return {**group, "fused": True, "foreach": False} if stacked and device.type == "cpu" else group


Inputs = Callable[[int, int], torch.Tensor]
"""inputs(start, stop): the inputs of a call's mini-batches start..stop-1, (stop - start, [N,] B, 784), of equal
size where stop - start > 1; they may be overwritten by the next call."""


class Engine:
    """Makes the updates of K mini-batches per call, for N >= 1 same-shaped networks held as one model: a
    single run's MLP, or a population's, whose parameters are the members' stacked (N, ...) (model.MLP).

    `optimizers` are torch.optim optimizers, one per set of members with equal settings, each over its `parts`
    slice of the stacked tensors (views), or one over a single network's parameters (parts: [slice(None)]).
    They stay the owners of the state: each call reads their state and scheduled values and updates them in
    place, so `state_dict()` and the learning-rate schedulers see what they would after as many `step()` calls.
    Where an optimizer keeps a state and has none yet, its own `step()` makes the update that creates it, as in
    Lightning's loop; every other update is torch.optim's functional code (`UPDATES`). `compile=True` runs each
    whole group of COMPILE_GROUP equal-sized updates as one `torch.compile`d `train_step` chain; if compiling
    fails, one warning, and every later update is eager. `masks`: members zero-padded to the widest
    (`member_gradients`). `accumulate` (trainer.accumulate_grad_batches, one mini-batch a call): each mini-batch's
    gradient is its loss's divided by it, summed until a call with update=True makes one update of the sum, as
    Lightning's loop does with its parameters' .grad.
    """

    def __init__(
        self,
        model: MLP,
        loss_fn: LossFn,
        optimizers: Sequence[Optimizer],
        parts: Sequence[slice] = (slice(None),),
        compile: bool = False,
        clip: Clip | None = None,
        norms_of: Sequence[str] = (),
        masks: Sequence[torch.Tensor] | None = None,
        accumulate: int = 1,
    ) -> None:
        updates = {find_update(optimizer) for optimizer in optimizers}
        if len({type(o) for o in optimizers}) != 1 or any(len(o.param_groups) != 1 for o in optimizers):
            raise ValueError("Engine takes optimizers of one class, each with one parameter group")
        if None in updates and compile:
            raise ValueError(f"Engine compiles the functional updates of {', '.join(k.__name__ for k in UPDATES)} only")
        if len(optimizers) != len(parts):
            raise ValueError("Engine needs one optimizer per set of members")
        if accumulate > 1 and compile:
            raise ValueError("Engine accumulates gradients in its eager updates only")
        self.model, self.loss_fn, self.optimizers, self.parts = model, loss_fn, list(optimizers), list(parts)
        # None: an optimizer without a functional update here (RMSprop, Adagrad, ...), whose own step() makes every
        # update, as Lightning's loop makes them (a population's members; a single run takes Lightning's loop).
        self.update: Update | None = updates.pop()
        self.stacked = model.stacked  # members on a leading axis of every parameter (model.MLP)
        self.names = [name for name, _ in model.named_parameters()]
        self.clip, self.norms_of, self.masks = clip, tuple(norms_of), masks
        self.compile = compile
        self._compiled: Callable[..., Any] | None = None
        self.accumulate = accumulate
        self.pending: Tensors | None = None  # the gradients summed since the last update (accumulate > 1)

    def _state(self, optimizer: Optimizer) -> State | None:
        """The optimizer's state as lists in parameter order; None before its first step has created it, and
        always for an optimizer without a functional update (its own step() makes every update)."""
        if self.update is None:
            return None
        group = optimizer.param_groups[0]
        keys = self.update.state_keys(group)
        if any(key not in optimizer.state.get(p, {}) for p in group["params"] for key in keys):
            return None
        return {key: [optimizer.state[p][key] for p in group["params"]] for key in keys}

    def _scheduled(self, optimizer: Optimizer) -> dict[str, Any]:
        return {key: optimizer.param_groups[0][key] for key in self.update.scheduled}

    def run(
        self,
        inputs: Inputs,
        labels: torch.Tensor | Sequence[torch.Tensor],
        schedulers: Sequence[Any] = (),
        update: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Train on the K mini-batches whose inputs are inputs(i, i + 1)[0] (`Inputs`) and labels labels[i], in
        order, stepping every scheduler after each update, as Lightning does for a step-interval schedule.
        Returns, with a member axis of N (1 for one network), the losses (K, N), the predicted digits (N, K*B)
        and their labels, each mini-batch's one after another, and the gradient norms (K, N, n), or None.
        update=False (accumulate > 1, one mini-batch): its gradient is only added to the sum, and no norms."""
        if self.accumulate > 1:
            if len(labels) != 1:
                raise ValueError("Engine accumulates gradients one mini-batch a call")
            losses, predicted, norms = self._eager(inputs, labels, 0, 1, schedulers if update else (), update)
            return self._stacked(losses, torch.cat(predicted, -1), labels, norms)
        if not update:
            raise ValueError("Engine updates every call unless it accumulates gradients")
        results = []
        start = 0
        if any(self._state(optimizer) is None for optimizer in self.optimizers):
            results.append(self._eager(inputs, labels, 0, 1, schedulers))  # makes the optimizers' states
            start = 1
        while start < len(labels):
            stop = min(start + COMPILE_GROUP, len(labels)) if self.compile else len(labels)
            # A short group, or batches of two sizes (the epoch's last is smaller), would each compile anew.
            whole = stop - start == COMPILE_GROUP and len({y.shape for y in labels[start:stop]}) == 1
            done = self._compiled_group(inputs, labels, start, stop, schedulers) if self.compile and whole else None
            results.append(done if done is not None else self._eager(inputs, labels, start, stop, schedulers))
            start = stop
        losses = torch.cat([done[0] for done in results])
        predicted = torch.cat([digits for done in results for digits in done[1]], -1)
        norms = torch.cat([done[2] for done in results]) if self.norms_of else None
        return self._stacked(losses, predicted, labels, norms)

    def _stacked(
        self, losses: torch.Tensor, predicted: torch.Tensor, labels: Any, norms: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if not self.stacked:  # one network: a member axis of one
            losses, predicted, norms = losses[:, None], predicted[None], norms[:, None] if norms is not None else None
        return losses, predicted, torch.cat(list(labels), -1), norms

    def _eager(
        self, inputs: Inputs, labels: torch.Tensor | Sequence[torch.Tensor], start: int, stop: int,
        schedulers: Sequence[Any], update: bool = True,
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:  # fmt: skip
        """Updates start..stop-1 in place: the model's parameters and the optimizers' state tensors.
        update=False: the one mini-batch's gradient is added to `pending`, for a later update."""
        params = dict(self.model.named_parameters())  # once per call: looking them up costs tens of microseconds
        # Each set's state tensors and settings, read once per call (a few microseconds each, as much as a small
        # network's update); None until the optimizer's first step() has created its state.
        states = [self._state(optimizer) for optimizer in self.optimizers]
        device = next(iter(params.values())).device
        settings = [_eager_settings(o.param_groups[0], device, self.stacked) for o in self.optimizers]
        losses, predicted, norms = [], [], []
        for i in range(start, stop):
            # member_gradients' steps, the loss divided by `accumulate` as Lightning's loop divides it
            grads, loss, output = gradients(
                self.model, self.loss_fn, params, inputs(i, i + 1)[0], labels[i], False, self.accumulate
            )
            grads = held(grads, self.masks)
            losses.append(loss)
            predicted.append(output.argmax(-1))
            if self.accumulate > 1:  # added to the sum, as to Lightning's .grad; updated from at a window's end
                if self.pending is not None:
                    grads = [total.add_(g) for total, g in zip(self.pending, grads)]
                self.pending = None if update else grads
                if not update:
                    continue
            grads, norm = finish_gradients(grads, self.names, self.stacked, self.clip, self.norms_of)
            for s, (part, optimizer) in enumerate(zip(self.parts, self.optimizers)):
                group = optimizer.param_groups[0]
                # Laid out as the parameters: torch 2.14's fused update on a CPU reads a transposed gradient wrongly.
                fused = self.stacked or settings[s].get("fused")
                set_grads = [_part(g, part).contiguous() for g in grads] if fused else grads
                if states[s] is None:  # its first update (its own step() creates its state, as in a run), or every one
                    for p, g in zip(group["params"], set_grads):
                        p.grad = g
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    states[s] = self._state(optimizer)
                    continue
                with torch.no_grad():
                    self.update.apply(group["params"], set_grads, states[s], settings[s], self._scheduled(optimizer))
            for scheduler in schedulers:  # torch warns if no optimizer.step() came first: the systems make one
                scheduler.step()
            norms.append(norm)
        return torch.stack(losses), predicted, torch.stack(norms) if self.norms_of and norms else None

    def _functional_group(
        self, params: Tensors, states: list[State], xs: torch.Tensor, ys: torch.Tensor, rows: torch.Tensor
    ) -> tuple[Any, ...]:
        """COMPILE_GROUP updates as one pure function, for torch.compile: xs (C, [N,] B, 784), ys (C, [N,] B),
        rows (C, sets, k) each set's scheduled values at each step, as tensors (see _scheduled_rows)."""
        losses, outputs, norms = [], [], []
        for i in range(xs.shape[0]):
            sets = [(part, self._constants[s], self._hyper_of_row(rows[i, s])) for s, part in enumerate(self.parts)]
            params, states, loss, output, norm = train_step(
                self.model, self.loss_fn, self.update, dict(zip(self.names, params)), states, xs[i], ys[i], sets,
                self.clip, self.norms_of, self.masks,
            )  # fmt: skip
            losses.append(loss)
            outputs.append(output)
            norms.append(norm)
        stacked_norms = torch.stack(norms) if self.norms_of else None
        return params, states, torch.stack(losses), torch.stack(outputs), stacked_norms

    def _hyper_of_row(self, row: torch.Tensor) -> dict[str, Any]:
        hyper: dict[str, Any] = {"lr": row[0]}
        if "betas" in self.update.scheduled:  # tensors of the parameters' dtype: the bias corrections stay exact
            hyper["betas"] = (row[1], row[2])
        return hyper

    def _scheduled_rows(self, steps: int, schedulers: Sequence[Any], like: torch.Tensor) -> torch.Tensor:
        """The next `steps` updates' lr (and betas) of every set, as its optimizer would read them step by step;
        steps the schedulers. SGD's momentum is not among them: a cycled momentum is not compiled (choose_path)."""
        rows = []
        for _ in range(steps):
            groups = [optimizer.param_groups[0] for optimizer in self.optimizers]
            rows.append([[group["lr"], *group.get("betas", ())] for group in groups])
            for scheduler in schedulers:
                scheduler.step()
        return torch.tensor(rows, dtype=like.dtype, device=like.device)

    def _compiled_group(
        self, inputs: Inputs, labels: torch.Tensor | Sequence[torch.Tensor], start: int, stop: int,
        schedulers: Sequence[Any],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:  # fmt: skip
        params = [p.detach() for p in self.model.parameters()]
        device = params[0].device
        states = [self._state(optimizer) or {} for optimizer in self.optimizers]
        # Adam's step count is kept on the CPU; the compiled update takes it on the parameters' device.
        states = [{key: [t.to(device) for t in tensors] for key, tensors in state.items()} for state in states]
        saved = [scheduler.state_dict() for scheduler in schedulers]
        scheduled = [self._scheduled(optimizer) for optimizer in self.optimizers]  # to put back if compiling fails
        rows = self._scheduled_rows(stop - start, schedulers, params[0])
        if self._compiled is None:
            # What _scheduled_rows passes as tensors is left out; SGD's momentum stays (it is not cycled here).
            # torch.optim's foreach implementation, as torch's own compiled optimizers use: its single-tensor
            # one, traced after torch.func's gradients, is miscompiled with L2 weight decay by torch 2.14's
            # inductor (weights off by ~lr x grad; tests/test_train.py catches it). Adam's foreach code takes
            # a tensor lr only when capturable, which keeps its step count on the parameters' device.
            self._constants = []
            for optimizer in self.optimizers:
                group = optimizer.param_groups[0]
                constants = {k: v for k, v in group.items() if k not in ("params", "lr", "betas")}
                constants["foreach"], constants["fused"] = True, None  # whatever the eager updates' implementation
                if "capturable" in constants:
                    constants["capturable"] = True
                self._constants.append(constants)
            # Dynamo keeps 8 compilations per function and then runs it uncompiled, without an error: each new
            # Engine (a test session's or a benchmark's runs) would count as one. Its disk cache stays.
            torch.compiler.reset()
            # cpp_wrapper: inductor's C++ wrapper calls the kernels, not generated Python: a nielsen group's call
            # costs about 0.75x, its epoch about 0.8x (docs/benchmarks.md, "nielsen ... with the C++ wrapper").
            options = {"cpp_wrapper": True}
            self._compiled = torch.compile(self._functional_group, fullgraph=True, options=options)
        xs = inputs(start, stop)  # (C, [N,] B, 784)
        ys = labels[start:stop] if torch.is_tensor(labels) else torch.stack(list(labels[start:stop]))
        try:
            new_params, new_states, losses, outputs, norms = self._compiled(params, states, xs, ys, rows)
        except Exception as error:  # no C++ compiler, an unsupported platform, ...: train on, eagerly
            log.warning("torch.compile failed (%s); the updates run without compiling for the rest of this run.", error)
            self.compile = False
            for scheduler, state in zip(schedulers, saved):
                scheduler.load_state_dict(state)  # undo the scheduler steps taken above
            for optimizer, values in zip(self.optimizers, scheduled):
                optimizer.param_groups[0].update(values)
            return None
        with torch.no_grad():
            for p, new in zip(params, new_params):
                p.copy_(new)
            for optimizer, state in zip(self.optimizers, new_states):
                group_params = optimizer.param_groups[0]["params"]
                for key, tensors in state.items():
                    for p, new in zip(group_params, tensors):
                        optimizer.state[p][key].copy_(new)
        return losses, list(outputs.argmax(-1).unbind(0)), norms


# optimizer.implementation: torch.optim's own switch between its implementations of one update. single: a loop of
# operations per tensor; foreach: each operation over every tensor at once; fused: one kernel a tensor. auto: fused
# where torch has that kernel (FUSED, on a CPU or CUDA device) and Lightning can clip its gradients (not under
# mixed precision, whose gradient scaler a fused optimizer unscales itself), else torch's own default.
IMPLEMENTATIONS = ("auto", "single", "foreach", "fused")
FUSED = (SGD, Adam, AdamW)
MIXED_PRECISION = ("16-mixed", "bf16-mixed")


def implementation_arguments(kind: type | None, implementation: str, device: torch.device, precision: str) -> dict:
    """torch.optim's constructor arguments for `implementation` (IMPLEMENTATIONS) of an optimizer class."""
    if implementation == "single":
        return {"foreach": False}
    if implementation == "foreach":
        return {"foreach": True}
    if implementation == "fused":
        return {"fused": True}
    fused = kind in FUSED and device.type in ("cpu", "cuda") and precision not in MIXED_PRECISION
    return {"fused": True} if fused else {}


def make_optimizer(config: Mapping[str, Any], params: Any, precision: str = "32-true") -> Optimizer:
    """The torch.optim optimizer that `config` (conf/optimizer/, with `_partial_: true`) describes, over `params`
    (parameters, on their device), with its `implementation` (IMPLEMENTATIONS) as torch.optim's foreach/fused."""
    from hydra.utils import instantiate

    settings = dict(config)
    implementation = settings.pop("implementation", "auto")  # checkpoints before it was a setting: auto
    params = list(params)
    device = params[0].device if params else torch.device("cpu")
    arguments = implementation_arguments(optimizer_class(settings["_target_"]), implementation, device, precision)
    return instantiate(settings)(params, **arguments)


def optimizer_class(target: str) -> type | None:
    """The class an optimizer._target_ names, or None where it names none."""
    module, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if isinstance(found, type) else None
