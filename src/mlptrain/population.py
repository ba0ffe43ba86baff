"""Populations: N same-shaped MLPs trained as one model with a member axis (hydra/launcher=population).

`PopulationSystem` holds one MLP whose parameters carry a leading member axis, (N, ...) each, for the whole run
(model.MLP evaluates them as N networks: one batched matrix product per layer); one Lightning Trainer trains it
in the main thread: one training loop, one validation and test loop, Lightning's checkpoint schedule and its
SIGTERM handling. The gradients are `step.gradients` of the sum of the members' losses (each member's gradient
is its own loss's), by plain autograd, or by torch.func through torch.compile where a run alone would compile.
The updates are torch.optim's: the members with equal optimizer settings are side by side, and each such set
has a torch.optim optimizer over its slice of the stacked tensors. Where the optimizer keeps a state, its own
step() makes the set's first update, creating the state as a run alone's first step does; every other update
is torch.optim's functional update (`step.UPDATES`), with its fused kernel. A learning-rate schedule is a
torch scheduler per set. Members may differ in kind (MEMBER_KINDS: each kind's slice of the stack has its own
activations and cost) and in width (MEMBER_WIDTHS: zero-padded to the widest, the padding's gradients held at
zero).

Each member still gets what a run alone gets, in its own directory: config.yaml, metrics.csv, summary.json,
its log, the report when asked, and best.ckpt/last.ckpt in a single run's format, which `train=false
ckpt_path=...`, scripts/predict.py and a single run's resume take. mlptrain.member_checkpoints cuts them out of the
population's checkpoint when Lightning saves it; the population itself keeps no checkpoint of its own, and its
resume=auto stacks the members' last.ckpt files again. A member whose loss turns NaN or infinite fails as a
run alone fails, with its message, and is masked: its records stop, the others train on.

Which jobs stack: mlptrain.stacking. The lifecycle (lock, resume, fit, test, records): mlptrain.population_train.
The launcher that groups a sweep's jobs and composes their configs: hydra_plugins/mlptrain_population.
"""

import logging
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn

from mlptrain.callbacks import Checkpoints, WeightTrajectory
from mlptrain.config import plain
from mlptrain.data import Chunk
from mlptrain.losses import make_loss, member_losses
from mlptrain.model import MLP, Kind
from mlptrain.rundir import running_summary, summarize, write_failed
from mlptrain.stacking import kind_of, optimizer_settings, side_by_side
from mlptrain.step import Clip, Engine, make_optimizer
from mlptrain.system import Members, hyperparameters, nonfinite_message
from mlptrain.training_path import TrainingPath

log = logging.getLogger(__name__)
LOG_FORMAT = "[%s][%s][%s] - %s\n"  # a member's log lines, as Hydra's job_logging writes a run's


def padded(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """tensor, zero-padded at the end of each axis to `shape` (a member narrower than the widest)."""
    if tensor.shape == shape:
        return tensor
    out = tensor.new_zeros(shape)
    out[tuple(slice(0, n) for n in tensor.shape)] = tensor
    return out


def cut(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A member's own part of its padded tensor (padded's inverse), as a tensor of its own."""
    return tensor[tuple(slice(0, n) for n in shape)].clone()


class PopulationSystem(Members):
    """N members' MLPs, stacked, trained on their own mini-batches (each its data.shuffle_seed's order) and
    evaluated on the shared validation and test sets, whose records are kept as a run's are (`Members`). `cfgs`
    are the members' configs, equal but for MEMBER_KEYS, MEMBER_KINDS and MEMBER_WIDTHS; they are kept sorted by
    optimizer settings (`self.cfgs`), members of a set side by side."""

    def __init__(self, cfgs: Sequence[DictConfig], path: TrainingPath) -> None:
        super().__init__()
        self.automatic_optimization = False  # the updates are made below; Lightning counts one step per call
        # Members of one kind side by side, and within it those with equal optimizer settings (an optimizer each)
        settings = [(kind_of(cfg), optimizer_settings(cfg)) for cfg in cfgs]
        order = sorted(range(len(cfgs)), key=lambda m: settings[m])
        self.cfgs = [cfgs[m] for m in order]
        first = self.cfgs[0]
        self.path, self.compile = path, path.compile  # compiled as a run alone would be (training_path.choose_path)
        self.run_dirs = [Path(cfg.output_dir) for cfg in self.cfgs]
        self.plain = [plain(cfg) for cfg in self.cfgs]  # each config resolved, for its files and checkpoints
        self.hparams_of = [hyperparameters(cfg, path) for cfg in self.cfgs]  # what MLPSystem would save
        ordered = [settings[m] for m in order]
        parts = side_by_side(ordered)  # the sets of members with equal optimizer settings, slices of the stack
        self.set_of = [s for s, part in enumerate(parts) for _ in range(part.start, part.stop)]  # each member's
        kinds = side_by_side([kind for kind, _ in ordered])  # the members of each kind, as slices of the stack
        models, generators = [], []
        for cfg in self.cfgs:  # each member's weights, drawn as its run alone draws them
            L.seed_everything(cfg.seed, workers=True, verbose=False)
            models.append(MLP(**plain(cfg.model)))
            # Its random generator, where its run alone's stands once the weights are drawn: its dropout masks
            generators.append(torch.Generator().set_state(torch.get_rng_state()))
        # One MLP whose parameters are every member's, stacked: (N, ...) each. Members of different widths (the
        # depth is equal) are zero-padded to the widest, and their padding's gradients held at zero (self.masks).
        self.names = [name for name, _ in models[0].named_parameters()]
        self.shapes = [{name: p.shape for name, p in model.named_parameters()} for model in models]  # each its own
        self.full = {name: torch.Size(map(max, zip(*(s[name] for s in self.shapes)))) for name in self.names}
        uneven = any(shapes != self.full for shapes in self.shapes)
        self.network = models[0]
        for name in self.names:
            values = torch.stack(
                [padded(dict(model.named_parameters())[name].detach(), self.full[name]) for model in models]
            )
            layer, _, kind = name.rpartition(".")
            setattr(self.network.get_submodule(layer), kind, nn.Parameter(values))
        self.masks = (
            [torch.stack([padded(torch.ones(s[name], dtype=torch.bool), self.full[name]) for s in self.shapes])
             for name in self.names]
            if uneven else None
        )  # fmt: skip
        self.network.widths = [list(cfg.model.hidden) for cfg in self.cfgs] if uneven else None
        if len(kinds) > 1:  # each kind computes with its own activations, output activation, dropout and cost
            self.network.kinds = [
                Kind(
                    part,
                    models[part.start].activations,
                    models[part.start].output_activation,
                    self.cfgs[part.start].model.dropout,
                )
                for part in kinds
            ]
            self.loss_fn = member_losses([(part, make_loss(**plain(self.cfgs[part.start].loss))) for part in kinds])
        else:
            self.loss_fn = make_loss(**plain(first.loss))
        del models
        self.network.generators = generators if any(cfg.model.dropout for cfg in self.cfgs) else None
        clip = first.trainer.gradient_clip_val
        self.clip = Clip(clip, first.trainer.gradient_clip_algorithm) if clip else None
        norms_of = [name for name in self.names if "weight" in name] if first.log_grad_norms else []
        self.keep_records(parts, norms_of, first.check_finite_every_n_steps, first.scheduler.name)
        self.engine: Engine | None = None  # made with the optimizers, in configure_optimizers
        self.gathered: dict[int, torch.Tensor] = {}  # where each size of the members' mini-batches is gathered
        self.checkpoints = [Checkpoints.into(run_dir / "checkpoints") for run_dir in self.run_dirs]
        self.failures: list[dict[str, Any] | None] = [None] * len(cfgs)  # a failed member's summary fields
        self.improved: torch.Tensor | None = None  # (N,) at an epoch's end: whose val/acc is its best so far
        self.last_val_acc: torch.Tensor | None = None  # (N,) of the last validation
        # The parameters the test uses: each member's best.ckpt's (population_train.at_best); None: the network's
        self.evaluated: list[torch.Tensor] | None = None
        self.resumed: list[dict[str, Any]] | None = None  # the members' checkpoints a resume starts from
        self.log_name = "train.log"  # each member's log, in its directory: Hydra's job log name
        self.tensorboards: list[Any] | None = None  # logger=tensorboard: each member's own (train.tensorboard_logger)
        self.trackers: list[Any] | None = None  # logger=mlflow: each member's MLflow run (mlptrain.tracking.Tracker)
        # report.landscape: each member's path through weight space, kept as its run alone's WeightTrajectory keeps it
        self.trajectories = [WeightTrajectory() for _ in self.cfgs] if first.report.landscape else None
        self.started = time.perf_counter()

    @property
    def stacked(self) -> list[nn.Parameter]:
        """The network's parameters, in `names` order: every member's, stacked (N, ...)."""
        return list(self.network.parameters())

    # -- what each member is, as a run alone would describe it ---------------------------------------------------

    def active(self) -> list[int]:
        return [m for m, failure in enumerate(self.failures) if failure is None]

    def describe(self) -> str:
        """The training path as a run alone's log gives it (training_path.choose_path), in a population."""
        return f"{self.path.why}, with the other members of a population"

    def note(self, m: int, message: str, level: str = "INFO") -> None:
        """A line in member m's log (the file a run's log goes to)."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with (self.run_dirs[m] / self.log_name).open("a") as file:
            file.write(LOG_FORMAT % (stamp, __name__, level, message))

    # -- training ------------------------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        """One torch.optim optimizer per set of members, over its slice of every stacked tensor (views: they
        update the stack in place), and its schedule."""
        optimizers = []
        for part in self.parts:
            config = plain(self.cfgs[part.start].optimizer)
            optimizers.append(make_optimizer(config, [p.detach()[part] for p in self.stacked], self.trainer.precision))
        masks = [mask.to(self.device) for mask in self.masks] if self.masks is not None else None
        self.engine = Engine(
            self.network, self.loss_fn, optimizers, self.parts, self.compile, self.clip, self.norms_of, masks
        )
        return self.with_schedules(optimizers, plain(self.cfgs[0].scheduler))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        chunk: Chunk = batch  # K mini-batches, each member's rows of the training inputs (TensorBatches, gather=False)
        rows = chunk.rows
        shared = self.trainer.datamodule.train_inputs()  # (n, 784), shared by every member
        dtype = self.stacked[0].dtype

        def inputs(start: int, stop: int) -> torch.Tensor:
            """The members' inputs of updates start..stop-1 (C, N, B, 784), gathered into the same memory every
            call: 3x faster on a CPU than into fresh memory."""
            row = rows[start:stop] if torch.is_tensor(rows) else torch.stack(rows[start:stop])  # (C, N, B)
            out = self.gathered.get(row.numel())
            if out is None:
                out = self.gathered[row.numel()] = shared.new_empty((row.numel(), shared.shape[-1]))
            return torch.index_select(shared, 0, row.flatten(), out=out).view(*row.shape, -1).to(dtype)

        self.engine_step(inputs, chunk)

    # A member whose loss turns NaN fails alone, masked (check_finite): the population never stops for it, and
    # callbacks.CheckpointOnStop checkpoints it on SIGTERM.
    diverged = False

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        for m in self.active() if self.trajectories is not None else ():
            self.trajectories[m].stepped(partial(self.point, m), self.updates_done)

    def on_train_start(self) -> None:
        updates_per_epoch = self.trainer.num_training_batches * self.path.steps_per_call
        for m, trajectory in enumerate(self.trajectories or ()):
            trajectory.start(updates_per_epoch, partial(self.point, m), self.updates_done)

    def on_train_end(self) -> None:
        for m in self.active() if self.trajectories is not None else ():
            self.trajectories[m].end(partial(self.point, m), self.updates_done)

    def point(self, m: int) -> torch.Tensor:
        """Member m's parameters as one vector on the CPU, as anatomy.flatten gives its run alone's."""
        own = [cut(p[m].detach(), self.shapes[m][name]).flatten() for name, p in zip(self.names, self.stacked)]
        return torch.cat(own).cpu()

    def check_finite(self) -> None:
        """Members whose training loss has turned NaN or infinite fail, each as a run alone fails then."""
        for m in (self.nonfinite_step >= 0).nonzero().flatten().tolist():
            if self.failures[m] is not None:
                continue
            epoch, step = int(self.nonfinite_epoch[m]), int(self.nonfinite_step[m])
            message = nonfinite_message(epoch, step, self.cfgs[m].optimizer.get("lr"))
            self.failures[m] = {
                "error": message,
                "epochs": self.trainer.current_epoch,
                "global_steps": self.updates_done,
            }
            self._write_failure(m)

    def _write_failure(self, m: int) -> None:
        failure = self.failures[m]
        assert failure is not None
        run_dir = self.run_dirs[m]
        summary = {**self._summary(m), "epochs": failure["epochs"], "global_steps": failure["global_steps"]}
        message = write_failed(run_dir, self.histories[m], summary, failure["error"])
        self.note(m, message, "ERROR")
        log.error("Member %s: %s", run_dir, message)

    def on_train_epoch_start(self) -> None:  # not called when a run resumes in the middle of an epoch
        super().on_train_epoch_start()
        self.improved = None

    def end_training_epoch(self, values: dict[str, torch.Tensor]) -> None:
        computed = {name: value.tolist() for name, value in values.items()}
        active = self.active()
        for m in active:
            own = {**{name: value[m] for name, value in computed.items()}, **self.epoch_lrs[m]}
            self.add_row(m, own)
            self._to_tensorboard(m, own)
            self.note(m, self.epoch_line(m))  # as a run logs it, with the population's training time
        if active:
            log.info(
                "epoch %d  train/loss %.4f  val/acc %.4f (means over %d members)  (%.1f s training)",
                self.current_epoch, sum(computed["train/loss"][m] for m in active) / len(active),
                self._mean_val_acc(active), len(active), self.epoch_seconds[-1],
            )  # fmt: skip
        self._mark_best()

    def _mean_val_acc(self, active: list[int]) -> float:
        return float(self.last_val_acc[active].mean()) if self.last_val_acc is not None else float("nan")

    def _mark_best(self) -> None:
        """After the epoch's validation: each member whose val/acc beats its best so far gets its best.ckpt
        written with last.ckpt (MemberCheckpointIO), and its ModelCheckpoint(monitor=val/acc) names it, as a
        run's would (the first validation always counts). No weights are kept here: the test reads best.ckpt."""
        if self.last_val_acc is None:
            return
        best = torch.tensor(
            [float(c.best.best_model_score) if c.best.best_model_score is not None else -1.0 for c in self.checkpoints]
        )
        self.improved = (self.last_val_acc.cpu() > best) & torch.tensor([f is None for f in self.failures])
        for m in self.improved.nonzero().flatten().tolist():
            score = self.last_val_acc[m].detach().cpu()
            callback, path = self.checkpoints[m].best, str(self.run_dirs[m] / "checkpoints" / "best.ckpt")
            callback.best_model_score = callback.current_score = callback.kth_value = score
            callback.best_model_path = callback.kth_best_model_path = path
            callback.best_k_models = {path: score}
        self.last_val_acc = None

    # -- evaluation ----------------------------------------------------------------------------------------------

    def forward(self, params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Every member's output for the same inputs: params stacked (N, ...), x (B, 784) -> (N, B, 10)."""
        return torch.func.functional_call(self.network, dict(zip(self.names, params)), (x,))

    def evaluate(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = batch
        params = self.evaluated if self.evaluated is not None else list(self.stacked)
        output = self.forward(params, x.to(params[0].dtype))  # (N, B, 10)
        loss = self.loss_fn(output, y.expand(len(output), -1))  # (N,)
        size = torch.full((1,), len(y), dtype=torch.float64, device=loss.device)
        self.update_metrics(stage, loss.detach()[:, None], size, output.argmax(-1), y)

    def end_evaluation(self, stage: str, values: dict[str, torch.Tensor]) -> None:
        """Each member's values of the validation (a row of its history) or of the test (`test_results`), and to
        its TensorBoard log."""
        if self.trainer.sanity_checking:
            return
        computed = {name: value.tolist() for name, value in values.items()}
        if stage == "test":
            self.test_results = computed
        else:
            self.last_val_acc = values["val/acc"]
        for m in self.active():
            own = {name: value[m] for name, value in computed.items()}
            if stage == "val":
                self.add_row(m, own)
            self._to_tensorboard(m, own)

    # -- each member's TensorBoard log, as Lightning writes a run's ---------------------------------------------

    def on_fit_start(self) -> None:
        super().on_fit_start()
        for m, logger in enumerate(self.tensorboards or ()):
            logger.log_hyperparams(self.hparams_of[m])
            logger.save()

    def _to_tensorboard(self, m: int, values: dict[str, float]) -> None:
        """Member m's values at an epoch's end, to its TensorBoard log: at the step, and with the epoch, that
        Lightning logs a run's (in fitting, that of the epoch's last training step; in testing, the last)."""
        if self.tensorboards is not None:
            step = self.trainer.global_step - (0 if self.trainer.testing else 1)
            self.tensorboards[m].log_metrics({**values, "epoch": self.current_epoch}, step=step)

    def finish_tensorboards(self, status: str) -> None:
        """Each member's TensorBoard log written out, as Lightning ends a run's after fitting and testing."""
        for m, logger in enumerate(self.tensorboards or ()):
            logger.finalize(status if self.failures[m] is None else "failed")

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        members = checkpoint["members"]
        self.restore_records(checkpoint, members)
        for member, checkpoints in zip(members, self.checkpoints):
            for callback in checkpoints:
                state = member["callbacks"].get(callback.state_key)
                if state:
                    callback.load_state_dict(dict(state))
        if self.network.generators is not None:  # each member's dropout draws on where it stopped
            for generator, member in zip(self.network.generators, members):
                generator.set_state(member["rng_state"])
        for member, trajectory in zip(members, self.trajectories or ()):
            trajectory.load_state_dict(member["callbacks"].get(trajectory.state_key, {}))

    def _summary(self, m: int) -> dict[str, Any]:
        parameters = sum(shape.numel() for shape in self.shapes[m].values())
        summary = running_summary(self.run_dirs[m], self.cfgs[m].seed, parameters, self.trainer)
        return summarize(summary, self.started, self.trainer, self.checkpoints[m])
