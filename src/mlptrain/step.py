"""One training step, written once: a pure function of (parameters, optimizer state, mini-batch).

    train_step(params, state, x, y, hyper) -> (new params, new state, loss, output, gradient norms)

The gradients come from autograd; the update is torch.optim's own functional code (`torch.optim.sgd.sgd`,
`adam.adam`, `adamw.adamw`, the functions the optimizer classes call). With functional=True the step is pure
(`torch.func` over copies of the inputs), which is what torch.compile traces; with functional=False the
same maths runs through the model's own parameters, in place, which is faster uncompiled. The parameters may
carry a leading member axis (a population's, model.MLP): every member's step at once.
`FastSteps` runs it for several mini-batches per Lightning training step, eagerly or in groups compiled by
`torch.compile`, and keeps the `torch.optim.Optimizer` (its state, its param_groups that the schedulers
change) in step with what it computed, so checkpoints, schedulers and resuming see an ordinary optimizer.
The path policy is here too: `choose_path` decides, from the config, how a run makes its updates, with
`updates_per_run`, the compile rule (a run's and a population's) and what counts as several processes."""

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim.adam import adam
from torch.optim.adamw import adamw
from torch.optim.sgd import sgd

from mlptrain.errors import ConfigError

log = logging.getLogger(__name__)

Tensors = list[torch.Tensor]
State = dict[str, Tensors]  # optimizer state key -> one tensor per parameter, in parameter order
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
COMPILE_GROUP = 10  # updates per compiled call: more unrolls a longer graph for little gain (docs/benchmarks.md)
AUTO_STEPS_PER_CALL = 50  # mini-batches per Lightning training step when steps_per_call=auto
# compile=auto compiles runs of at least this many updates: compiling costs 25-40 s on a 2-core CPU the first
# time (a few seconds with inductor's cache warm) and saves 0.3-1.4 ms an update (docs/benchmarks.md), so shorter
# runs would lose time by it.
COMPILE_MIN_UPDATES = 20_000


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
    if optimizer_kwargs.get("fused"):
        return "fused=true optimizers run their own kernel"
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
        # torch.nn.utils.clip_grad_norm_: the 2-norm of all gradients together, scaled down to `value`
        if members:
            norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2.0, dim=1) for g in grads], 1)  # (N, n)
            scale = torch.clamp(self.value / (torch.linalg.vector_norm(norms, 2.0, dim=1) + 1e-6), max=1.0)
            return [g * scale.view(-1, *[1] * (g.dim() - 1)) for g in grads]
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, 2.0) for g in grads]), 2.0)
        scale = torch.clamp(self.value / (total + 1e-6), max=1.0)
        return [g * scale for g in grads]


def gradients(
    model: nn.Module,
    loss_fn: LossFn,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    functional: bool,
) -> tuple[Tensors, torch.Tensor, torch.Tensor]:
    """d loss(model(x), y) / d params by autograd: (gradients in params' order, loss, output (B, 10)).

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
        total = loss if loss.dim() == 0 else loss.sum()  # one network's loss as it is: no extra node
        return list(torch.autograd.grad(total, list(params.values()))), loss.detach(), output.detach()
    names = list(params)

    def loss_of(values: Tensors) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        output = torch.func.functional_call(model, dict(zip(names, values)), (x,))
        loss = loss_fn(output, y)
        return (loss if loss.dim() == 0 else loss.sum()), (loss, output)

    grads, (loss, output) = torch.func.grad(loss_of, has_aux=True)(list(params.values()))
    return grads, loss.detach(), output.detach()


def train_step(
    model: nn.Module,
    loss_fn: LossFn,
    update: Update,
    group: Mapping[str, Any],
    params: Mapping[str, torch.Tensor],
    state: State,
    x: torch.Tensor,
    y: torch.Tensor,
    hyper: Mapping[str, Any],
    clip: Clip | None = None,
    norms_of: Sequence[str] = (),
    functional: bool = True,
) -> tuple[dict[str, torch.Tensor], State, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One mini-batch update, as Lightning's automatic loop makes it with a torch.optim optimizer.

    params: name -> tensor (model.named_parameters() order); state: the optimizer's per-parameter tensors
    (`update.state_keys`); x (B, 784), y (B,); hyper: this step's scheduled values (lr, momentum or betas),
    Python numbers or 0-dim tensors; group: the optimizer's other settings (param_groups[0]).
    Returns the new parameters and state, the loss, the output (B, 10) and, for the parameters named in
    `norms_of`, their gradients' 2-norms before clipping (len(norms_of),).
    functional=True leaves its inputs unchanged (a pure function, for torch.compile); False updates
    the model's own parameters and the optimizer's own state tensors in place, as optimizer.step() does.
    """
    grads, loss, output = gradients(model, loss_fn, params, x, y, functional)
    names = list(params)
    norms = torch.stack([torch.linalg.vector_norm(grads[names.index(n)]) for n in norms_of]) if norms_of else None
    if clip is not None:
        grads = clip(grads)
    if functional:  # torch.optim updates in place: on copies
        new_params = [p.clone() for p in params.values()]
        state = {key: [t.clone() for t in tensors] for key, tensors in state.items()}
    else:
        new_params = [p.detach() for p in params.values()]
    with torch.no_grad():
        state = update.apply(new_params, grads, state, group, hyper)
    return dict(zip(names, new_params)), state, loss, output, norms


class FastSteps:
    """Makes several mini-batch updates per call with `train_step`, for one model and one torch.optim optimizer.

    The optimizer stays the owner of the state: each call reads its state and scheduled values, and writes
    the results back, so `optimizer.state_dict()` and the learning-rate scheduler see what they would after
    the same number of `optimizer.step()` calls. `compile=True` runs each whole group of COMPILE_GROUP
    updates as one `torch.compile`d function; if compiling fails, one warning, and every later update is eager.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        optimizer: Optimizer,
        compile: bool = False,
        clip: Clip | None = None,
        norms_of: Sequence[str] = (),
    ) -> None:
        update = find_update(optimizer)
        if update is None or len(optimizer.param_groups) != 1:
            raise ValueError(f"FastSteps takes one param group of {', '.join(k.__name__ for k in UPDATES)}")
        if [id(p) for p in optimizer.param_groups[0]["params"]] != [id(p) for p in model.parameters()]:
            raise ValueError("FastSteps needs the optimizer built over model.parameters(), in their order")
        self.model, self.loss_fn, self.optimizer, self.update = model, loss_fn, optimizer, update
        self.param_names = [name for name, _ in model.named_parameters()]
        self.clip, self.norms_of = clip, tuple(norms_of)
        self.compile = compile
        self._compiled: Callable[..., Any] | None = None

    def param_group(self) -> dict[str, Any]:
        return self.optimizer.param_groups[0]

    def _state(self) -> State | None:
        """The optimizer's state as lists in parameter order; None before its first step has created it."""
        keys = self.update.state_keys(self.param_group())
        params = self.param_group()["params"]
        if any(key not in self.optimizer.state.get(p, {}) for p in params for key in keys):
            return None
        return {key: [self.optimizer.state[p][key] for p in params] for key in keys}

    def scheduled_values(self) -> dict[str, Any]:
        return {key: self.param_group()[key] for key in self.update.scheduled}

    def run(
        self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], scheduler: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Train on the mini-batches xs[i], ys[i] in order, stepping `scheduler` after each update as Lightning
        does for a step-interval schedule. Returns the losses (K,), outputs (K*B, 10), labels (K*B,) and the
        gradient norms (K, len(norms_of)) or None."""
        losses, outputs, labels, norms = [], [], [], []
        start = 0
        if self._state() is None:  # the optimizer's own first step() creates its state, as in the plain path
            results = self._first_step(xs[0], ys[0])
            start = 1
            self.step_scheduler(scheduler)
            for store, value in zip((losses, outputs, labels, norms), results):
                store.append(value)
        while start < len(xs):
            size = COMPILE_GROUP if self.compile else len(xs) - start
            group = (xs[start : start + size], ys[start : start + size])
            # A short group, or batches of two sizes (the epoch's last is smaller), would each compile anew.
            whole = len(group[0]) == size and (torch.is_tensor(ys) or len({len(y) for y in group[1]}) == 1)
            results = self._compiled_group(*group, scheduler) if self.compile and whole else None
            if results is None:
                results = self._eager_group(*group, scheduler)
            for store, value in zip((losses, outputs, labels, norms), results):
                store.append(value)
            start += len(group[0])
        return (
            torch.cat(losses),
            torch.cat(outputs),
            torch.cat(labels),
            torch.cat(norms) if self.norms_of else None,
        )

    def _params(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.model.named_parameters()}

    def write_back(self, params: Mapping[str, torch.Tensor], state: State) -> None:
        with torch.no_grad():
            for p, new in zip(self.param_group()["params"], params.values()):
                p.copy_(new)
            for key, tensors in state.items():
                for p, new in zip(self.param_group()["params"], tensors):
                    self.optimizer.state[p][key].copy_(new)

    @staticmethod
    def step_scheduler(scheduler: Any) -> None:
        if scheduler is not None:  # torch warns if no optimizer.step() came first: MLPSystem makes one per call
            scheduler.step()

    def _first_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        """The run's first update: train_step's gradients go to .grad, and the optimizer's own step() makes the
        update and creates its state (momentum buffers, Adam's moments and step count) as the plain path does."""
        module_params = self.param_group()["params"]

        def to_grad(params: Tensors, grads: Tensors, state: State, group: Mapping, hyper: Mapping) -> State:
            for p, g in zip(module_params, grads):
                p.grad = g
            return state

        hand_over = Update(to_grad, lambda group: (), ())
        _, _, loss, output, norms = train_step(
            self.model, self.loss_fn, hand_over, {}, dict(self.model.named_parameters()), {}, x, y, {},
            self.clip, self.norms_of, functional=False,
        )  # fmt: skip
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss[None], output, y, norms[None] if norms is not None else None

    def _eager_group(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], scheduler: Any) -> tuple[Any, ...]:
        params, state = dict(self.model.named_parameters()), self._state() or {}
        losses, outputs, norms = [], [], []
        for x, y in zip(xs, ys):  # in place: the model's parameters and the optimizer's state tensors
            _, state, loss, output, norm = train_step(
                self.model, self.loss_fn, self.update, self.param_group(), params, state, x, y, self.scheduled_values(),
                self.clip, self.norms_of, functional=False,
            )  # fmt: skip
            self.step_scheduler(scheduler)
            losses.append(loss)
            outputs.append(output)
            norms.append(norm)
        return (
            torch.stack(losses),
            torch.cat(outputs),
            torch.cat(list(ys)),
            torch.stack(norms) if self.norms_of else None,
        )

    def _functional_group(
        self, params: dict[str, torch.Tensor], state: State, xs: torch.Tensor, ys: torch.Tensor, rows: torch.Tensor
    ) -> tuple[Any, ...]:
        """COMPILE_GROUP updates as one pure function, for torch.compile: xs (C, B, 784), ys (C, B), rows (C, k)
        the scheduled values of each step, as tensors (see _scheduled_rows)."""
        group = self._constants  # the settings no schedule changes, read once: the graph does not guard on them
        losses, outputs, norms = [], [], []
        for i in range(xs.shape[0]):
            hyper = self._hyper_of_row(rows[i])
            params, state, loss, output, norm = train_step(
                self.model, self.loss_fn, self.update, group, params, state, xs[i], ys[i], hyper,
                self.clip, self.norms_of,
            )  # fmt: skip
            losses.append(loss)
            outputs.append(output)
            norms.append(norm)
        stacked_norms = torch.stack(norms) if self.norms_of else None
        return params, state, torch.stack(losses), torch.cat(outputs), stacked_norms

    def _hyper_of_row(self, row: torch.Tensor) -> dict[str, Any]:
        hyper: dict[str, Any] = {"lr": row[0]}
        if "betas" in self.update.scheduled:  # tensors of the parameters' dtype: the bias corrections stay exact
            hyper["betas"] = (row[1], row[2])
        return hyper

    def _scheduled_rows(self, steps: int, scheduler: Any, like: torch.Tensor) -> torch.Tensor:
        """The next `steps` updates' lr (and betas), as the optimizer would read them step by step; steps
        the scheduler. SGD's momentum is not among them: a cycled momentum is not compiled (see choose_path)."""
        rows = []
        for _ in range(steps):
            group = self.param_group()
            rows.append([group["lr"], *group.get("betas", ())])
            self.step_scheduler(scheduler)
        return torch.tensor(rows, dtype=like.dtype, device=like.device)

    def _compiled_group(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], scheduler: Any) -> Any:
        params, state = self._params(), self._state() or {}
        first = next(iter(params.values()))
        state = {key: [t.to(first.device) for t in tensors] for key, tensors in state.items()}  # Adam's CPU step count
        schedule = scheduler.state_dict() if scheduler is not None else None
        scheduled = self.scheduled_values()  # to put back if compiling fails
        rows = self._scheduled_rows(len(xs), scheduler, first)
        if self._compiled is None:
            # what _scheduled_rows passes as tensors is left out; SGD's momentum stays (it is not cycled here)
            self._constants = {k: v for k, v in self.param_group().items() if k not in ("params", "lr", "betas")}
            # torch.optim's foreach implementation, as torch's own compiled optimizers use: its single-tensor
            # one, traced after torch.func's gradients, is miscompiled with L2 weight decay by torch 2.14's
            # inductor (weights off by ~lr x grad; tests/test_train.py catches it). Adam's foreach code takes
            # a tensor lr only when capturable, which keeps its step count on the parameters' device.
            self._constants["foreach"] = True
            if "capturable" in self._constants:
                self._constants["capturable"] = True
            # Dynamo keeps 8 compilations per function and then runs it uncompiled, without an error: each new
            # FastSteps (a test session's or a benchmark's runs) would count as one. Its disk cache stays.
            torch.compiler.reset()
            self._compiled = torch.compile(self._functional_group, fullgraph=True)
        x = xs if torch.is_tensor(xs) else torch.stack(list(xs))  # (C, B, 784)
        y = ys if torch.is_tensor(ys) else torch.stack(list(ys))  # (C, B)
        try:
            params, state, losses, outputs, norms = self._compiled(params, state, x, y, rows)
        except Exception as error:  # no C++ compiler, an unsupported platform, ...: train on, eagerly
            log.warning("torch.compile failed (%s); the updates run without compiling for the rest of this run.", error)
            self.compile = False
            if scheduler is not None:  # undo the scheduler steps taken above
                scheduler.load_state_dict(schedule)
                self.param_group().update(scheduled)
            return None
        self.write_back(params, state)
        return losses, outputs, y.flatten(), norms


@dataclass(frozen=True)
class Path:
    """How train(cfg) runs the updates: mini-batches per Lightning training step, compiled or not, and why."""

    steps_per_call: int
    compile: bool
    why: str


def several_processes(trainer: DictConfig) -> bool:
    """Whether Lightning runs this trainer config as several processes (DDP): more than one device or node.
    devices=auto is several where Lightning would take several GPUs (accelerator auto or gpu), one elsewhere."""
    devices = trainer.get("devices", 1)
    if devices == "auto":
        gpu = str(trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda")
        one = not (gpu and torch.cuda.device_count() > 1)
    else:
        one = devices in (1, "1") or (OmegaConf.is_list(devices) and len(devices) == 1)
    return not one or trainer.get("num_nodes", 1) > 1


def _plain_reason(cfg: DictConfig) -> str | None:
    """Why this config must run in Lightning's own loop (one mini-batch per training step), or None."""
    trainer = cfg.trainer
    if cfg.data.loader != "tensor":
        return "data.loader=dataloader serves one mini-batch at a time"
    if several_processes(trainer):
        return "with several processes Lightning's loop synchronises the gradients"
    if str(trainer.get("precision", "32-true")) not in ("32-true", "32", "64-true", "64"):
        return f"trainer.precision={trainer.precision} needs Lightning's mixed-precision loop (loss scaling)"
    counted = {  # trainer keys that count Lightning's training steps, which would each hold several mini-batches
        "max_steps": trainer.get("max_steps", -1) not in (-1, None),
        "val_check_interval": trainer.get("val_check_interval") not in (None, 1.0),
        "accumulate_grad_batches": trainer.get("accumulate_grad_batches", 1) != 1,
    }
    for key, is_set in counted.items():
        if is_set:
            return f"trainer.{key} counts Lightning's training steps, which would each hold several mini-batches"
    return None


def optimizer_class(target: str) -> type | None:
    """The class an optimizer._target_ names, or None where it names none."""
    module, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if isinstance(found, type) else None


def _optimizer_reason(cfg: DictConfig) -> str | None:
    kind = optimizer_class(cfg.optimizer["_target_"])
    if kind is None:  # mlptrain.config refuses it; this only keeps choose_path total
        return "the optimizer class could not be imported"
    return unsupported_reason(kind, cfg.optimizer)


def updates_per_run(cfg: DictConfig) -> int:
    """Optimizer updates that the configured run makes: epochs x mini-batches per epoch (limits applied)."""
    data, trainer = cfg.data, cfg.trainer
    if not all(isinstance(n, int) and n > 0 for n in (data.batch_size, data.val_size, data.train_size or 1)):
        return 0  # MNISTDataModule says what is wrong with them
    examples = data.train_size or 60_000 - data.val_size
    batches = -(-examples // data.batch_size)
    limit = trainer.get("limit_train_batches")
    if isinstance(limit, float):
        batches = int(batches * limit)
    elif isinstance(limit, int):
        batches = min(batches, limit)
    epochs = trainer.get("max_epochs") or 1000  # None or -1: until stopped
    return batches * (epochs if epochs > 0 else 1000)


def choose_path(cfg: DictConfig) -> Path:
    """steps_per_call and compile as the config sets them, `auto` resolved. Raises ConfigError for a choice
    that cannot hold; an optimizer without a functional update falls back to Lightning's loop with a reason."""
    wanted, compiling = cfg.steps_per_call, cfg.compile  # of the kinds mlptrain.config allows
    plain, optimizer = _plain_reason(cfg), _optimizer_reason(cfg)
    if wanted == 1 or (wanted == "auto" and (plain or optimizer)) or (wanted != "auto" and optimizer and not plain):
        why = "steps_per_call=1" if wanted == 1 else (plain or optimizer)
        if compiling is True:
            raise ConfigError(
                f"compile=true compiles the updates of several mini-batches per training step, but this run makes "
                f"one per step ({why}). Set compile=auto or false, or change what keeps it in Lightning's loop."
            )
        return Path(1, False, f"Lightning's loop, one mini-batch per training step: {why}")
    if plain:
        raise ConfigError(
            f"steps_per_call={wanted} cannot be used here: {plain}. Set steps_per_call=auto (it then picks 1) or 1."
        )
    steps = AUTO_STEPS_PER_CALL if wanted == "auto" else wanted
    updates = updates_per_run(cfg)
    cycled = cfg.scheduler.name == "onecycle" and cfg.scheduler.get("cycle_momentum", False)
    if cycled and cfg.optimizer["_target_"] == "torch.optim.SGD":
        if compiling is True:
            raise ConfigError(
                "compile=true does not compile SGD with a momentum that scheduler.cycle_momentum=true changes every "
                "step: set compile=auto or false, or scheduler.cycle_momentum=false."
            )
        return Path(steps, False, f"{steps} mini-batches per training step, not compiled: SGD's momentum is cycled")
    if compiling == "auto":
        dropout = cfg.model.get("dropout", 0.0)
        compiling = updates >= COMPILE_MIN_UPDATES and not dropout
        why = (
            f"{updates:,} updates, at least {COMPILE_MIN_UPDATES:,} pay for compiling"
            if compiling
            else "dropout: compiled code would draw other random masks than the plain path"
            if dropout and updates >= COMPILE_MIN_UPDATES
            else f"{updates:,} updates, fewer than the {COMPILE_MIN_UPDATES:,} that pay for compiling"
        )
    else:
        why = f"compile={str(compiling).lower()}"
    return Path(
        steps,
        bool(compiling),
        f"{steps} mini-batches per training step, {'compiled' if compiling else 'not compiled'} ({why})",
    )
