"""The LightningModule around the MLP: loss, accuracy, optimizer and learning-rate schedule.

`Members` is what a run and a population (mlptrain.population) keep and do alike, on a member axis: the metrics,
the history, the NaN flags, the place in the epoch, and the lifecycle hooks around them (the engine's training
step, an epoch's end, the validation and the test). `MLPSystem` is a run's module: one member, which also takes
Lightning's own loop (one optimizer.step() a mini-batch) and several processes."""

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch.optim import Optimizer
from torchmetrics import Metric

from mlptrain.config import plain
from mlptrain.data import Chunk
from mlptrain.errors import ConfigError, NonFiniteLossError
from mlptrain.losses import make_loss
from mlptrain.model import MLP
from mlptrain.predict import probabilities
from mlptrain.rundir import read_checkpoint, unloadable
from mlptrain.step import Clip, Engine, make_optimizer
from mlptrain.training_path import TrainingPath

STAGES = ("train", "val", "test")

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


class Members(L.LightningModule):
    """What a run (MLPSystem: one member) and a population (mlptrain.population.PopulationSystem: N members)
    keep alike, every value with a leading member axis: each stage's metrics, the gradient norms, the first
    non-finite training loss, the updates made and the place in the epoch, each member's history (metrics.csv's
    rows) and learning rates; and the hooks that keep them. A subclass calls `keep_records` in its __init__ and
    says what a non-finite loss does (`check_finite`)."""

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

    def check_finite(self) -> None:
        """What the members whose training loss has turned NaN or infinite do: a run stops, a population's fail."""
        raise NotImplementedError

    @property
    def interval(self) -> str | None:
        """When the learning-rate schedule steps: after each update, each epoch (StepLR) or never (None)."""
        return {"none": None, "step": "epoch"}.get(self.scheduler_name, "step")

    def total_updates(self) -> int:
        """Optimizer updates in the whole fit, for the schedules that need it (this loads the training batches)."""
        total = int(self.trainer.estimated_stepping_batches)
        if self.automatic_optimization:
            return total
        return self.trainer.max_epochs * self.trainer.train_dataloader.num_batches  # training steps make K each

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
        # One optimizer.step() per training step, with no gradients: it changes no weight (the updates are the
        # engine's) and advances Lightning's step count, which checkpoints and loggers go by.
        first = self.optimizers()
        (first[0] if isinstance(first, list) else first).step()
        schedulers = self.schedulers() if self.interval == "step" else []
        losses, predicted, labels, norms = self.engine.run(inputs, chunk.labels, schedulers)  # (K, N), (N, K*B), ...
        sizes = chunk.sizes  # (K,)
        self.update_metrics("train", losses.T, sizes, predicted, labels)
        if norms is not None:
            self.grad_norms.update(norms.transpose(0, 1), sizes)
        bad = ~torch.isfinite(losses)
        self.flag_nonfinite(bad.any(0), self.updates_done + bad.int().argmax(0))
        self.updates_done += len(sizes)
        self.batches_done_in_epoch += len(sizes)

    def flag_nonfinite(self, bad: torch.Tensor, step: int | torch.Tensor) -> None:
        """bad (N,): whose loss was NaN or infinite at update `step` (each member's, or one for all)."""
        first_bad = bad & (self.nonfinite_step < 0)
        # In place: assigning a buffer goes through nn.Module.__setattr__, a cost on every step.
        self.nonfinite_epoch.copy_(torch.where(first_bad, self.current_epoch, self.nonfinite_epoch))
        self.nonfinite_step.copy_(torch.where(first_bad, step, self.nonfinite_step))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.updates_done - self.updates_checked >= self.check_every:
            self.updates_checked = self.updates_done
            self.check_finite()

    def on_fit_start(self) -> None:
        self._start_epoch_timer()  # a run resumed mid-epoch has no on_train_epoch_start for it

    def _start_epoch_timer(self) -> None:
        self.epoch_started = time.perf_counter()

    def _stop_epoch_timer(self) -> None:
        if self.epoch_started is None or self.trainer.sanity_checking:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the epoch's kernels, not only their launches
        self.epoch_seconds.append(time.perf_counter() - self.epoch_started)
        self.epoch_started = None

    def on_validation_start(self) -> None:
        self._stop_epoch_timer()  # an epoch's time is its training, not its validation

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

    def end_training_epoch(self, values: dict[str, torch.Tensor]) -> None:
        """The epoch's training values, each member's (N,) (`epoch_values`): what the subclass records of them."""
        raise NotImplementedError

    def evaluate(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        """A validation or test mini-batch, into the stage's metrics (`update_metrics`)."""
        raise NotImplementedError

    def end_evaluation(self, stage: str, values: dict[str, torch.Tensor]) -> None:
        """The validation's or the test's values, each member's (N,): what the subclass records of them."""
        raise NotImplementedError

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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["updates_done"] = self.updates_done
        checkpoint["batches_done_in_epoch"] = self.batches_done_in(self.current_epoch)

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


class MLPSystem(Members):
    """Trains an `MLP` and reports `train/loss`, `train/acc`, `val/loss`, `val/acc`, `test/loss`, `test/acc`: a run,
    whose records are a population's of one member (`Members`).

    Every argument is a plain dict of the config group of the same name, so the hyperparameters
    saved in checkpoints rebuild the run with `MLPSystem.load_from_checkpoint(path)`.

    steps_per_call = 1 is Lightning's own loop: one mini-batch and one `optimizer.step()` per training step.
    K > 1 gives each training step K mini-batches, and `step.Engine` (a population's engine, with one network)
    makes their K updates with the same maths (torch.optim's functional updates, autograd's gradients), without
    Lightning's per-step overhead; `compile` also runs them through torch.compile. How train(cfg) chooses:
    `training_path.choose_path`.
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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = MLP(**model)
        self.loss_fn = make_loss(**loss)
        self.optimizer_factory = self._optimizer_factory(optimizer)
        self.automatic_optimization = steps_per_call == 1
        self.engine: Engine | None = None  # made with the optimizer, in configure_optimizers
        weights = [name for name, _ in self.model.named_parameters() if "weight" in name]
        self.keep_records(
            [slice(0, 1)], weights if log_grad_norms else [], check_finite_every_n_steps, scheduler["name"]
        )

    @property
    def history(self) -> list[dict[str, float]]:
        """The run's records (its member's): metrics.csv's rows."""
        return self.histories[0]

    def _optimizer_factory(self, optimizer: Mapping[str, Any]) -> Callable[..., Optimizer]:
        """step.make_optimizer for this config: (parameters, precision) -> the optimizer."""
        factory = partial(make_optimizer, optimizer)
        try:
            factory(self.model.parameters())  # build one now, so a bad combination fails before any data is read
        except Exception as error:
            settings = ", ".join(f"optimizer.{key}={value}" for key, value in optimizer.items())
            raise ConfigError(
                f"The optimizer could not be built from {settings}: {error}. Use optimizer=sgd, adam or adamw with "
                "valid values, or an optimizer._target_ naming a torch.optim class, with `_partial_: true`."
            ) from error
        return factory

    @property
    def example_input_array(self) -> torch.Tensor:
        """One blank image in the weights' dtype: Lightning's summary runs it through to count FLOPs (else: 0)."""
        weight = self.model.layers[0].weight
        return torch.zeros(1, weight.shape[1], dtype=weight.dtype, device=weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        output = self.model(x)  # (B, 10)
        loss = self.loss_fn(output, y)
        # The batch size is made on the device: a Python number would be copied to the GPU every step.
        size = torch.full((1,), len(y), dtype=torch.float64, device=loss.device)
        self.update_metrics(stage, loss.detach().view(1, 1), size, output.detach().argmax(-1)[None], y)
        return loss

    def _log_epoch(self, stage: str, computed: dict[str, torch.Tensor]) -> None:
        """The epoch's values of `stage` (`epoch_values`): to Lightning (the progress bar, TensorBoard, the best
        checkpoint's monitor) and, for training and validation, a row of the history."""
        values = {name: value[0] for name, value in computed.items()}
        lrs = self.epoch_lrs[0] if stage == "train" else {}
        for name, value in {**values, **lrs}.items():
            self.log(name, value)
        if stage != "test" and not self.trainer.sanity_checking:
            self.add_row(0, {**{name: float(value) for name, value in values.items()}, **lrs})

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if self.automatic_optimization:
            loss = self._step("train", batch)
            self.batch_examples = len(batch[1])  # the weight of this step's gradient norms
            self.flag_nonfinite(~torch.isfinite(loss.detach()), self.global_step)
            self.updates_done = self.global_step + 1
            self.batches_done_in_epoch += 1
            return loss
        chunk: Chunk = batch  # K mini-batches (TensorBatches with steps_per_call = K)
        images = chunk.images  # (K, B, 784), or a list where the epoch's last, smaller mini-batch is among them

        def inputs(start: int, stop: int) -> torch.Tensor:
            return images[start:stop] if torch.is_tensor(images) else torch.stack(images[start:stop])

        self.engine_step(inputs, chunk)
        return None

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if not self.automatic_optimization and self.trainer.world_size > 1:
            raise ConfigError(
                "steps_per_call > 1 makes its updates outside Lightning's distributed wrapper, so gradients would "
                "not be synchronised across devices: use steps_per_call=auto or 1 with several devices."
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint.update(self.records_of(0))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade(checkpoint["state_dict"])  # before Lightning loads it
        self.restore_records(checkpoint, [checkpoint])

    def end_training_epoch(self, values: dict[str, torch.Tensor]) -> None:
        self._log_epoch("train", values)
        if self.trainer.is_global_zero:  # one line per epoch, for logs where no progress bar is drawn
            log.info("%s", self.epoch_line(0))

    def epoch_train_loss(self) -> float:
        """The mean training loss over the examples of the epoch so far (read before the epoch's end resets it)."""
        return float(self.train_loss.compute().view(-1)[0])

    @property
    def diverged(self) -> bool:
        """Whether a training loss has been NaN or infinite (read from the device: a synchronisation)."""
        return int(self.nonfinite_step) >= 0

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        if self.norms_of and self.automatic_optimization:  # the fast path computes its norms in its step
            parameters = dict(self.model.named_parameters())
            norms = torch.stack([parameters[name].grad.norm() for name in self.norms_of])
            size = torch.full((1,), float(self.batch_examples), dtype=torch.float64, device=self.device)
            self.grad_norms.update(norms.view(1, 1, -1), size)

    def check_finite(self) -> None:
        """A run stops at its first NaN or infinite training loss: NonFiniteLossError."""
        step = int(self.nonfinite_step)
        if step >= 0:
            epoch = int(self.nonfinite_epoch)
            raise NonFiniteLossError(nonfinite_message(epoch, step, self.hparams.optimizer.get("lr")))

    def evaluate(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._step(stage, batch)

    def end_evaluation(self, stage: str, values: dict[str, torch.Tensor]) -> None:
        self._log_epoch(stage, values)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """The network's output, the predicted digit, and a probability per digit (B, 10)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        output, probs = self._infer(x)
        return {"output": output, "pred": output.argmax(-1), "probs": probs}

    def _infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(x.to(self.dtype))
        return output, self.probabilities(output)

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        return probabilities(output, self.hparams.model.get("output_activation", "none"))

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters(), str(self.trainer.precision))
        if not self.automatic_optimization:
            clip = self.hparams.gradient_clip_val
            self.engine = Engine(
                self.model,
                self.loss_fn,
                [optimizer],
                compile=self.hparams.compile,
                clip=Clip(clip, self.hparams.gradient_clip_algorithm) if clip else None,
                norms_of=self.norms_of,
            )
        return self.with_schedules([optimizer], self.hparams.scheduler)


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
        system.on_load_checkpoint(checkpoint)
        system.load_state_dict(checkpoint["state_dict"])
    except Exception as error:  # hyperparameters or weights this version cannot build: all the same to the user
        raise unloadable(path, f"{type(error).__name__}: {error}") from error
    return system, checkpoint.get("config", {})
