"""The LightningModule, one for a run and a population: `MLPSystem` trains N >= 1 MLPs (a run is one member) and
keeps their records on a member axis: the loss, accuracy and gradient-norm metrics (`MemberMean`,
`MemberAccuracy`), the history, the NaN flags and the place in the epoch, with the lifecycle hooks around them
(the training step, an epoch's end, the validation and the test) written once."""

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer
from torchmetrics import Metric

from mlptrain.callbacks import Checkpoints, WeightTrajectory
from mlptrain.config import plain
from mlptrain.data import Chunk
from mlptrain.errors import ConfigError, NonFiniteLossError
from mlptrain.losses import make_loss, member_losses
from mlptrain.model import MLP, Kind, cut, padded
from mlptrain.predict import Trained, probabilities
from mlptrain.rundir import read_checkpoint, running_summary, summarize, unloadable, write_failed
from mlptrain.stacking import kind_of, optimizer_settings, side_by_side
from mlptrain.step import Clip, Engine, make_optimizer
from mlptrain.training_path import TrainingPath

STAGES = ("train", "val", "test")
LOG_FORMAT = "[%s][%s][%s] - %s\n"  # a population member's log lines, as Hydra's job_logging writes a run's

log = logging.getLogger(__name__)


class MemberMean(Metric):
    """Each member's mean of per-mini-batch values over an epoch's examples, summed in float64 on the device:
    a state with a leading member axis, (N, *shape), for a run (N = 1) and a population alike.

    torchmetrics' MeanMetric will not do: with nan_strategy="disable" (whose checks would pull a value to
    the host every step) it drops the weights, and it rounds every value to float32 first.
    """

    full_state_update = False

    def __init__(self, members: int = 1, *shape: int) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(members, *shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("examples", torch.zeros(members, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor, examples: torch.Tensor) -> None:
        """values (N, K, *shape): each member's of K mini-batches, of `examples` (K,) examples each."""
        self.total += (values.double() * examples.view(1, -1, *[1] * (values.dim() - 2))).sum(1)
        self.examples += examples.sum()

    def compute(self) -> torch.Tensor:
        return self.total / self.examples.view(-1, *[1] * (self.total.dim() - 1))


class MemberAccuracy(Metric):
    """Each member's fraction of examples whose predicted digit is the label (torchmetrics' micro accuracy),
    counted on the device: states `correct` and `examples`, (N,) each. Checkpoints written before it hold a
    run's scalar counts, or MulticlassAccuracy's tp, fp, tn and fn: `upgrade` reads them."""

    full_state_update = False

    def __init__(self, members: int = 1) -> None:
        super().__init__()
        self.add_state("correct", torch.zeros(members, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("examples", torch.zeros(members, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predicted: torch.Tensor, labels: torch.Tensor) -> None:
        """predicted (N, M): each member's digits for M examples, whose labels are (M,) or (N, M)."""
        self.correct += (predicted == labels).sum(-1)
        self.examples += labels.shape[-1]

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.examples.clamp(min=1).float()  # 0 for no examples, as torchmetrics'


TRAINING_STATES = ("train_loss.total", "train_loss.examples", "train_acc.correct", "train_acc.examples")


def upgrade(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's state_dict with the training metrics' states as MemberMean and MemberAccuracy keep them,
    (1,) each for a run. A checkpoint written before them holds them as scalars, and one written before system's
    own accuracy holds torchmetrics' MulticlassAccuracy(average="micro") counts, whose tp is the examples
    predicted right and tp + fn all of them. Changed in place; returned."""
    if "train_acc.tp" in state_dict:
        tp, fn = state_dict.pop("train_acc.tp"), state_dict.pop("train_acc.fn")
        state_dict.pop("train_acc.fp"), state_dict.pop("train_acc.tn")
        state_dict["train_acc.correct"], state_dict["train_acc.examples"] = tp.sum(), (tp + fn).sum()
    for key in TRAINING_STATES:
        if key in state_dict and state_dict[key].dim() == 0:
            state_dict[key] = state_dict[key].view(1)
    return state_dict


class MLPSystem(L.LightningModule):
    """Trains N >= 1 MLPs, its members, and reports each one's `train/loss`, `train/acc`, `val/loss`, `val/acc`,
    `test/loss` and `test/acc`. A run is one member; a population (hydra/launcher=population) is N, built by
    `MLPSystem.population(cfgs, path)`. Every record has a leading member axis (`keep_records`): each stage's
    metrics, the gradient norms, the first non-finite training loss, the updates made and the place in the epoch,
    each member's history (metrics.csv's rows) and learning rates.

    Every argument is a plain dict of the config group of the same name, so the hyperparameters saved in a run's
    checkpoints rebuild it (`load_checkpoint`). A run's MLP holds its member's own parameters (a stack of one:
    model.MLP evaluates one network or N stacked); its values go to Lightning's log (the progress bar,
    TensorBoard), and its first NaN or infinite loss stops it (NonFiniteLossError).

    `members`: a population's, each its arguments (`hyperparameters`) and its seed, in `population`'s order (the
    arguments are the first's). Its MLP's parameters are every member's, stacked (N, ...): members of one kind
    side by side (stacking.MEMBER_KINDS: each kind's slice has its own activations and cost), and within a kind
    those with equal optimizer settings (a torch.optim optimizer each, over its slice of the stack). Members
    narrower than the widest (MEMBER_WIDTHS) are zero-padded to it, and their padding's gradients held at zero.
    Each member's records go to its own directory (`note`, its TensorBoard log), and a member whose loss turns
    NaN or infinite fails as a run alone fails, with its message, and is masked: its records stop, the others
    train on. Every member's checkpoints, a run's too, are its own files (`writing_into`), which
    mlptrain.member_checkpoints cuts out of the system's; its best is marked here (`_mark_best`).

    steps_per_call = 1 is Lightning's own loop for a run: one mini-batch and one `optimizer.step()` per training
    step; a population's engine then makes one update a step, as that loop does. K > 1 gives each training step
    K mini-batches, whose updates `step.Engine` makes with the same maths (torch.optim's updates, autograd's
    gradients) without Lightning's per-step overhead; `compile` also runs them through torch.compile. How
    train(cfg) chooses: `training_path.choose_path`.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        loss: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
        check_finite_every_n_steps: int = 50,
        log_grad_norms: bool = False,
        steps_per_call: int = 1,
        compile: bool = False,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        members: Sequence[tuple[Mapping[str, Any], int]] = (),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["members"])
        self.in_population = bool(members)
        self.hparams_of = [hparams for hparams, _ in members] or [dict(self.hparams)]  # each member's arguments
        settings = [(kind_of(hparams), optimizer_settings(hparams)) for hparams in self.hparams_of]
        parts = side_by_side(settings)  # the sets of members with equal optimizer settings, slices of the stack
        self.set_of = [s for s, part in enumerate(parts) for _ in range(part.start, part.stop)]  # each member's
        self._check_optimizers([self.hparams_of[part.start]["optimizer"] for part in parts])
        if members:  # each member's weights, drawn as its run alone draws them
            models, generators = [], []
            for hparams, seed in members:
                L.seed_everything(seed, workers=True, verbose=False)
                models.append(MLP(**hparams["model"]))
                # Its random generator, where its run alone's stands once the weights are drawn: its dropout masks
                generators.append(torch.Generator().set_state(torch.get_rng_state()))
        else:  # drawn from the process's random generator, as train() has seeded it; dropout draws on from there
            models, generators = [MLP(**model)], None
        self.names = [name for name, _ in models[0].named_parameters()]
        self.shapes = [{name: p.shape for name, p in member.named_parameters()} for member in models]  # each its own
        self.full = {name: torch.Size(map(max, zip(*(s[name] for s in self.shapes)))) for name in self.names}
        self.model = models[0]
        self.masks: list[torch.Tensor] | None = None
        self.loss_fn = make_loss(**loss)
        if members:
            self._stack(models, side_by_side([kind for kind, _ in settings]))
            if any(hparams["model"].get("dropout") for hparams in self.hparams_of):
                self.model.generators = generators
        self.automatic_optimization = steps_per_call == 1 and not members
        self.engine: Engine | None = None  # made with the optimizers, in configure_optimizers
        self.clip = Clip(gradient_clip_val, gradient_clip_algorithm) if gradient_clip_val else None
        weights = [name for name in self.names if "weight" in name]
        self.keep_records(parts, weights if log_grad_norms else [], check_finite_every_n_steps, scheduler["name"])
        self.gathered: dict[int, torch.Tensor] = {}  # where each size of the members' mini-batches is gathered
        self.failures: list[str | None] = [None] * len(self.hparams_of)  # a failed member's message; None: it trains
        self.improved: torch.Tensor | None = None  # (N,) at an epoch's end: whose val/acc is its best so far
        self.val_scores: torch.Tensor | None = None  # (N,) that validation's val/acc, on the CPU
        self.last_val_acc: torch.Tensor | None = None  # (N,) of the last validation
        self.test_results: dict[str, list[float]] = {}  # each member's test values, as "test/loss": [...]
        self.tested: dict[int, str | None] = {}  # the checkpoint each member is tested at (at_best)
        # Each member's config, directory, checkpoints' callbacks and path through weight space: `writing_into`.
        self.cfgs: list[DictConfig] = []
        self.run_dirs: list[Path] = []
        self.checkpoints: list[Checkpoints] = []
        self.plain: list[dict[str, Any]] = []
        self.resumed: list[dict[str, Any]] | None = None  # the members' checkpoints a resume starts from
        self.restored_gradients: list[torch.Tensor] | None = None  # a resumed checkpoint's summed_gradients
        self.log_name = "train.log"  # each member's log, in its directory: Hydra's job log name
        self.tensorboards: list[Any] | None = None  # logger=tensorboard: each member's own (train.tensorboard_logger)
        self.trackers: list[Any] | None = None  # logger=mlflow: each member's MLflow run (mlptrain.tracking.Tracker)
        self.trajectories: list[WeightTrajectory] | None = None  # report.landscape: each member's path
        self.started = time.perf_counter()

    @classmethod
    def population(
        cls, cfgs: Sequence[DictConfig], path: TrainingPath, held: Sequence[Mapping[str, Any]] | None = None
    ) -> "MLPSystem":
        """The members `cfgs` (jobs' configs, equal but for stacking's MEMBER_KEYS, MEMBER_KINDS and MEMBER_WIDTHS,
        each writing into its output_dir) as one population making its updates as `path` says; kept sorted
        (`cfgs`): members of a kind side by side, and within it those with equal optimizer settings. held
        (train=false): each member's network as its checkpoint's hyperparameters hold it, not as its config says."""
        hparams = list(held) if held is not None else [hyperparameters(cfg, path) for cfg in cfgs]
        order = sorted(range(len(cfgs)), key=lambda m: (kind_of(hparams[m]), optimizer_settings(hparams[m])))
        system = cls(**hparams[order[0]], members=[(hparams[m], cfgs[m].seed) for m in order])
        system.path = path
        return system.writing_into([cfgs[m] for m in order])

    def writing_into(self, cfgs: Sequence[DictConfig]) -> "MLPSystem":
        """Each member's files go where its config says (`cfgs`, in the members' order; a run's: its own):
        checkpoints (best.ckpt and last.ckpt, each named by a ModelCheckpoint of its own, which
        member_checkpoints.MemberCheckpointIO writes), and with report.landscape its path through weight space."""
        self.cfgs = list(cfgs)
        self.run_dirs = [Path(cfg.output_dir) for cfg in self.cfgs]
        self.plain = [plain(cfg) for cfg in self.cfgs]  # each config resolved, for its files and checkpoints
        self.checkpoints = [Checkpoints.into(run_dir / "checkpoints") for run_dir in self.run_dirs]
        self.trajectories = [WeightTrajectory() for _ in self.cfgs] if self.cfgs[0].report.landscape else None
        return self

    def _stack(self, models: list[MLP], kinds: list[slice]) -> None:
        """The model's parameters become every member's, stacked (N, ...): members of different widths (the depth is
        equal) zero-padded to the widest, their padding's gradients held at zero (`masks`); each kind its own
        activations, output activation, dropout and cost."""
        for name in self.names:
            values = torch.stack(
                [padded(dict(model.named_parameters())[name].detach(), self.full[name]) for model in models]
            )
            layer, _, kind = name.rpartition(".")
            setattr(self.model.get_submodule(layer), kind, nn.Parameter(values))
        if any(shapes != self.full for shapes in self.shapes):
            self.masks = [
                torch.stack([padded(torch.ones(s[name], dtype=torch.bool), self.full[name]) for s in self.shapes])
                for name in self.names
            ]
            self.model.widths = [list(hparams["model"]["hidden"]) for hparams in self.hparams_of]
        if len(kinds) > 1:
            self.model.kinds = [
                Kind(
                    part,
                    models[part.start].activations,
                    models[part.start].output_activation,
                    self.hparams_of[part.start]["model"].get("dropout", 0.0),
                )
                for part in kinds
            ]
            self.loss_fn = member_losses([(part, make_loss(**self.hparams_of[part.start]["loss"])) for part in kinds])

    @staticmethod
    def _check_optimizers(configs: Sequence[Mapping[str, Any]]) -> None:
        """Each optimizer built once now, so that a bad combination fails before any data is read: ConfigError."""
        for optimizer in configs:
            try:
                make_optimizer(optimizer, [nn.Parameter(torch.zeros(1))])
            except Exception as error:
                settings = ", ".join(f"optimizer.{key}={value}" for key, value in optimizer.items())
                raise ConfigError(
                    f"The optimizer could not be built from {settings}: {error}. Use optimizer=sgd, adam or adamw "
                    "with valid values, or an optimizer._target_ naming a torch.optim class, with `_partial_: true`."
                ) from error

    # -- the records, every value with a leading member axis (N = 1 for a run) ----------------------------------

    def keep_records(self, parts: Sequence[slice], norms_of: Sequence[str], check_every: int, scheduler: str) -> None:
        """The records of the members of `parts` (the members of each optimizer, slices of the member axis), the
        gradient norms of the parameters `norms_of` (log_grad_norms), the loss checked for NaN every `check_every`
        updates, the learning rate scheduled by `scheduler` (conf/scheduler/'s name)."""
        members = parts[-1].stop
        for stage in STAGES:
            setattr(self, f"{stage}_loss", MemberMean(members))
            setattr(self, f"{stage}_acc", MemberAccuracy(members))
        # The training metrics' running sums go into checkpoints, so an epoch resumed midway reports
        # the same train/loss and train/acc as one that ran through.
        self.train_loss.persistent(True)
        self.train_acc.persistent(True)
        # Each layer's weight-gradient norm (before clipping), averaged over the epoch's examples: (N, layers).
        self.norms_of = list(norms_of)
        self.grad_norms = MemberMean(members, len(self.norms_of))
        # Epoch and update of each member's first non-finite training loss, -1 while none: kept on the device
        # and read only every check_every updates and before checkpoints.
        self.register_buffer("nonfinite_epoch", torch.full((members,), -1), persistent=False)
        self.register_buffer("nonfinite_step", torch.full((members,), -1), persistent=False)
        self.check_every = check_every
        # Mini-batches whose gradients each update sums (trainer.accumulate_grad_batches), set by `setup`: Lightning's
        # loop sums a run's, the engine a population's.
        self.accumulation = 1
        self.scheduler_name = scheduler
        self.parts = list(parts)
        # Updates made: Lightning's global_step counts training steps, which make K updates each when K > 1.
        self.updates_done = 0
        self.updates_checked = 0  # where the host last looked at the NaN flags
        # Mini-batches trained on in the current epoch: the data module saves it, to resume mid-epoch exactly.
        self.batches_done_in_epoch = 0
        # Between an epoch's end (its checkpoints written) and the next one's start: the epoch that ended; else None.
        self.ended_epoch: int | None = None
        # Each member's records, one row per epoch's training and per validation, as metrics.csv has them. They
        # go into every checkpoint, and metrics.csv is written from them (rundir.write_metrics), so a resumed
        # run writes the rows of one that ran through, and no row twice.
        self.histories: list[list[dict[str, float]]] = [[] for _ in range(members)]
        # Each member's learning rate at the epoch's start (a resume may be mid-epoch), named as Lightning's
        # LearningRateMonitor names it: lr-SGD, lr-AdamW, ...
        self.epoch_lrs: list[dict[str, float]] = [{} for _ in range(members)]
        self.epoch_seconds: list[float] = []  # each epoch's training time, validation excluded
        self.epoch_started: float | None = None  # while an epoch's training is being timed

    @property
    def interval(self) -> str | None:
        """When the learning-rate schedule steps: after each update, each epoch (StepLR) or never (None)."""
        return {"none": None, "step": "epoch"}.get(self.scheduler_name, "step")

    def setup(self, stage: str) -> None:
        if stage == "fit":  # before configure_optimizers
            trainer = self.trainer
            manual = not self.automatic_optimization and self.cfgs  # the engine sums them (train.trainer_settings)
            self.accumulation = (
                self.cfgs[0].trainer.get("accumulate_grad_batches", 1) if manual else trainer.accumulate_grad_batches
            )

    def _update_after(self, done: int) -> bool:
        """Whether an update is made once `done` mini-batches of the epoch are trained on: after every one, or
        with accumulation after each accumulation-th of the epoch and its last, as Lightning's loop steps."""
        return self.accumulation == 1 or done % self.accumulation == 0 or done >= self.trainer.num_training_batches

    def ends_update(self) -> bool:
        """Whether this training step's mini-batch is the last whose gradient the next update sums."""
        return self._update_after(self.batches_done_in_epoch + 1)

    def summed_gradients(self) -> list[torch.Tensor] | None:
        """The gradients summed toward an update not made yet (accumulate_grad_batches, stopped within its
        mini-batches), laid out as the parameters (`stacked`), for a checkpoint: a resumed run adds on to them,
        as the one that ran through did. None between updates."""
        if self._update_after(self.batches_done_in(self.current_epoch)):
            return None  # Lightning's loop keeps .grad after an update, until the next one's first mini-batch
        grads = [p.grad for p in self.stacked] if self.automatic_optimization else self.engine.pending
        return None if grads is None or any(g is None for g in grads) else [g.detach().clone() for g in grads]

    def total_updates(self) -> int:
        """Optimizer updates in the whole fit, for the schedules that need it (this loads the training batches)."""
        trainer = self.trainer
        total = int(trainer.estimated_stepping_batches)  # max_steps and a run's accumulation applied
        if self.automatic_optimization or trainer.max_epochs == -1:
            return total
        if self.hparams.steps_per_call > 1:
            return trainer.max_epochs * trainer.train_dataloader.num_batches  # training steps make K each
        updates = -(-trainer.num_training_batches // self.accumulation) * max(trainer.max_epochs, 1)  # as Lightning
        return min(updates, trainer.max_steps) if trainer.max_steps != -1 else updates

    def schedulers(self) -> list[Any]:
        found = self.lr_schedulers()
        return [] if found is None else found if isinstance(found, list) else [found]

    def update_metrics(
        self, stage: str, losses: torch.Tensor, sizes: torch.Tensor, predicted: torch.Tensor, labels: torch.Tensor
    ) -> None:
        """losses (N, K) of K mini-batches of sizes (K,), whose predicted digits (N, sum(sizes)) and labels are
        given."""
        getattr(self, f"{stage}_loss").update(losses, sizes)  # weighted: the epoch value is the mean over examples
        getattr(self, f"{stage}_acc").update(predicted, labels)

    def engine_step(self, inputs: Callable[[int, int], torch.Tensor], chunk: Chunk) -> None:
        """A training step whose K mini-batches' updates step.Engine makes (`inputs`: theirs, as Engine.run takes
        them), recorded into the epoch's metrics, the update count and the non-finite flags."""
        # One optimizer.step() per training step that updates, with no gradients: it changes no weight (the updates
        # are the engine's) and advances Lightning's step count, which checkpoints and loggers go by.
        update = self.ends_update()
        if update:
            first = self.optimizers()
            (first[0] if isinstance(first, list) else first).step()
        schedulers = self.schedulers() if self.interval == "step" else []
        losses, predicted, labels, norms = self.engine.run(inputs, chunk.labels, schedulers, update)  # (K, N), ...
        sizes = chunk.sizes  # (K,)
        self.update_metrics("train", losses.T, sizes, predicted, labels)
        if norms is not None:  # weighted as a run's (on_before_optimizer_step): by the update's last mini-batch
            self.grad_norms.update(norms.transpose(0, 1), sizes)
        bad = ~torch.isfinite(losses)
        self.flag_nonfinite(bad.any(0), self.updates_done + bad.int().argmax(0))
        self.updates_done += len(sizes) if update else 0
        self.batches_done_in_epoch += len(sizes)

    def flag_nonfinite(self, bad: torch.Tensor, step: int | torch.Tensor) -> None:
        """bad (N,): whose loss was NaN or infinite at update `step` (each member's, or one for all)."""
        first_bad = bad & (self.nonfinite_step < 0)
        # In place: assigning a buffer goes through nn.Module.__setattr__, a cost on every step.
        self.nonfinite_epoch.copy_(torch.where(first_bad, self.current_epoch, self.nonfinite_epoch))
        self.nonfinite_step.copy_(torch.where(first_bad, step, self.nonfinite_step))

    def _start_epoch_timer(self) -> None:
        self.epoch_started = time.perf_counter()

    def _stop_epoch_timer(self) -> None:
        if self.epoch_started is None or self.trainer.sanity_checking:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the epoch's kernels, not only their launches
        self.epoch_seconds.append(time.perf_counter() - self.epoch_started)
        self.epoch_started = None

    def on_test_start(self) -> None:
        for m, path in self.tested.items():  # which weights each member's test evaluates (at_best)
            if self.failures[m] is None:
                self.note(m, f"Testing the weights of {path}" if path else "Testing the weights as they are")

    def on_validation_start(self) -> None:
        self._stop_epoch_timer()  # an epoch's time is its training, not its validation

    def with_schedules(self, optimizers: list[Optimizer], config: Mapping[str, Any]) -> Any:
        """What configure_optimizers returns: the optimizers (one per part), each with the learning-rate schedule
        `config` (conf/scheduler/) names, over the whole fit's updates."""
        if config["name"] == "none":
            return optimizers
        total = self.total_updates()
        return optimizers, [
            {"scheduler": make_scheduler(optimizer, config, total), "interval": self.interval}
            for optimizer in optimizers
        ]

    def on_train_epoch_end(self) -> None:
        # Before the epoch's checkpoints are written: weights after a NaN are never checkpointed.
        self.check_finite()
        if not self.automatic_optimization and self.interval == "epoch":
            for scheduler in self.schedulers():  # what Lightning does for epoch-interval schedules in its own loop
                scheduler.step()
        self._stop_epoch_timer()  # where there was no validation to stop it
        self.end_training_epoch(self.epoch_values("train"))
        self.ended_epoch = self.current_epoch

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.evaluate("val", batch)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.evaluate("test", batch)

    def on_validation_epoch_end(self) -> None:
        self.end_evaluation("val", self.epoch_values("val"))

    def on_test_epoch_end(self) -> None:
        self.end_evaluation("test", self.epoch_values("test"))

    def epoch_values(self, stage: str) -> dict[str, torch.Tensor]:
        """The stage's values over the epoch, named as metrics.csv names them, each member's (N,); the sums reset."""
        members = len(self.histories)  # torchmetrics gives a one-element value as a scalar: each is reshaped
        metrics = [getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")]
        values = {f"{stage}/{name}": metric.compute().view(members) for name, metric in zip(("loss", "acc"), metrics)}
        if stage == "train" and self.norms_of:
            norms = self.grad_norms.compute().view(members, -1)
            values.update({f"grad_norm/{name}": norms[:, i] for i, name in enumerate(self.norms_of)})
            metrics.append(self.grad_norms)
        for metric in metrics:
            metric.reset()
        return values

    def epoch_line(self, m: int) -> str:
        """Member m's log line for the epoch that ended: its values (its history's last row: the training and the
        validation that ended the epoch) and the epoch's training time."""
        row = self.histories[m][-1]
        shown = "  ".join(f"{key} {row[key]:.4f}" for key in sorted(row) if key.split("/")[0] in STAGES)
        return f"epoch {self.current_epoch}  {shown}  ({self.epoch_seconds[-1]:.1f} s training)"

    def add_row(self, m: int, values: dict[str, float]) -> None:
        """A row of member m's history: an epoch's training joins the validation that ended it, one row an epoch."""
        row = {"epoch": self.current_epoch, "step": self.updates_done, **values}
        history = self.histories[m]
        last = history[-1] if history else {}
        if (last.get("epoch"), last.get("step")) == (row["epoch"], row["step"]) and not last.keys() & values.keys():
            last.update(row)
        else:
            history.append(row)

    def batches_done_in(self, epoch: int) -> int:
        """Mini-batches of `epoch` trained on. Between two epochs Lightning counts the next one before it starts,
        and a checkpoint written then (SLURM's signal can come at any moment) is at that epoch's start."""
        if self.ended_epoch is not None and epoch > self.ended_epoch:
            return 0
        return self.batches_done_in_epoch

    def records_of(self, m: int) -> dict[str, Any]:
        """Member m's records as its checkpoint keeps them (a run's, or a population member's own)."""
        return {"history": [dict(row) for row in self.histories[m]], "epoch_lrs": dict(self.epoch_lrs[m])}

    def restore_records(self, checkpoint: dict[str, Any], members: Sequence[dict[str, Any]]) -> None:
        """Where `checkpoint` stood, and each member's records from its part of it (a run's: the checkpoint)."""
        self.updates_done = self.updates_checked = checkpoint.get("updates_done", checkpoint.get("global_step", 0))
        self.batches_done_in_epoch = checkpoint.get("batches_done_in_epoch", 0)
        # No history in checkpoints before 0.1
        self.histories = [[dict(row) for row in member.get("history", [])] for member in members]
        self.epoch_lrs = [dict(member.get("epoch_lrs", {})) for member in members]

    @property
    def stacked(self) -> list[nn.Parameter]:
        """The model's parameters, in `names` order: a population's, every member's stacked (N, ...)."""
        return list(self.model.parameters())

    @property
    def history(self) -> list[dict[str, float]]:
        """A run's records (its member's): metrics.csv's rows."""
        return self.histories[0]

    def active(self) -> list[int]:
        """The members that have not failed."""
        return [m for m, failure in enumerate(self.failures) if failure is None]

    # -- training ------------------------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        """One torch.optim optimizer per set of members with equal settings (a run: its one), over its slice of
        every stacked tensor (views: they update the stack in place), and its schedule."""
        optimizers = []
        for part in self.parts:
            config = self.hparams_of[part.start]["optimizer"]
            params = [p.detach()[part] for p in self.stacked] if self.in_population else self.stacked
            optimizers.append(make_optimizer(config, params, str(self.trainer.precision)))
        if not self.automatic_optimization:
            masks = [mask.to(self.device) for mask in self.masks] if self.masks is not None else None
            parts = self.parts if self.in_population else [slice(None)]
            self.engine = Engine(
                self.model, self.loss_fn, optimizers, parts, self.hparams.compile, self.clip, self.norms_of, masks,
                self.accumulation,
            )  # fmt: skip
        return self.with_schedules(optimizers, self.hparams.scheduler)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if self.automatic_optimization:  # a run in Lightning's loop: one mini-batch, Lightning's optimizer.step()
            loss = self._step("train", batch)
            self.batch_examples = len(batch[1])  # the weight of this step's gradient norms
            self.flag_nonfinite(~torch.isfinite(loss.detach()), self.global_step)
            self.updates_done = self.global_step + self.ends_update()  # once this step's update is made
            self.batches_done_in_epoch += 1
            return loss
        chunk: Chunk = batch if isinstance(batch, Chunk) else self.members_batch(*batch)
        if chunk.rows is not None:  # each member's rows of the training inputs (a population's TensorBatches)
            rows = chunk.rows
            shared = self.trainer.datamodule.train_inputs()  # (n, 784), shared by every member
            dtype = self.stacked[0].dtype

            def inputs(start: int, stop: int) -> torch.Tensor:
                """The members' inputs of updates start..stop-1 (C, N, B, 784), gathered into the same memory
                every call: 3x faster on a CPU than into fresh memory."""
                row = rows[start:stop] if torch.is_tensor(rows) else torch.stack(rows[start:stop])  # (C, N, B)
                out = self.gathered.get(row.numel())
                if out is None:
                    out = self.gathered[row.numel()] = shared.new_empty((row.numel(), shared.shape[-1]))
                return torch.index_select(shared, 0, row.flatten(), out=out).view(*row.shape, -1).to(dtype)

        else:
            # (K, [N,] B, 784), or a list where the epoch's last, smaller mini-batch is among them
            images = chunk.images

            def inputs(start: int, stop: int) -> torch.Tensor:
                return images[start:stop] if torch.is_tensor(images) else torch.stack(images[start:stop])

        self.engine_step(inputs, chunk)
        return None

    def members_batch(self, x: torch.Tensor, y: torch.Tensor) -> Chunk:
        """A population's DataLoader mini-batch, every member's one after another (data.MemberBatches), as a Chunk
        of one: images (1, N, B, 784) in the parameters' dtype, labels (1, N, B)."""
        members = len(self.hparams_of)
        images = x.view(1, members, -1, x.shape[-1]).to(self.stacked[0].dtype)
        size = torch.full((1,), y.shape[0] // members, dtype=torch.float64, device=y.device)
        return Chunk(images=images, rows=None, labels=y.view(1, members, -1), sizes=size)

    def _step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """A run's mini-batch, into the stage's metrics: its loss."""
        x, y = batch
        output = self.model(x)  # (B, 10)
        loss = self.loss_fn(output, y)
        # The batch size is made on the device: a Python number would be copied to the GPU every step.
        size = torch.full((1,), len(y), dtype=torch.float64, device=loss.device)
        self.update_metrics(stage, loss.detach().view(1, 1), size, output.detach().argmax(-1)[None], y)
        return loss

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        if self.norms_of and self.automatic_optimization:  # the engine computes its norms in its step
            parameters = dict(self.model.named_parameters())
            norms = torch.stack([parameters[name].grad.norm() for name in self.norms_of])
            size = torch.full((1,), float(self.batch_examples), dtype=torch.float64, device=self.device)
            self.grad_norms.update(norms.view(1, 1, -1), size)

    def on_fit_start(self) -> None:
        self._start_epoch_timer()  # a run resumed mid-epoch has no on_train_epoch_start for it
        if not self.automatic_optimization and self.trainer.world_size > 1:
            raise ConfigError(
                "steps_per_call > 1 makes its updates outside Lightning's distributed wrapper, so gradients would "
                "not be synchronised across devices: use steps_per_call=auto or 1 with several devices."
            )
        for m, logger in enumerate(self.tensorboards or ()):
            logger.log_hyperparams(self.hparams_of[m])
            logger.save()

    def on_train_start(self) -> None:
        summed, self.restored_gradients = self.restored_gradients, None
        if summed is not None:  # an update's gradients summed before a stop: its next mini-batches add to them
            grads = [g.to(p) for g, p in zip(summed, self.stacked)]
            if self.automatic_optimization:
                for p, g in zip(self.stacked, grads):
                    p.grad = g
            else:
                self.engine.pending = grads
        updates_per_epoch = self.trainer.num_training_batches * self.hparams.steps_per_call
        for m, trajectory in enumerate(self.trajectories or ()):
            trajectory.start(updates_per_epoch, partial(self.point, m), self.updates_done)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.updates_done - self.updates_checked >= self.check_every:
            self.updates_checked = self.updates_done
            self.check_finite()
        for m in self.active() if self.trajectories is not None else ():
            self.trajectories[m].stepped(partial(self.point, m), self.updates_done)

    def on_train_end(self) -> None:
        for m in self.active() if self.trajectories is not None else ():
            self.trajectories[m].end(partial(self.point, m), self.updates_done)

    def point(self, m: int) -> torch.Tensor:
        """Member m's parameters as one vector on the CPU, as anatomy.flatten gives its run alone's."""
        params = [p[m] for p in self.stacked] if self.in_population else self.stacked
        own = [cut(p.detach(), self.shapes[m][name]).flatten() for name, p in zip(self.names, params)]
        return torch.cat(own).cpu()

    @property
    def diverged(self) -> bool:
        """Whether a run's training loss has been NaN or infinite (read from the device: a synchronisation). A
        population's members fail alone (check_finite): it never stops for them."""
        return not self.in_population and int(self.nonfinite_step[0]) >= 0

    def check_finite(self) -> None:
        """Members whose training loss has turned NaN or infinite fail: a run stops (NonFiniteLossError), a
        population's member is recorded as failed, with its message, and the others go on."""
        for m in (self.nonfinite_step >= 0).nonzero().flatten().tolist():
            if self.failures[m] is not None:
                continue
            epoch, step = int(self.nonfinite_epoch[m]), int(self.nonfinite_step[m])
            message = nonfinite_message(epoch, step, self.hparams_of[m]["optimizer"].get("lr"))
            if not self.in_population:
                raise NonFiniteLossError(message)
            self.failures[m] = message
            # Its summary where it failed: the epoch, and the updates made (summarize's)
            written = write_failed(self.run_dirs[m], self.histories[m], self.summary_of(m), message)
            self.note(m, written, "ERROR")
            log.error("Member %s: %s", self.run_dirs[m], written)

    def epoch_train_loss(self) -> float:
        """A run's mean training loss over the examples of the epoch so far (read before the epoch's end resets it)."""
        return float(self.train_loss.compute().view(-1)[0])

    # -- each epoch's values: each member's row, and where they are shown --------------------------------------

    def on_train_epoch_start(self) -> None:  # not called when a run resumes in the middle of an epoch
        self._start_epoch_timer()
        for metric in (self.train_loss, self.train_acc, self.grad_norms):
            metric.reset()
        self.batches_done_in_epoch = 0
        self.ended_epoch = None
        lrs: list[dict[str, float]] = []
        for part, optimizer in zip(self.parts, self.trainer.optimizers):
            lrs += [{f"lr-{type(optimizer).__name__}": float(optimizer.param_groups[0]["lr"])}] * (
                part.stop - part.start
            )
        self.epoch_lrs = lrs
        self.improved = None

    def end_training_epoch(self, values: dict[str, torch.Tensor]) -> None:
        if not self.in_population:
            self._to_lightning({**values, **self.epoch_lrs[0]})
        computed = {name: value.tolist() for name, value in values.items()}
        active = self.active()
        for m in active:
            own = {**{name: value[m] for name, value in computed.items()}, **self.epoch_lrs[m]}
            self.add_row(m, own)
            self._to_tensorboard(m, own)
            self.note(m, self.epoch_line(m))
        if self.in_population and active:  # the sweep's log: one line for the population
            log.info(
                "epoch %d  train/loss %.4f  val/acc %.4f (means over %d members)  (%.1f s training)",
                self.current_epoch, sum(computed["train/loss"][m] for m in active) / len(active),
                self._mean_val_acc(active), len(active), self.epoch_seconds[-1],
            )  # fmt: skip
        self._mark_best()

    def evaluate(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        if not self.in_population:
            self._step(stage, batch)
            return
        x, y = batch
        output = self.model(x.to(self.stacked[0].dtype))  # (N, B, 10)
        loss = self.loss_fn(output, y.expand(len(output), -1))  # (N,)
        size = torch.full((1,), len(y), dtype=torch.float64, device=loss.device)
        self.update_metrics(stage, loss.detach()[:, None], size, output.argmax(-1), y)

    def end_evaluation(self, stage: str, values: dict[str, torch.Tensor]) -> None:
        """Each member's values of the validation (a row of its history) or of the test (`test_results`); a run's
        to Lightning, a population member's to its TensorBoard log."""
        if not self.in_population:
            self._to_lightning(values)
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

    def _to_lightning(self, values: Mapping[str, torch.Tensor | float]) -> None:
        """A run's values, to Lightning: the progress bar, its loggers (TensorBoard)."""
        for name, value in values.items():
            self.log(name, value[0] if torch.is_tensor(value) else value)

    def _mean_val_acc(self, active: list[int]) -> float:
        return float(self.last_val_acc[active].mean()) if self.last_val_acc is not None else float("nan")

    def _mark_best(self) -> None:
        """After the epoch's validation: which members' val/acc beats its best so far (`improved`; the scores:
        `val_scores`; the first validation always counts). The checkpoint then saved names it in their
        ModelCheckpoint(monitor=val/acc) as Lightning's does (`name_best`, on_save_checkpoint) and MemberCheckpointIO
        writes their best.ckpt with last.ckpt: where Lightning saves no checkpoint (trainer.fast_dev_run), none is
        named. No weights are kept here: the test reads best.ckpt. A system without its files (`writing_into`: a
        Trainer of the user's own) marks nothing."""
        if self.last_val_acc is None or not self.checkpoints:
            return
        best = torch.tensor(
            [float(c.best.best_model_score) if c.best.best_model_score is not None else -1.0 for c in self.checkpoints]
        )
        self.val_scores = self.last_val_acc.detach().cpu()
        self.improved = (self.val_scores > best) & torch.tensor([f is None for f in self.failures])
        self.last_val_acc = None

    def name_best(self, m: int) -> None:
        """Member m's ModelCheckpoint(monitor=val/acc) names its best.ckpt, being written, as Lightning's would."""
        score = self.val_scores[m]
        callback, path = self.checkpoints[m].best, str(self.run_dirs[m] / "checkpoints" / "best.ckpt")
        callback.best_model_score = callback.current_score = callback.kth_value = score
        callback.best_model_path = callback.kth_best_model_path = path
        callback.best_k_models = {path: score}

    @torch.no_grad()
    def at_best(self, tested: Mapping[int, str | None]) -> list[int]:
        """Each member's weights put back to those of the checkpoint it is tested at (`tested`: the best.ckpt its
        ModelCheckpoint(monitor=val/acc) names; None: as they are), a run's and a population member's alike, and
        the updates made at each."""
        self.tested = dict(tested)
        updates = [self.updates_done] * len(self.hparams_of)
        for m, path in tested.items():
            if path is None:
                continue
            checkpoint = read_checkpoint(path)
            for name, p in zip(self.names, self.stacked):
                own = p[m] if self.in_population else p
                own.copy_(padded(checkpoint["state_dict"][f"model.{name}"], own.shape))
            updates[m] = checkpoint.get("updates_done", checkpoint.get("global_step", 0))
        return updates

    # -- what each member is, as a run alone would describe it ---------------------------------------------------

    def describe(self) -> str:
        """A population's training path as a run alone's log gives it (training_path.choose_path)."""
        return f"{self.path.why}, with the other members of a population"

    def note(self, m: int, message: str, level: str = "INFO") -> None:
        """A line in member m's log: a run's is the process's (Hydra's job log), a population member's its own file."""
        if not self.in_population:
            if self.trainer.is_global_zero:  # one line per epoch, for logs where no progress bar is drawn
                log.log(getattr(logging, level), "%s", message)
            return
        write_log_line(self.run_dirs[m] / self.log_name, message, level)

    def _to_tensorboard(self, m: int, values: dict[str, float]) -> None:
        """A population member's values at an epoch's end, to its TensorBoard log: at the step, and with the epoch,
        that Lightning logs a run's (in fitting, that of the epoch's last training step; in testing, the last)."""
        if self.tensorboards is not None:
            step = self.trainer.global_step - (0 if self.trainer.testing else 1)
            self.tensorboards[m].log_metrics({**values, "epoch": self.current_epoch}, step=step)

    def finish_tensorboards(self, status: str) -> None:
        """Each member's TensorBoard log written out, as Lightning ends a run's after fitting and testing."""
        for m, logger in enumerate(self.tensorboards or ()):
            logger.finalize(status if self.failures[m] is None else "failed")

    def summary_of(self, m: int, **tested: Any) -> dict[str, Any]:
        """Member m's summary.json so far (rundir.running_summary, summarize); once it is tested, with its
        checkpoints, its updates and `tested` (tested_checkpoint) first."""
        parameters = sum(shape.numel() for shape in self.shapes[m].values())
        summary = running_summary(self.run_dirs[m], self.cfgs[m].seed, parameters, self.trainer)
        if tested:
            summary.update(checkpoints=self.checkpoints[m].paths(), global_steps=self.updates_done)
        return summarize(summary, self.started, self.trainer, self.checkpoints[m], **tested)

    def trained(self, m: int) -> Trained:
        """Member m's network as it is (tested: at its best), on its own, for its report: a run's is its model."""
        if not self.in_population:
            return Trained(self.model, self.loss_fn, dict(self.hparams))
        hparams = self.hparams_of[m]
        model = MLP(**hparams["model"]).to(self.stacked[0].dtype)
        shapes = self.shapes[m]
        model.load_state_dict({name: cut(p[m].detach(), shapes[name]) for name, p in zip(self.names, self.stacked)})
        return Trained(model.eval(), make_loss(**hparams["loss"]), dict(hparams))

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Where training stands; each member's records go into its own (member_checkpoints.member_checkpoint)
        checkpoint["updates_done"] = self.updates_done
        checkpoint["batches_done_in_epoch"] = self.batches_done_in(self.current_epoch)
        # Not under DDP: each process sums its own share, and only the first one's would be checkpointed.
        summed = self.summed_gradients() if self.trainer.world_size == 1 else None
        if summed is not None:
            checkpoint["summed_gradients"] = summed
        # At an epoch's end, the members whose val/acc is their best name the best.ckpt being written with it: in
        # every process (DDP's), as Lightning's ModelCheckpoint does, though only the first writes files.
        if self.ended_epoch is not None and self.improved is not None:
            for m in self.active():
                if self.improved[m]:
                    self.name_best(m)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Lightning restores a checkpoint to train on: where it stood (`restore`), and a run's random
        generators, the process's, so that dropout draws on as it would have (a member's are its own)."""
        self.restore(checkpoint)
        if "members" in checkpoint:
            return
        states = checkpoint.get("rng_states", {})
        if "torch" in states:
            torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.device_count() == len(states["cuda"]):
            torch.cuda.set_rng_state_all(states["cuda"])

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Where `checkpoint` stood: each member's records, its checkpoints' names, its path through weight space
        and its dropout generator (a population's checkpoint is stacked from its members': member_checkpoints)."""
        in_population = "members" in checkpoint
        members = checkpoint["members"] if in_population else [checkpoint]
        if not in_population:
            upgrade(checkpoint["state_dict"])  # before Lightning loads it
        self.restore_records(checkpoint, members)
        for member, checkpoints in zip(members, self.checkpoints):  # each member's best and last, named again
            for callback in checkpoints:
                state = member.get("callbacks", {}).get(callback.state_key)
                if state:
                    callback.load_state_dict(dict(state))
        for member, trajectory in zip(members, self.trajectories or ()):  # its path through weight space, going on
            trajectory.load_state_dict(member.get("callbacks", {}).get(trajectory.state_key, {}))
        self.restored_gradients = checkpoint.get("summed_gradients")  # put back as training starts
        if self.model.generators is not None and in_population:  # each member's dropout draws on where it stopped
            for generator, member in zip(self.model.generators, members):
                generator.set_state(member["rng_state"])

    # -- inference -----------------------------------------------------------------------------------------------

    @property
    def example_input_array(self) -> torch.Tensor:
        """One blank image in the weights' dtype: Lightning's summary runs it through to count FLOPs (else: 0)."""
        weight = self.model.layers[0].weight
        return torch.zeros(1, weight.shape[-1], dtype=weight.dtype, device=weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output: (B, 10) for a run, every member's (N, B, 10) for a population."""
        return self.model(x)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """A run's network's output, the predicted digit, and a probability per digit (B, 10)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        output = self.model(x.to(self.dtype))
        probs = probabilities(output, self.hparams.model.get("output_activation", "none"))
        return {"output": output, "pred": output.argmax(-1), "probs": probs}


def write_log_line(file: Path, message: str, level: str = "INFO") -> None:
    """A line in a population member's log (`file`), as Hydra's job_logging writes a run's."""
    with file.open("a") as log_file:
        log_file.write(LOG_FORMAT % (time.strftime("%Y-%m-%d %H:%M:%S"), __name__, level, message))


def make_scheduler(optimizer: Optimizer, config: Mapping[str, Any], total_steps: int) -> Any:
    """The learning-rate schedule that config (conf/scheduler/, not `none`) names, over `total_steps` updates."""
    name = config["name"]
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total_steps, eta_min=config.get("min_lr", 0.0)
        )
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config["step_size"], gamma=config["gamma"])
    # onecycle: warm up to the optimizer's lr, then anneal to ~0
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=total_steps,
        pct_start=config.get("pct_start", 0.3),
        # Off unless asked: cycling would override the momentum or beta1 the optimizer was given.
        cycle_momentum=config.get("cycle_momentum", False),
    )


def nonfinite_message(epoch: int, step: int, lr: Any) -> str:
    """What a run whose training loss became NaN or infinite says (NonFiniteLossError)."""
    return (
        f"The training loss became NaN or infinite at epoch {epoch}, global step {step}, so "
        f"training stopped. This usually means the learning rate is too large for this model "
        f"and loss (optimizer.lr={lr}): lower it, or clip gradients with trainer.gradient_clip_val=1.0."
    )


def hyperparameters(cfg: DictConfig, path: TrainingPath) -> dict[str, Any]:
    """MLPSystem's arguments for the run `cfg` describes, making its updates as `path` says (training_path.choose_path):
    what its checkpoints save as hyper_parameters."""

    return {
        "model": plain(cfg.model),
        "loss": plain(cfg.loss),
        "optimizer": plain(cfg.optimizer),
        "scheduler": plain(cfg.scheduler),
        "check_finite_every_n_steps": cfg.check_finite_every_n_steps,
        "log_grad_norms": cfg.log_grad_norms,
        "steps_per_call": path.steps_per_call,
        "compile": path.compile,
        "gradient_clip_val": cfg.trainer.gradient_clip_val,
        "gradient_clip_algorithm": cfg.trainer.gradient_clip_algorithm,
    }


def load_checkpoint(path: str | Path) -> tuple[MLPSystem, dict[str, Any]]:
    """A checkpoint written by train.py: the system on the CPU, and the run's config stored with it.

    Read once, with rundir.read_checkpoint (no code in the file runs); CheckpointError if it is not one."""
    checkpoint = read_checkpoint(path)
    try:
        system = MLPSystem(**checkpoint["hyper_parameters"])
        system.restore(checkpoint)
        system.load_state_dict(checkpoint["state_dict"])
    except Exception as error:  # hyperparameters or weights this version cannot build: all the same to the user
        raise unloadable(path, f"{type(error).__name__}: {error}") from error
    return system, checkpoint.get("config", {})
