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
ckpt_path=...`, scripts/predict.py and a single run's resume take. `MemberCheckpointIO` cuts them out of the
population's checkpoint when Lightning saves it; the population itself keeps no checkpoint of its own, and its
resume=auto stacks the members' last.ckpt files again. A member whose loss turns NaN or infinite fails as a
run alone fails, with its message, and is masked: its records stop, the others train on.

    train_population(configs) -> each job's best val/acc (None where it failed)

The launcher that groups a sweep's jobs and composes their configs: hydra_plugins/mlptrain_population.
"""

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.plugins.io import CheckpointIO
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mlptrain.callbacks import CheckpointOnStop, Checkpoints
from mlptrain.config import check
from mlptrain.data import Chunk, MNISTDataModule
from mlptrain.errors import MlptrainError
from mlptrain.frameworks import HPARAMS_AS_KEYWORDS
from mlptrain.losses import make_loss, member_losses
from mlptrain.model import MLP, Kind
from mlptrain.report import write_run_report
from mlptrain.rundir import (
    RunLock,
    claim,
    completed_summary,
    library_versions,
    read_checkpoint,
    resume_path,
    summarize,
    write_durably,
    write_metrics,
    write_summary,
    write_text_durably,
    yaml_text,
)
from mlptrain.signals import TrainingTakesSignals
from mlptrain.step import Clip, Engine, make_optimizer
from mlptrain.system import hyperparameters, make_scheduler, nonfinite_message, upgrade
from mlptrain.train import fit, interrupted, make_trainer, progress_bar, trainer_settings
from mlptrain.training_path import TrainingPath, choose_path

log = logging.getLogger(__name__)
LOG_FORMAT = "[%s][%s][%s] - %s\n"  # a member's log lines, as Hydra's job_logging writes a run's

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
# Keys in which they may differ too, each job composed by Hydra: what a member computes with, on weights of one
# shape (maxout and a `_target_` activation, which have shapes or parameters of their own, must be equal).
MEMBER_KINDS = (
    "model.activation",
    "model.logistic_slope",
    "model.leaky_relu_slope",
    "model.output_activation",
    "model.dropout",
    "loss",
)
# And in width: model.hidden, its depth equal (members narrower than the widest are zero-padded), but for maxout
# and `_target_` activations, whose layers or parameters have shapes of their own.
MEMBER_WIDTHS = ("model.hidden",)


def _container(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True)


def stack_key(cfg: DictConfig) -> tuple[str | None, str]:
    """What must be equal for two jobs to train as one population, as a string, and ""; or None and why the job
    cannot be stacked (it then runs on its own, and the launcher's log says why in one line)."""
    job = OmegaConf.masked_copy(cfg, [key for key in cfg if key not in ("hydra", "output_dir")])
    try:
        plain = _container(job)
        path = choose_path(job)
    except Exception:  # the job's own run will say what is wrong
        return None, "its config does not resolve or is refused (its run says why)"
    why = next(
        (
            reason
            for reason, applies in (
                ("train=false evaluates a checkpoint", not job.train),
                ("ckpt_path= starts it from a checkpoint of its own", job.ckpt_path is not None),
                ("report.landscape follows one network's weights", job.report.landscape is not None),
                ("logger=tensorboard writes one event log per process", job.logger.tensorboard),
                (
                    "compile=true with model.dropout: compiled code draws other masks",
                    job.model.dropout and path.compile,
                ),
                (
                    "model.dropout on a GPU: a run's masks come from CUDA's fused dropout kernel, whose draws a "
                    "member's own generator cannot repeat",
                    job.model.dropout and _on_gpu(job),
                ),
                (path.why, path.steps_per_call == 1),
            )
            if applies
        ),
        None,
    )
    if why is not None:
        return None, why
    activation = plain["model"]["activation"]
    own = activation if isinstance(activation, dict) or activation == "maxout" else None
    for key in (*MEMBER_KEYS, *MEMBER_KINDS):
        *parents, last = key.split(".")
        node = plain
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    if own is None:
        plain["model"]["hidden"] = f"{len(plain['model']['hidden'])} hidden layers"  # of any widths
    return repr((sorted(plain.items()), own)), ""


def _kind(cfg: DictConfig) -> str:
    """What a member computes with (MEMBER_KINDS' values), as a string: members of one kind share them."""
    return repr([OmegaConf.select(cfg, key) for key in MEMBER_KINDS[:-1]] + [_container(cfg.loss)])


def _side_by_side(keys: Sequence[Any]) -> list[slice]:
    """The runs of equal keys in a sequence (sorted, so each key has one run), as slices of it."""
    runs: list[slice] = []
    for m, key in enumerate(keys):
        if m and key == keys[m - 1]:
            runs[-1] = slice(runs[-1].start, m + 1)
        else:
            runs.append(slice(m, m + 1))
    return runs


def _padded(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """tensor, zero-padded at the end of each axis to `shape` (a member narrower than the widest)."""
    if tensor.shape == shape:
        return tensor
    out = tensor.new_zeros(shape)
    out[tuple(slice(0, n) for n in tensor.shape)] = tensor
    return out


def _cut(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A member's own part of its padded tensor (_padded's inverse), as a tensor of its own."""
    return tensor[tuple(slice(0, n) for n in shape)].clone()


def _on_gpu(cfg: DictConfig) -> bool:
    """Whether the job would train on a CUDA device (trainer.accelerator auto or gpu, with one there)."""
    import torch

    return str(cfg.trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def _settings(cfg: DictConfig) -> str:
    return repr(sorted(_container(cfg.optimizer).items()))


class PopulationSystem(L.LightningModule):
    """N members' MLPs, stacked, trained on their own mini-batches (each its data.shuffle_seed's order) and
    evaluated on the shared validation and test sets. `cfgs` are the members' configs, equal but for
    MEMBER_KEYS; they are kept sorted by optimizer settings (`self.cfgs`), members of a set side by side."""

    def __init__(self, cfgs: Sequence[DictConfig], path: TrainingPath) -> None:
        super().__init__()
        self.automatic_optimization = False  # the updates are made below; Lightning counts one step per call
        # Members of one kind side by side, and within it those with equal optimizer settings (an optimizer each)
        settings = [(_kind(cfg), _settings(cfg)) for cfg in cfgs]
        order = sorted(range(len(cfgs)), key=lambda m: settings[m])
        self.cfgs = [cfgs[m] for m in order]
        first = self.cfgs[0]
        self.path, self.compile = path, path.compile  # compiled as a run alone would be (training_path.choose_path)
        self.run_dirs = [Path(cfg.output_dir) for cfg in self.cfgs]
        self.plain = [_container(cfg) for cfg in self.cfgs]  # each config resolved, for its files and checkpoints
        self.hparams_of = [hyperparameters(cfg, path) for cfg in self.cfgs]  # what MLPSystem would save
        ordered = [settings[m] for m in order]
        self.parts = _side_by_side(ordered)  # the sets of members with equal optimizer settings, slices of the stack
        self.set_of = [s for s, part in enumerate(self.parts) for _ in range(part.start, part.stop)]  # each member's
        kinds = _side_by_side([kind for kind, _ in ordered])  # the members of each kind, as slices of the stack
        models, generators = [], []
        for cfg in self.cfgs:  # each member's weights, drawn as its run alone draws them
            L.seed_everything(cfg.seed, workers=True, verbose=False)
            models.append(MLP(**_container(cfg.model)))
            # Its random generator, where its run alone's stands once the weights are drawn: its dropout masks
            generators.append(torch.Generator().set_state(torch.get_rng_state()))
        # One MLP whose parameters are every member's, stacked: (N, ...) each. Members of different widths (the
        # depth is equal) are zero-padded to the widest, and their padding's gradients held at zero (self.masks).
        self.names = [name for name, _ in models[0].named_parameters()]
        self.shapes = [{name: p.shape for name, p in model.named_parameters()} for model in models]  # each its own
        self.full = {name: torch.Size(map(max, zip(*(s[name] for s in self.shapes)))) for name in self.names}
        padded = any(shapes != self.full for shapes in self.shapes)
        self.network = models[0]
        for name in self.names:
            values = torch.stack(
                [_padded(dict(model.named_parameters())[name].detach(), self.full[name]) for model in models]
            )
            layer, _, kind = name.rpartition(".")
            setattr(self.network.get_submodule(layer), kind, nn.Parameter(values))
        self.masks = (
            [torch.stack([_padded(torch.ones(s[name], dtype=torch.bool), self.full[name]) for s in self.shapes])
             for name in self.names]
            if padded else None
        )  # fmt: skip
        self.network.widths = [list(cfg.model.hidden) for cfg in self.cfgs] if padded else None
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
            self.loss_fn = member_losses(
                [(part, make_loss(**_container(self.cfgs[part.start].loss))) for part in kinds]
            )
        else:
            self.loss_fn = make_loss(**_container(first.loss))
        del models
        self.network.generators = generators if any(cfg.model.dropout for cfg in self.cfgs) else None
        clip = first.trainer.gradient_clip_val
        self.clip = Clip(clip, first.trainer.gradient_clip_algorithm) if clip else None
        self.norms_of = [name for name in self.names if "weight" in name] if first.log_grad_norms else []
        self.engine: Engine | None = None  # made with the optimizers, in configure_optimizers
        self.gathered: dict[int, torch.Tensor] = {}  # where each size of the members' mini-batches is gathered
        n = len(self.cfgs)
        # Each member's running sums, as a run's metrics keep them: the training ones go into checkpoints.
        for stage in ("train", "val", "test"):
            persistent = stage == "train"
            self.register_buffer(f"{stage}_total", torch.zeros(n, dtype=torch.float64), persistent)  # loss x size
            self.register_buffer(f"{stage}_examples", torch.zeros(n, dtype=torch.float64), persistent)
            self.register_buffer(f"{stage}_correct", torch.zeros(n, dtype=torch.long), persistent)
        self.register_buffer("norm_totals", torch.zeros(n, len(self.norms_of), dtype=torch.float64), False)
        self.register_buffer("nonfinite_epoch", torch.full((n,), -1), persistent=False)
        self.register_buffer("nonfinite_step", torch.full((n,), -1), persistent=False)
        self.check_finite_every_n_steps = first.check_finite_every_n_steps
        self.updates_done = self.updates_checked = 0
        self.batches_done_in_epoch = 0
        self.ended_epoch: int | None = None
        self.histories: list[list[dict[str, float]]] = [[] for _ in range(n)]
        self.epoch_lrs: list[dict[str, float]] = [{} for _ in range(n)]
        self.checkpoints = [Checkpoints.into(run_dir / "checkpoints") for run_dir in self.run_dirs]
        self.failures: list[dict[str, Any] | None] = [None] * n  # a failed member's summary fields
        self.best: list[torch.Tensor] | None = None  # each member's weights at its best val/acc, stacked
        self.best_updates = [0] * n  # updates made at each member's best checkpoint
        self.improved: torch.Tensor | None = None  # (N,) at an epoch's end: whose val/acc is its best so far
        self.val_acc: torch.Tensor | None = None  # (N,) of the last validation
        self.evaluated: list[torch.Tensor] | None = None  # the parameters validation and test use
        self.resumed: list[dict[str, Any]] | None = None  # the members' checkpoints a resume starts from
        self.log_name = "train.log"  # each member's log, in its directory: Hydra's job log name
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
        optimizers, schedulers = [], []
        for part in self.parts:
            config = _container(self.cfgs[part.start].optimizer)
            optimizers.append(make_optimizer(config, [p.detach()[part] for p in self.stacked], self.trainer.precision))
        masks = [mask.to(self.device) for mask in self.masks] if self.masks is not None else None
        self.engine = Engine(
            self.network, self.loss_fn, optimizers, self.parts, self.compile, self.clip, self.norms_of, masks
        )
        config = _container(self.cfgs[0].scheduler)
        if config["name"] == "none":
            return optimizers
        self.trainer.estimated_stepping_batches  # noqa: B018  loads the training batches, as a run does
        total = self.trainer.max_epochs * self.trainer.train_dataloader.num_batches
        for optimizer in optimizers:
            schedulers.append({"scheduler": make_scheduler(optimizer, config, total), "interval": self.interval})
        return optimizers, schedulers

    @property
    def interval(self) -> str | None:
        return {"none": None, "step": "epoch"}.get(self.cfgs[0].scheduler.name, "step")

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        found = self.optimizers(use_pl_optimizer=False)
        return found if isinstance(found, list) else [found]

    def _schedulers(self) -> list[Any]:
        found = self.lr_schedulers()
        return [] if found is None else found if isinstance(found, list) else [found]

    def training_step(self, batch: Any, batch_idx: int) -> None:
        # One optimizer.step() per training step, with no gradients: it changes no weight and advances
        # Lightning's step count, which checkpoints and loggers go by, as a run alone's does (MLPSystem).
        first = self.optimizers()
        (first[0] if isinstance(first, list) else first).step()
        chunk: Chunk = batch  # K mini-batches, each member's rows of the training inputs (TensorBatches, gather=False)
        rows, labels = chunk.rows, chunk.labels
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

        schedulers = self._schedulers() if self.interval == "step" else []
        losses, predicted, labels, norms = self.engine.run(inputs, labels, schedulers)  # (K, N), (N, K*B), ...
        sizes = chunk.sizes  # (K,)
        loss = losses.T  # (N, K)
        self.train_total += (loss.double() * sizes).sum(1)
        self.train_examples += sizes.sum()
        self.train_correct += (predicted == labels).sum(-1)
        if self.norms_of:
            self.norm_totals += (norms.double() * sizes[:, None, None]).sum(0)
        bad = ~torch.isfinite(loss)
        first_bad = bad.any(1) & (self.nonfinite_step < 0)
        self.nonfinite_epoch.copy_(torch.where(first_bad, self.current_epoch, self.nonfinite_epoch))
        self.nonfinite_step.copy_(torch.where(first_bad, self.updates_done + bad.int().argmax(1), self.nonfinite_step))
        self.updates_done += len(sizes)
        self.batches_done_in_epoch += len(sizes)

    # A member whose loss turns NaN fails alone, masked (_check_finite): the population never stops for it, and
    # callbacks.CheckpointOnStop checkpoints it on SIGTERM.
    diverged = False

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.updates_done - self.updates_checked >= self.check_finite_every_n_steps:
            self.updates_checked = self.updates_done
            self._check_finite()

    def _check_finite(self) -> None:
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
        write_metrics(run_dir, self.histories[m])
        summary = self._summary(m)
        summary.update(status="failed", error=failure["error"], epochs=failure["epochs"])
        summary["global_steps"] = failure["global_steps"]
        write_summary(run_dir, summary)
        kept = [path for path in self.checkpoints[m].paths().values() if path]
        message = failure["error"] + (f" Checkpoints written before it are kept: {', '.join(kept)}." if kept else "")
        self.note(m, message, "ERROR")
        log.error("Member %s: %s", run_dir, message)

    def _reset_training_sums(self) -> None:
        for buffer in (self.train_total, self.train_examples, self.train_correct, self.norm_totals):
            buffer.zero_()

    def on_train_epoch_start(self) -> None:  # not called when a run resumes in the middle of an epoch
        self._reset_training_sums()
        self.batches_done_in_epoch = 0
        self.ended_epoch = None
        self.improved = None
        lrs = []
        for part, optimizer in zip(self.parts, self._optimizers()):  # named as a run names them: lr-SGD, ...
            lrs += [{f"lr-{type(optimizer).__name__}": float(optimizer.param_groups[0]["lr"])}] * (
                part.stop - part.start
            )
        self.epoch_lrs = lrs

    def batches_done_in(self, epoch: int) -> int:
        """As MLPSystem.batches_done_in: the data module saves it, to resume mid-epoch exactly."""
        if self.ended_epoch is not None and epoch > self.ended_epoch:
            return 0
        return self.batches_done_in_epoch

    def _add_row(self, m: int, values: dict[str, float]) -> None:
        """A row of member m's history, as MLPSystem._log_epoch makes it: an epoch's training joins the validation
        that ended it."""
        row = {"epoch": self.current_epoch, "step": self.updates_done, **values}
        history = self.histories[m]
        last = history[-1] if history else {}
        if (last.get("epoch"), last.get("step")) == (row["epoch"], row["step"]) and not last.keys() & values.keys():
            last.update(row)
        else:
            history.append(row)

    def on_train_epoch_end(self) -> None:
        self._check_finite()
        if self.interval == "epoch":
            for scheduler in self._schedulers():
                scheduler.step()
        loss = (self.train_total / self.train_examples).tolist()
        acc = (self.train_correct.float() / self.train_examples.float()).tolist()
        norms = (self.norm_totals / self.train_examples[:, None]).tolist()
        for m in self.active():
            values = {"train/loss": loss[m], "train/acc": acc[m]}
            values.update({f"grad_norm/{name}": value for name, value in zip(self.norms_of, norms[m])})
            self._add_row(m, {**values, **self.epoch_lrs[m]})
            row = self.histories[m][-1]  # the epoch's line, as a run logs it
            shown = "  ".join(f"{key} {row[key]:.4f}" for key in sorted(row) if key.split("/")[0] in ("train", "val"))
            self.note(m, f"epoch {self.current_epoch}  {shown}")
        active = self.active()
        if active:
            log.info(
                "epoch %d  train/loss %.4f  val/acc %.4f (means over %d members)", self.current_epoch,
                sum(loss[m] for m in active) / len(active), self._mean_val_acc(active), len(active),
            )  # fmt: skip
        self._reset_training_sums()  # as a run's metrics are reset once computed: its checkpoint holds them so
        self._keep_best()
        self.ended_epoch = self.current_epoch

    def _mean_val_acc(self, active: list[int]) -> float:
        return float(self.val_acc[active].mean()) if self.val_acc is not None else float("nan")

    def _keep_best(self) -> None:
        """After the epoch's validation: each member whose val/acc beats its best so far keeps these weights, and
        its best.ckpt is written with last.ckpt (MemberCheckpointIO), as a run's ModelCheckpoint(monitor=val/acc)
        would (the first validation always counts)."""
        if self.val_acc is None:
            return
        best = torch.tensor(
            [float(c.best.best_model_score) if c.best.best_model_score is not None else -1.0 for c in self.checkpoints]
        )
        improved = (self.val_acc.cpu() > best) & torch.tensor([f is None for f in self.failures])
        self.improved = improved
        if self.best is None:
            self.best = [p.detach().clone() for p in self.stacked]
        else:
            mask = improved.to(self.device)
            for kept, p in zip(self.best, self.stacked):
                kept.copy_(torch.where(mask.view(-1, *[1] * (p.dim() - 1)), p.detach(), kept))
        for m in improved.nonzero().flatten().tolist():
            score = self.val_acc[m].detach().cpu()
            callback, path = self.checkpoints[m].best, str(self.run_dirs[m] / "checkpoints" / "best.ckpt")
            callback.best_model_score = callback.current_score = callback.kth_value = score
            callback.best_model_path = callback.kth_best_model_path = path
            callback.best_k_models = {path: score}
            self.best_updates[m] = self.updates_done
        self.val_acc = None

    # -- evaluation ----------------------------------------------------------------------------------------------

    def forward(self, params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Every member's output for the same inputs: params stacked (N, ...), x (B, 784) -> (N, B, 10)."""
        return torch.func.functional_call(self.network, dict(zip(self.names, params)), (x,))

    def _evaluate(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = batch
        params = self.evaluated if self.evaluated is not None else list(self.stacked)
        output = self.forward(params, x.to(params[0].dtype))  # (N, B, 10)
        loss = self.loss_fn(output, y.expand(len(output), -1))  # (N,)
        getattr(self, f"{stage}_total").add_(loss.double() * len(y))
        getattr(self, f"{stage}_examples").add_(len(y))
        getattr(self, f"{stage}_correct").add_((output.argmax(-1) == y).sum(-1))

    def _epoch_values(self, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss (N,) float64, acc (N,) float32) of the stage's epoch, as a run's metrics compute them; reset."""
        total, examples, correct = (getattr(self, f"{stage}_{name}") for name in ("total", "examples", "correct"))
        values = total / examples, correct.float() / examples.float()
        for buffer in (total, examples, correct):
            buffer.zero_()
        return values

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def on_validation_epoch_end(self) -> None:
        loss, acc = self._epoch_values("val")
        if self.trainer.sanity_checking:
            return
        self.val_acc = acc
        losses, accs = loss.tolist(), acc.tolist()
        for m in self.active():
            self._add_row(m, {"val/loss": losses[m], "val/acc": accs[m]})

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_test_epoch_end(self) -> None:
        self.test_results = self._epoch_values("test")

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["updates_done"] = self.updates_done
        checkpoint["batches_done_in_epoch"] = self.batches_done_in(self.current_epoch)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.updates_done = self.updates_checked = checkpoint["updates_done"]
        self.batches_done_in_epoch = checkpoint["batches_done_in_epoch"]
        members = checkpoint["members"]
        self.histories = [list(member["history"]) for member in members]
        self.epoch_lrs = [dict(member["epoch_lrs"]) for member in members]
        for member, checkpoints in zip(members, self.checkpoints):
            for callback in checkpoints:
                state = member["callbacks"].get(callback.state_key)
                if state:
                    callback.load_state_dict(dict(state))
        if self.network.generators is not None:  # each member's dropout draws on where it stopped
            for generator, member in zip(self.network.generators, members):
                generator.set_state(member["rng_state"])
        self.best_updates = [member["best_updates"] for member in members]
        best = [member["best_weights"] for member in members]
        if all(weights is not None for weights in best):
            self.best = [
                torch.stack([_padded(weights[name], self.full[name]) for weights in best]).to(self.device)
                for name in self.names
            ]

    def member_checkpoint(self, checkpoint: dict[str, Any], m: int) -> dict[str, Any]:
        """Member m's part of the population's checkpoint, as its run alone would have saved it then."""
        s = self.set_of[m]
        offset = m - self.parts[s].start
        shapes = self.shapes[m]
        state_dict = {f"model.{name}": _cut(p[m].detach(), shapes[name]) for name, p in zip(self.names, self.stacked)}
        state_dict.update({  # MLPSystem's training metrics' states: system.ExampleMean's and system.Accuracy's
            "train_loss.total": self.train_total[m].clone(),
            "train_loss.examples": self.train_examples[m].clone(),
            "train_acc.correct": self.train_correct[m].clone(),
            "train_acc.examples": self.train_examples[m].long(),
        })  # fmt: skip
        optimizer = checkpoint["optimizer_states"][s]
        member = {key: value for key, value in checkpoint.items() if key not in ("optimizer_states", "lr_schedulers")}
        member.update(
            state_dict=state_dict,
            optimizer_states=[
                {
                    "state": {
                        index: {
                            key: _cut(t[offset], shapes[self.names[index]]) if t.dim() > 0 else t.clone()
                            for key, t in values.items()
                        }
                        for index, values in optimizer["state"].items()
                    },
                    "param_groups": optimizer["param_groups"],
                }
            ],
            callbacks={callback.state_key: callback.state_dict() for callback in self.checkpoints[m]},
            **HPARAMS_AS_KEYWORDS,
            hyper_parameters=self.hparams_of[m],
            config=self.plain[m],
            library_versions=library_versions(),
            rng_states={"torch": self._rng_state(m)},
            history=[dict(row) for row in self.histories[m]],
            epoch_lrs=dict(self.epoch_lrs[m]),
        )
        schedulers = checkpoint.get("lr_schedulers", [])
        member["lr_schedulers"] = [schedulers[s]] if schedulers else []
        return member

    def _rng_state(self, m: int) -> torch.Tensor:
        """Member m's random generator's state, as its run alone's checkpoint keeps the process's."""
        generators = self.network.generators
        return generators[m].get_state() if generators is not None else torch.get_rng_state()

    def population_checkpoint(self) -> dict[str, Any]:
        """The population's checkpoint, stacked from its members' (self.resumed): what Lightning restores."""
        members = self.resumed
        assert members is not None
        first = members[0]
        state_dict = {
            f"network.{name}": torch.stack(
                [_padded(c["state_dict"][f"model.{name}"], self.full[name]) for c in members]
            )
            for name in self.names
        }
        state_dict["train_total"] = torch.stack([c["state_dict"]["train_loss.total"] for c in members])
        state_dict["train_examples"] = torch.stack([c["state_dict"]["train_loss.examples"] for c in members])
        for c in members:
            upgrade(c["state_dict"])  # a checkpoint written before system.Accuracy
        state_dict["train_correct"] = torch.stack([c["state_dict"]["train_acc.correct"] for c in members])
        optimizers, schedulers = [], []
        for part in self.parts:
            own = [c["optimizer_states"][0] for c in members[part]]
            optimizers.append(
                {
                    "state": {
                        index: {
                            key: torch.stack(
                                [_padded(o["state"][index][key], self.full[self.names[index]]) for o in own]
                            )
                            if t.dim() > 0
                            else t
                            for key, t in values.items()
                        }
                        for index, values in own[0]["state"].items()
                    },
                    "param_groups": own[0]["param_groups"],
                }
            )
            schedulers += members[part.start].get("lr_schedulers", [])[:1]
        population = {key: value for key, value in first.items() if key not in ("callbacks", "history")}
        population.update(state_dict=state_dict, optimizer_states=optimizers, lr_schedulers=schedulers, callbacks={})
        population["members"] = [
            {
                "history": c["history"],
                "epoch_lrs": c["epoch_lrs"],
                "callbacks": c["callbacks"],
                "best_updates": c.get("best_updates", 0),
                "best_weights": c.get("best_weights"),
                "rng_state": c.get("rng_states", {}).get("torch"),
            }
            for c in members
        ]
        return population

    def _summary(self, m: int) -> dict[str, Any]:
        cfg = self.cfgs[m]
        summary = {
            "status": "running",
            "run_dir": str(self.run_dirs[m].resolve()),
            "seed": cfg.seed,
            "parameters": sum(shape.numel() for shape in self.shapes[m].values()),
            "device": str(self.device),
            "processes": 1,
            "versions": library_versions(),
        }
        return summarize(summary, self.started, self.trainer, self.checkpoints[m])


class MemberCheckpointIO(CheckpointIO):
    """Lightning's checkpoint of the population, written as each member's: last.ckpt always, best.ckpt where
    the member's val/acc is its best so far, then its metrics.csv from the history the checkpoint holds, all
    durably (mlptrain.rundir). Failed members are left as they were. Loading gives the population's checkpoint
    stacked from the members' own (PopulationSystem.resumed)."""

    def __init__(self, system: PopulationSystem) -> None:
        self.system = system

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        system = self.system
        improved = system.improved if system.ended_epoch is not None else None
        for m in system.active():
            member = system.member_checkpoint(checkpoint, m)
            folder = system.run_dirs[m] / "checkpoints"
            folder.mkdir(parents=True, exist_ok=True)
            last = system.checkpoints[m].last
            if improved is not None and improved[m]:  # written first, as a run's callbacks write it
                write_durably(folder / "best.ckpt", lambda file, saved=member: torch.save(saved, file))
            last.best_model_path = str(folder / "last.ckpt")
            member["callbacks"][last.state_key] = last.state_dict()
            write_durably(folder / "last.ckpt", lambda file, saved=member: torch.save(saved, file))
            write_metrics(system.run_dirs[m], system.histories[m])

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return self.system.population_checkpoint()

    def remove_checkpoint(self, path: Any) -> None:
        pass  # the population's own checkpoint is never written


def _member_hooks(system: PopulationSystem) -> None:
    """Write each member's config.yaml and its training path, as train() does first."""
    for m, run_dir in enumerate(system.run_dirs):
        write_text_durably(run_dir / "config.yaml", yaml_text(system.plain[m]))
        system.note(m, f"Training path: {system.describe()}")


Resumed = tuple[DictConfig, dict[str, Any] | None, str | None]  # a member, its checkpoint and that file, or Nones


def _resumable(cfgs: Sequence[DictConfig]) -> list[list[Resumed]]:
    """The members to train, grouped by where they resume from (resume=auto: each its newest checkpoint), each
    with its checkpoint (with its best weights and the updates made at them added) and its path, or None to
    start afresh."""
    groups: dict[Any, list[Resumed]] = {}
    for cfg in cfgs:
        checkpoint, found = None, None
        if cfg.resume == "auto":
            found = resume_path(Path(cfg.output_dir))
            if found is not None:
                checkpoint = read_checkpoint(found)
                best_path = Path(cfg.output_dir) / "checkpoints" / "best.ckpt"
                best = read_checkpoint(best_path) if best_path.is_file() else None
                checkpoint["best_weights"] = (
                    {
                        key[len("model.") :]: value
                        for key, value in best["state_dict"].items()
                        if key.startswith("model.")
                    }
                    if best is not None
                    else None
                )
                checkpoint["best_updates"] = best["updates_done"] if best is not None else 0
        where = (
            None if checkpoint is None else (checkpoint["epoch"], checkpoint["global_step"], checkpoint["updates_done"])
        )
        groups.setdefault(where, []).append((cfg, checkpoint, found))
    return list(groups.values())


def train_population(cfgs: Sequence[DictConfig], log_name: str = "train.log") -> list[float | None]:
    """Train the jobs `cfgs` (composed, output_dir set, equal but for MEMBER_KEYS) as populations; return each
    job's best val/acc, or None where it failed (its summary.json and log say why, as a run's would)."""
    results: dict[int, float | None] = {}
    locks, todo = [], []
    for index, cfg in enumerate(cfgs):
        run_dir = Path(cfg.output_dir)
        lock = RunLock(run_dir)
        try:
            check(cfg)
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            claim(run_dir, _container(cfg))  # a directory holds one run, as train() makes sure
        except MlptrainError as error:
            lock.release()
            log.error("%s", error)
            results[index] = None
            continue
        locks.append(lock)
        done = completed_summary(run_dir, _container(cfg)) if cfg.resume == "auto" else None
        if done is not None:
            log.info("resume=auto: the run in %s is complete; nothing to do.", run_dir.resolve())
            results[index] = done.get("best_val_acc")
        else:
            todo.append(index)
    try:
        by_dir = {Path(cfgs[index].output_dir): index for index in todo}
        for group in _resumable([cfgs[index] for index in todo]) if todo else []:
            for run_dir, value in _train_group(group, log_name).items():
                results[by_dir[run_dir]] = value
    finally:
        for lock in locks:
            lock.release()
    return [results.get(index) for index in range(len(cfgs))]


def _train_group(group: Sequence[Resumed], log_name: str) -> dict[Path, float | None]:
    """One population: build, fit, test and write every member's files; each member's best val/acc."""
    cfgs = [cfg for cfg, _, _ in group]
    first = cfgs[0]
    paths = [choose_path(cfg) for cfg in cfgs]  # compiled where each member's run alone would be (dropout: not)
    path = next((path for path in paths if not path.compile), paths[0])
    system = PopulationSystem(cfgs, path)
    system.log_name = log_name
    checkpoints = {Path(cfg.output_dir): checkpoint for cfg, checkpoint, _ in group}
    resumed = [checkpoints[run_dir] for run_dir in system.run_dirs]
    system.resumed = resumed if resumed[0] is not None else None
    if str(first.trainer.precision) in ("64-true", "64"):
        system.double()  # as train() does: weights drawn in float32, trained in float64
    datamodule = MNISTDataModule(
        **_container(first.data),
        steps_per_call=path.steps_per_call,
        limit_train_batches=first.trainer.limit_train_batches,
        gather=False,
        member_shuffle_seeds=[cfg.data.shuffle_seed for cfg in system.cfgs],
    )
    torch.set_float32_matmul_precision(first.matmul_precision)
    _member_hooks(system)
    log.info("Population of %d members, trained together: %s", len(cfgs), system.describe())
    sweep_dir = system.run_dirs[0].parent
    last = ModelCheckpoint(  # what Lightning saves, the members' checkpoints are cut from (MemberCheckpointIO)
        dirpath=sweep_dir / ".population", filename=f".population-{system.run_dirs[0].name}", save_top_k=1,
        enable_version_counter=False, save_on_train_epoch_end=True,
    )  # fmt: skip
    callbacks: list[Callback] = [last, TrainingTakesSignals(), CheckpointOnStop(last)]
    show_bar = progress_bar(first.progress_bar)
    if show_bar:
        callbacks.append(RichProgressBar())
    try:
        trainer = make_trainer(
            trainer_settings(first, path.steps_per_call),
            default_root_dir=sweep_dir,
            logger=False,
            callbacks=callbacks,
            plugins=[MemberCheckpointIO(system)],
            enable_progress_bar=show_bar,
            enable_model_summary=False,
        )
    except MlptrainError as error:  # settings Lightning refuses: every member's, as a run's before it trains
        log.error("%s", error)
        for m in system.active():
            system.note(m, str(error), "ERROR")
        return {run_dir: None for run_dir in system.run_dirs}
    system.started = time.perf_counter()
    # What Lightning is told to resume from; MemberCheckpointIO stacks every member's checkpoint instead.
    ckpt_path = group[0][2] if system.resumed is not None else None
    try:
        fit(trainer, system, datamodule, ckpt_path)
    except MlptrainError as error:  # the population's settings (Lightning refusing them, say): every member's
        log.error("%s", error)
        for m in system.active():
            write_metrics(system.run_dirs[m], system.histories[m])
            write_summary(system.run_dirs[m], {**system._summary(m), "status": "failed", "error": str(error)})
            system.note(m, str(error), "ERROR")
        return {run_dir: None for run_dir in system.run_dirs}
    except (KeyboardInterrupt, SystemExit):  # a run's message, of the sweep's folder, in each member's log too
        kept = any(system.checkpoints[m].paths()["last"] for m in system.active())
        message = str(interrupted(sweep_dir, trainer.current_epoch, "kept" if kept else None, sweep=True))
        for m in system.active():
            write_summary(system.run_dirs[m], {**system._summary(m), "status": "interrupted"})
            system.note(m, message, "ERROR")
        log.error("%s", message)
        return {run_dir: None for run_dir in system.run_dirs}
    system._check_finite()
    global_steps = system.updates_done
    if system.best is not None:
        system.evaluated = system.best  # tested at each member's best val/acc, as a run tests its best.ckpt
    trainer.test(system, datamodule=datamodule, verbose=False)
    test_loss, test_acc = (values.tolist() for values in system.test_results)
    results: dict[Path, float | None] = {run_dir: None for run_dir in system.run_dirs}
    for m in system.active():
        run_dir, tested = system.run_dirs[m], system.checkpoints[m].best.best_model_path or None
        test_row = {"epoch": trainer.current_epoch, "step": system.best_updates[m]}
        write_metrics(run_dir, [*system.histories[m], {**test_row, "test/loss": test_loss[m], "test/acc": test_acc[m]}])
        summary = {**system._summary(m), "global_steps": global_steps}
        summary.update(status="completed", test_acc=test_acc[m], test_loss=test_loss[m], tested_checkpoint=tested)
        cfg = system.cfgs[m]
        if cfg.report.enabled and tested:
            from mlptrain.system import load_checkpoint

            member = load_checkpoint(tested)[0]
            config = _container(cfg)
            write_run_report(run_dir, summary, config, member, datamodule, _container(cfg.report))
            system.note(m, f"Report with pictures: {(run_dir / 'report.md').resolve()}")
        write_summary(run_dir, summary)
        system.note(m, f"Test accuracy {test_acc[m]:.4f}, test loss {test_loss[m]:.4f} (checkpoint {tested})")
        system.note(m, f"Run directory: {run_dir.resolve()}")
        results[run_dir] = summary["best_val_acc"]
    return results
