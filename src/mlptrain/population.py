"""Populations: the jobs of a sweep that train same-shaped networks, trained as one stacked model.

Each member is an ordinary run, `train(cfg)` in a thread of its own, with its own Trainer, data order,
checkpoints, metrics and summary. Only its updates are not its own: every member's `MemberSteps` hands
its mini-batches to the `Population`, which waits until every member still training has handed in its
own, and makes all their updates together. The gradients are `step.gradients` vmapped over the members
(one batched matrix product per layer instead of one per member); the updates are torch.optim's
functional code (`step.UPDATES`), applied to the members' stacked tensors, once per set of members that
share their optimizer settings. The launcher that groups a sweep's jobs: hydra_plugins/mlptrain_population.
"""

import threading
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from mlptrain.step import FastSteps, State, choose_path, gradients

# Keys in which the members of one population may differ: everything else must be equal to stack them.
MEMBER_KEYS = (
    "seed",
    "data.shuffle_seed",
    "model.init",
    "optimizer.lr",
    "optimizer.weight_decay",
    "optimizer.momentum",
    "optimizer.betas",
    "optimizer.eps",
    "output_dir",
)


def stack_key(cfg: DictConfig) -> str | None:
    """What must be equal for two jobs to train as one population, as a string; None where the job cannot be
    stacked (it then runs on its own): Lightning's own loop, dropout (its random masks come from the one
    process-wide generator), or a config that does not resolve."""
    job = OmegaConf.masked_copy(cfg, [key for key in cfg if key not in ("hydra", "output_dir")])
    try:
        plain = OmegaConf.to_container(job, resolve=True)
        path = choose_path(job)
    except Exception:  # the job's own run will say what is wrong
        return None
    if not job.train or path.steps_per_call == 1 or job.model.dropout:
        return None
    for key in MEMBER_KEYS:
        *parents, last = key.split(".")
        node = plain
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return repr(sorted(plain.items()))


class Population:
    """The members' meeting point: `run` blocks until every member still training has called it, then makes
    all their updates at once (in the thread that came last) and hands each its results."""

    def __init__(self, members: Sequence[str]) -> None:
        self.waiting: dict[str, tuple[Any, ...]] = {}
        self.active = set(members)
        self.results: dict[str, Any] = {}
        self.condition = threading.Condition()
        self.stop_requested = False  # set on SIGTERM: every member stops at its next call, with a checkpoint
        self.built: set[str] = set()

    def wait_for_the_others(self, member: str) -> None:
        """Called once a member has drawn its initial weights: wait until every member has. Lightning sets the
        process-wide default dtype inside each training step (64-true precision), and a model built meanwhile
        in another thread would draw its weights in that dtype, not in the one a run alone draws them in."""
        with self.condition:
            self.built.add(member)
            self.condition.notify_all()
            self.condition.wait_for(lambda: self.active <= self.built)

    def leave(self, member: str) -> None:
        """A member is done (finished, failed or stopped): the others no longer wait for it."""
        with self.condition:
            self.active.discard(member)
            self._run_if_all_here()
            self.condition.notify_all()  # members waiting for the others to be built

    def run(self, member: str, request: tuple[Any, ...]) -> Any:
        with self.condition:
            self.waiting[member] = request
            self._run_if_all_here()
            self.condition.wait_for(lambda: member in self.results)
            result = self.results.pop(member)
        if isinstance(result, BaseException):
            raise result
        return result

    def _run_if_all_here(self) -> None:
        if not self.waiting or not self.active <= set(self.waiting):
            return
        requests, self.waiting = self.waiting, {}
        if self.stop_requested:  # every member stops before this call, so all resume from the same place
            self.results.update({member: SIGTERMException() for member in requests})
            self.condition.notify_all()
            return
        # Members at different places (resumed from checkpoints of different steps) make their own stacks.
        stacks: dict[tuple[int, ...], dict[str, tuple[Any, ...]]] = {}
        for member, request in requests.items():
            stacks.setdefault(tuple(len(y) for y in request[2]), {})[member] = request
        for stack in stacks.values():
            try:
                self.results.update(stacked_updates(stack))
            except Exception as error:  # every member says what went wrong, rather than waiting for ever
                self.results.update({member: error for member in stack})
        self.condition.notify_all()


def stacked_updates(requests: Mapping[str, tuple[Any, ...]]) -> dict[str, Any]:
    """Every member's updates for its mini-batches, made together: requests maps a member to (its MemberSteps,
    xs, ys, scheduler) with K mini-batches each, the same sizes for every member. Returns each member's
    (losses (K,), outputs (K*B, 10), labels (K*B,), gradient norms (K, n) or None), as FastSteps does."""
    # Members with the same optimizer settings side by side: their updates are one call on a slice (a view).
    sets = _alike([_settings(requests[name][0]) for name in requests])
    names = [name for members in sets for name in (list(requests)[m] for m in members)]
    slices, start = [], 0
    for members in sets:
        slices.append(slice(start, start + len(members)))
        start += len(members)
    steps: list[MemberSteps] = [requests[name][0] for name in names]
    first = steps[0]
    param_names = [name for name, _ in first.model.named_parameters()]
    member_params = [s.param_group()["params"] for s in steps]
    params = [torch.stack([own[i].detach() for own in member_params]) for i in range(len(param_names))]  # (N, ...)
    states = {
        key: [
            torch.stack([s.optimizer.state[own[i]][key] for s, own in zip(steps, member_params)])
            for i in range(len(params))
        ]
        for key in first.update.state_keys(first.param_group())
    }
    clip, norms_of = first.clip, first.norms_of

    def member_gradients(values: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        grads, loss, output = gradients(first.model, first.loss_fn, dict(zip(param_names, values)), x, y, True)
        norms = [torch.linalg.vector_norm(grads[param_names.index(n)]) for n in norms_of]
        norms = torch.stack(norms) if norms else torch.zeros(0, dtype=loss.dtype, device=loss.device)
        return (clip(grads) if clip is not None else grads), loss, output, norms

    batched = torch.func.vmap(member_gradients)
    xs = [requests[name][1] for name in names]
    ys = [requests[name][2] for name in names]
    schedulers = [requests[name][3] for name in names]
    losses, outputs, norms = [], [], []
    for i in range(len(xs[0])):
        x = torch.stack([member_xs[i] for member_xs in xs])  # (N, B, 784)
        y = torch.stack([member_ys[i] for member_ys in ys])  # (N, B)
        grads, loss, output, norm = batched(params, x, y)
        for part in slices:  # torch.optim's update, once per set of members with the same settings
            leader = steps[part.start]
            sub_state: State = {key: [t[part] for t in tensors] for key, tensors in states.items()}
            if "step" in sub_state:  # Adam's step count, a number: the same for members that made the same updates
                counts = sub_state["step"]
                sub_state["step"] = [t[0].clone() for t in counts]
            with torch.no_grad():
                new_state = first.update.apply(
                    [p[part] for p in params],
                    [g[part] for g in grads],
                    sub_state,
                    leader.param_group(),
                    leader.scheduled_values(),
                )
            if "step" in new_state:
                for t, count in zip(counts, new_state["step"]):
                    t.copy_(count.expand_as(t))
        for s, scheduler in zip(steps, schedulers):
            s.step_scheduler(scheduler)
        losses.append(loss)
        outputs.append(output)
        norms.append(norm)
    results = {}
    for m, (name, s) in enumerate(zip(names, steps)):
        s.write_back(
            dict(zip(param_names, (p[m] for p in params))),
            {key: [t[m] for t in tensors] for key, tensors in states.items()},
        )
        results[name] = (
            torch.stack([loss[m] for loss in losses]),
            torch.cat([output[m] for output in outputs]),
            torch.cat(list(ys[m])),
            torch.stack([norm[m] for norm in norms]) if norms_of else None,
        )
    return results


def _settings(steps: "MemberSteps") -> str:
    """A member's optimizer settings, this step's scheduled values and (Adam's) step count, as a string."""
    group = steps.param_group()
    values = {**{k: v for k, v in group.items() if k != "params"}, **steps.scheduled_values()}
    count = steps.optimizer.state.get(group["params"][0], {}).get("step")  # .get: the state is a defaultdict
    return repr((sorted(values.items()), None if count is None else float(count)))


def _alike(settings: Sequence[str]) -> list[list[int]]:
    """Indices of the members whose settings (_settings) are equal, set by set."""
    sets: dict[str, list[int]] = {}
    for index, key in enumerate(settings):
        sets.setdefault(key, []).append(index)
    return list(sets.values())


class MemberSteps(FastSteps):
    """A member's FastSteps: its first update is its own (the optimizer's step() creates its state, as in a run
    alone); every later group of updates is made with the other members', by the Population."""

    def __init__(self, population: Population, member: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "compile": False})
        self.population, self.member = population, member

    def _eager_group(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], scheduler: Any) -> tuple[Any, ...]:
        if self.population.stop_requested:
            raise SIGTERMException()  # as Lightning stops a run on SIGTERM: callbacks.CheckpointOnStop saves it
        return self.population.run(self.member, (self, list(xs), list(ys), scheduler))


_current = threading.local()


@contextmanager
def member_of(population: Population, member: str) -> Any:
    """Within this block, in this thread, train(cfg) trains as `member` of `population`."""
    _current.value = (population, member)
    try:
        yield
    finally:
        _current.value = None
        population.leave(member)


def current() -> tuple[Population, str] | None:
    """The population this thread's run belongs to, and its name in it; None for a run of its own."""
    return getattr(_current, "value", None)
