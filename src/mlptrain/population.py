"""Populations: the jobs of a sweep that train same-shaped networks, trained as one stacked model.

Each member is an ordinary run, `train(cfg)` in a thread of its own, with its own Trainer, data order,
checkpoints, metrics and summary. Only its updates are not its own: every member's `MemberSteps` hands
its mini-batches (as rows of the inputs all members share) to the `Population`, and the launcher's thread,
in `Population.serve`, makes all their updates together once every member still training has handed in
its own. The gradients are `step.gradients` vmapped over the members (one batched matrix product per layer
instead of one per member), compiled by torch.compile where that pays; the updates are torch.optim's
functional code (`step.UPDATES`, its fused kernels), applied to the members' stacked tensors, once per set
of members that share their optimizer settings. Members run their own work (Lightning's loop, evaluation,
checkpoints) one at a time, on one core each. The launcher that groups a sweep's jobs:
hydra_plugins/mlptrain_population.
"""

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from mlptrain.step import FastSteps, choose_path, gradients, updates_per_run

log = logging.getLogger(__name__)
# compile=auto compiles the gradients of a population that makes this many updates: compiling them takes 4-8 s on
# a 2-core CPU, and saves 1-2 ms an update whatever the number of members (docs/benchmarks.md, "Populations").
COMPILE_MIN_UPDATES = 3_000

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
    """The members' meeting point: `run` blocks until every member still training has called it; `serve`, in the
    launcher's thread, then makes all their updates at once and hands each its results."""

    def __init__(self, members: Sequence[str], compile: bool = False) -> None:
        self.compile = compile  # the members' gradients through torch.compile (see `compiles`)
        self._eager: Callable[..., tuple[Any, ...]] | None = None
        self._compiled: Callable[..., tuple[Any, ...]] | None = None
        self._compiled_shape: tuple[int, ...] | None = None
        self.waiting: dict[str, tuple[Any, ...]] = {}
        self.active = set(members)
        self.results: dict[str, Any] = {}
        self.condition = threading.Condition()
        self.stop_requested = False  # set on SIGTERM: every member stops at its next call, with a checkpoint
        self.built: set[str] = set()
        self.turn = threading.Lock()  # held by the one member running its own work (see _others_turn)
        self.threads = torch.get_num_threads()  # for the stacked updates, made in the thread that made this

    def describe(self, steps_per_call: int) -> str:
        """A member's training path, as train() logs it."""
        how = "compiled" if self.compile else "not compiled"
        return f"{steps_per_call} mini-batches per training step, with the other members of a population ({how})"

    def wait_for_the_others(self, member: str) -> None:
        """Called once a member has drawn its initial weights: wait until every member has. Lightning sets the
        process-wide default dtype inside each training step (64-true precision), and a model built meanwhile
        in another thread would draw its weights in that dtype, not in the one a run alone draws them in."""
        with self._others_turn(), self.condition:
            self.built.add(member)
            self.condition.notify_all()
            self.condition.wait_for(lambda: self.active <= self.built)

    def leave(self, member: str) -> None:
        """A member is done (finished, failed or stopped): the others no longer wait for it."""
        with self.condition:
            self.active.discard(member)
            self.condition.notify_all()  # the updates may be due now; members waiting for the others to be built

    def run(self, member: str, request: tuple[Any, ...]) -> Any:
        """A member's updates (its MemberSteps, xs, ys, scheduler), made with the others' by `serve`."""
        with self._others_turn(), self.condition:
            self.waiting[member] = request
            self.condition.notify_all()
            self.condition.wait_for(lambda: member in self.results)
            result = self.results.pop(member)
        if isinstance(result, BaseException):
            raise result
        return result

    def serve(self, threads: Sequence[threading.Thread]) -> None:
        """Make the members' updates whenever every member still training has handed in its mini-batches, until
        every member's thread has ended. The launcher's own thread runs this: on a 2-core CPU (torch 2.14), a
        small compiled call took 1.1 ms in a thread started later, against 0.4 ms in the main thread."""
        while any(thread.is_alive() for thread in threads):
            with self.condition:
                # short waits: the launcher's SIGTERM handler runs in this thread, between them
                if self.condition.wait_for(self._all_here, timeout=0.5):
                    torch.set_num_threads(self.threads)  # the updates use every core (see member_of)
                    self._update()

    def _all_here(self) -> bool:
        return bool(self.waiting) and self.active <= set(self.waiting)

    @contextmanager
    def _others_turn(self) -> Any:
        """While a member waits for the others, one of them takes its turn. Members run their own work (Lightning's
        loop, metrics, data, checkpoints) one at a time: each torch operation already uses every core, and a
        dozen threads' operations at once would oversubscribe them (each thread has its own OpenMP team)."""
        self.turn.release()
        try:
            yield
        finally:
            self.turn.acquire()

    def _update(self) -> None:
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
                self.results.update(stacked_updates(stack, self.gradients(next(iter(stack.values()))[0])))
            except Exception as error:  # every member says what went wrong, rather than waiting for ever
                self.results.update({member: error for member in stack})
        self.condition.notify_all()

    def gradients(self, steps: "MemberSteps") -> Callable[..., tuple[Any, ...]]:
        """The members' batched gradients (`vmapped_gradients`, with any member's model: they share its shape),
        made once, and compiled where this population compiles. Only mini-batches of the size it first compiled
        for run compiled: an epoch's smaller last batch would compile anew, for one update in an epoch."""
        if self._eager is None:
            self._eager = vmapped_gradients(steps)
            if self.compile:
                # Dynamo keeps 8 compilations per function, then runs it uncompiled without an error: a process
                # that trains several populations (a test session) would count each. Its disk cache stays.
                torch.compiler.reset()
                self._compiled = torch.compile(self._eager, fullgraph=True, dynamic=False)
        return self._batched

    def _batched(self, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        assert self._eager is not None
        if self._compiled is not None and self._compiled_shape in (None, x.shape[1:]):
            try:
                result = self._compiled(params, x, y)
            except Exception as error:  # no C++ compiler, an unsupported platform, ...: train on, eagerly
                log.warning("torch.compile failed (%s); the population's updates run without compiling.", error)
                self._compiled = None
            else:
                self._compiled_shape = x.shape[1:]
                return result
        return self._eager(params, x, y)


def compiles(cfg: DictConfig) -> bool:
    """Whether a population of jobs configured as cfg compiles its members' gradients: compile=true, or
    compile=auto where it makes at least COMPILE_MIN_UPDATES stacked updates."""
    if cfg.compile == "auto":
        return updates_per_run(cfg) >= COMPILE_MIN_UPDATES
    return bool(cfg.compile)


def stacked_updates(requests: Mapping[str, tuple[Any, ...]], batched: Callable[..., tuple[Any, ...]]) -> dict[str, Any]:
    """Every member's updates for its mini-batches, made together: requests maps a member to (its MemberSteps,
    xs, ys, scheduler) with K mini-batches each, the same sizes for every member. Returns each member's
    (losses (K,), outputs (K*B, 10), labels (K*B,), gradient norms (K, n) or None), as FastSteps does.
    batched(params, x, y) computes the members' gradients (`Population.gradients`)."""
    # Members with the same optimizer settings side by side: their updates are one call on a slice (a view).
    sets = _alike([_settings(steps, scheduler) for steps, _, _, scheduler in requests.values()])
    order = list(requests)
    names = [order[m] for members in sets for m in members]
    slices, start = [], 0
    for members in sets:
        slices.append(slice(start, start + len(members)))
        start += len(members)
    steps: list[MemberSteps] = [requests[name][0] for name in names]
    first = steps[0]
    member_params = [s.param_group()["params"] for s in steps]
    params = [torch.stack([own[i].detach() for own in member_params]) for i in range(len(member_params[0]))]
    states = {
        key: [
            torch.stack([s.optimizer.state[own[i]][key] for s, own in zip(steps, member_params)])
            for i in range(len(params))
        ]
        for key in first.update.state_keys(first.param_group())
    }
    # every member's i-th mini-batch: rows[i] (N, B) of the inputs all members share, gathered update by update
    rows = _stack_members([requests[name][1] for name in names])
    ys = _stack_members([requests[name][2] for name in names])
    inputs = first.inputs()
    gathered: dict[int, torch.Tensor] = {}  # where each size of mini-batch is gathered
    schedulers = [requests[name][3] for name in names]
    # Only a set's leader steps its scheduler update by update (the set's updates read the leader's values). Its
    # other members' schedulers, the same schedule at the same place, take the leader's state once a call.
    scheduled = [(steps[part.start], schedulers[part.start]) for part in slices if schedulers[part.start] is not None]
    # Each set's parameters and state: views of the stacked tensors, which the updates change in place. The
    # settings a schedule does not change are its leader's (its first member's); the others, at each update.
    sets_of = [
        (
            part,
            steps[part.start],
            [p[part] for p in params],
            {key: [t[part] for t in tensors] for key, tensors in states.items()},
            _one_kernel(steps[part.start].param_group()),
        )
        for part in slices
    ]
    losses, outputs, norms = [], [], []
    for i in range(len(rows)):
        size = rows[i].numel()
        if size not in gathered:
            gathered[size] = inputs.new_empty((size, inputs.shape[-1]))
        x = first.rows(rows[i], gathered[size])
        grads, loss, output, norm = batched(params, x, ys[i])
        for part, leader, set_params, set_state, settings in sets_of:  # torch.optim's update, once per set
            sub_state = dict(set_state)
            if "step" in sub_state:  # Adam's step count, a number: the same for members that made the same updates
                counts = sub_state["step"]
                sub_state["step"] = [t[0].clone() for t in counts]
            with torch.no_grad():
                new_state = first.update.apply(
                    set_params, [g[part] for g in grads], sub_state, settings, leader.scheduled_values()
                )
            if "step" in new_state:
                for t, count in zip(counts, new_state["step"]):
                    t.copy_(count.expand_as(t))
        for s, scheduler in scheduled:
            s.step_scheduler(scheduler)
        losses.append(loss)
        outputs.append(output)
        norms.append(norm)
    for part in slices:
        if schedulers[part.start] is not None:
            schedule, values = schedulers[part.start].state_dict(), steps[part.start].scheduled_values()
            for m in range(part.start + 1, part.stop):
                schedulers[m].load_state_dict(schedule)
                steps[m].param_group().update(values)
    all_losses, all_outputs = torch.stack(losses, 1), torch.cat(outputs, 1)  # (N, K), (N, K*B, 10)
    all_norms = torch.stack(norms, 1) if first.norms_of else None  # (N, K, n)
    results = {}
    for m, (name, s) in enumerate(zip(names, steps)):
        s.write_back(
            dict(zip(s.param_names, (p[m] for p in params))),
            {key: [t[m] for t in tensors] for key, tensors in states.items()},
        )
        labels = requests[name][2]
        results[name] = (
            all_losses[m],
            all_outputs[m],
            labels.flatten() if torch.is_tensor(labels) else torch.cat(list(labels)),
            all_norms[m] if all_norms is not None else None,
        )
    return results


def vmapped_gradients(steps: "MemberSteps") -> Callable[..., tuple[Any, ...]]:
    """batched(params, x, y) -> (gradients, losses (N,), outputs (N, B, 10), norms (N, n)): `step.gradients`
    of steps' model and loss, clipped as its run clips them, vmapped over the members: params are the members'
    parameters stacked (N, ...), x (N, B, 784), y (N, B)."""
    names, clip, norms_of = steps.param_names, steps.clip, steps.norms_of

    def member_gradients(values: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        grads, loss, output = gradients(steps.model, steps.loss_fn, dict(zip(names, values)), x, y, True)
        norms = [torch.linalg.vector_norm(grads[names.index(n)]) for n in norms_of]
        norms = torch.stack(norms) if norms else torch.zeros(0, dtype=loss.dtype, device=loss.device)
        return (clip(grads) if clip is not None else grads), loss, output, norms

    def batched(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        return torch.func.vmap(member_gradients)(params, x, y)

    return batched


def _stack_members(batches: Sequence[Any]) -> Any:
    """Each member's K mini-batches (a (K, B, ...) tensor, or a list of K where their sizes differ) as one
    sequence whose i-th item is every member's i-th mini-batch, (N, B, ...)."""
    if all(torch.is_tensor(b) for b in batches):
        return torch.stack(list(batches), 1)  # (K, N, B, ...)
    return [torch.stack([b[i] for b in batches]) for i in range(len(batches[0]))]


def _one_kernel(group: Mapping[str, Any]) -> dict[str, Any]:
    """The optimizer's settings, with torch.optim's fused implementation of its update: one pass over each
    stacked tensor, where the single-tensor one (torch's default on a CPU) makes one per operation, which
    for N members costs N times as much memory traffic. The same update, to rounding."""
    return {**group, "fused": True, "foreach": False}


def _settings(steps: "MemberSteps", scheduler: Any) -> str:
    """A member's optimizer settings (this step's scheduled values among them), (Adam's) step count and its
    step-interval scheduler's state, as a string."""
    group = steps.param_group()
    values = {k: v for k, v in group.items() if k != "params"}
    count = steps.optimizer.state.get(group["params"][0], {}).get("step")  # .get: the state is a defaultdict
    schedule = sorted(scheduler.state_dict().items()) if scheduler is not None else None
    return repr((sorted(values.items()), None if count is None else float(count), schedule))


def _alike(settings: Sequence[str]) -> list[list[int]]:
    """Indices of the members whose settings (_settings) are equal, set by set."""
    sets: dict[str, list[int]] = {}
    for index, key in enumerate(settings):
        sets.setdefault(key, []).append(index)
    return list(sets.values())


class MemberSteps(FastSteps):
    """A member's FastSteps: its first update is its own (the optimizer's step() creates its state, as in a run
    alone); every later group of updates is made with the other members', by the Population. Its mini-batches
    come as rows of `inputs()` (the data module's gather=False), which the population gathers for all members
    in one operation: gathering them member by member, then stacking them, moved each image twice."""

    def __init__(
        self, population: Population, member: str, inputs: Callable[[], torch.Tensor], *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **{**kwargs, "compile": False})
        self.population, self.member, self.inputs = population, member, inputs

    def rows(self, index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The inputs of the mini-batch rows `index` (...), as (..., 784) in the model's dtype (Lightning's 64-true
        precision converts a batch so). out: where to gather them, (index.numel(), 784) in the inputs' dtype.
        Gathering into the same memory every update is 3x faster on a CPU than into fresh memory."""
        inputs = self.inputs()
        x = torch.index_select(inputs, 0, index.flatten(), out=out).view(*index.shape, inputs.shape[-1])
        return x.to(self.param_group()["params"][0].dtype)

    def _first_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
        return super()._first_step(self.rows(x), y)

    def _eager_group(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], scheduler: Any) -> tuple[Any, ...]:
        if self.population.stop_requested:
            raise SIGTERMException()  # as Lightning stops a run on SIGTERM: callbacks.CheckpointOnStop saves it
        return self.population.run(self.member, (self, xs, ys, scheduler))


_current = threading.local()


@contextmanager
def member_of(population: Population, member: str) -> Any:
    """Within this block, in this thread, train(cfg) trains as `member` of `population`. The thread's own torch
    operations use one core: a member's work is small, and a thread whose operations have used several cores
    slows every other thread's later ones two to three times (measured on a 2-core CPU: its OpenMP team stays
    behind). Only the population's stacked updates, in the launcher's thread, use them all."""
    torch.set_num_threads(1)
    population.turn.acquire()
    _current.value = (population, member)
    try:
        yield
    finally:
        _current.value = None
        population.leave(member)
        population.turn.release()


def current() -> tuple[Population, str] | None:
    """The population this thread's run belongs to, and its name in it; None for a run of its own."""
    return getattr(_current, "value", None)
