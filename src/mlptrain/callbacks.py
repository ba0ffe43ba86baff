"""The callbacks and plugin every run adds to Lightning's Trainer: what each checkpoint records, how it is written
(durably), and a checkpoint on SIGTERM."""

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mlptrain.rundir import library_versions, read_checkpoint, write_durably, write_metrics


class Checkpoints(NamedTuple):
    """A run's two checkpoints: best.ckpt, the best val/acc so far, and last.ckpt, written at every epoch's
    end (and where a SIGTERM stopped training). Two callbacks: since Lightning 2.6, save_last=True writes
    last.ckpt only at the epochs that also write a best checkpoint, so a resume would repeat epochs."""

    best: ModelCheckpoint
    last: ModelCheckpoint

    @classmethod
    def into(cls, dirpath: Path) -> "Checkpoints":
        # Both at the training epoch's end, after its validation: the checkpoint then holds the epoch's whole
        # row of the history (MLPSystem.history), which metrics.csv is written from.
        best = ModelCheckpoint(
            dirpath=dirpath,
            filename="best",
            monitor="val/acc",
            mode="max",
            save_top_k=1,
            auto_insert_metric_name=False,
            save_on_train_epoch_end=True,
        )
        # No monitor: its one kept checkpoint is the latest, written over each epoch.
        last = ModelCheckpoint(
            dirpath=dirpath, filename="last", save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True
        )
        return cls(best, last)

    def paths(self) -> dict[str, str | None]:
        return {"best": self.best.best_model_path or None, "last": self.last.best_model_path or None}


class RecordRun(Callback):
    """Stores the resolved config and library versions in every checkpoint, so each file describes its run,
    and the random number generators' states, so that dropout draws on after a resume as it would have."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["config"] = self.config
        checkpoint["library_versions"] = library_versions()
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states", {})
        if "torch" in states:
            torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.device_count() == len(states["cuda"]):
            torch.cuda.set_rng_state_all(states["cuda"])


class CheckpointOnStop(Callback):
    """Writes last.ckpt where a SIGTERM stopped training: a cluster's preemption or time limit, or `kill`.

    Lightning stops on SIGTERM only after the training step in progress has finished, so this is a
    clean point mid-epoch, and resume=auto continues from it with the results unchanged. Ctrl-C can
    land in the middle of a step and keeps the last epoch's checkpoint instead.
    """

    def __init__(self, last: ModelCheckpoint) -> None:
        self.last = last  # Checkpoints.last

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or not trainer.training:
            return
        if pl_module.diverged:
            return  # weights after a NaN are never checkpointed
        if pl_module.ended_epoch is not None:
            # Lightning stops between epochs: the epoch's end wrote last.ckpt at this very point, with the place
            # in the data of the epoch it ended (this moment's would name the next epoch, with its batches done).
            return
        path = Path(self.last.dirpath) / f"{self.last.filename}{self.last.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        self.last.best_model_path = str(path)


class WeightTrajectory:
    """A member's weights as training moves them, for landscape.png: at the start and about `per_epoch` times
    an epoch (after a training step, so every K updates at most on the fast path). MLPSystem keeps one per member
    (report.landscape) and calls the methods below with the member's weights (`point`). The points go into the
    member's checkpoints (under `state_key`, in `callbacks`, where a Lightning callback's state was kept), so a
    resumed run continues the same path."""

    state_key = "WeightTrajectory"

    def __init__(self, per_epoch: int = 10) -> None:
        self.per_epoch = per_epoch
        self.points: list[torch.Tensor] = []  # each (P,), the parameters in model.parameters() order, on the CPU
        self.updates: list[int] = []  # the update count at each point
        self.every = 1

    def start(self, updates_per_epoch: int, point: Callable[[], torch.Tensor], updates: int) -> None:
        self.every = max(1, int(updates_per_epoch) // self.per_epoch)
        if not self.points:
            self.keep(point(), updates)

    def stepped(self, point: Callable[[], torch.Tensor], updates: int) -> None:
        if updates - self.updates[-1] >= self.every:
            self.keep(point(), updates)

    def end(self, point: Callable[[], torch.Tensor], updates: int) -> None:
        if updates != self.updates[-1]:
            self.keep(point(), updates)

    def keep(self, point: torch.Tensor, updates: int) -> None:
        self.points.append(point)
        self.updates.append(updates)

    def path(self) -> torch.Tensor:
        """(T, P): the points kept, in order."""
        return torch.stack(self.points)

    def state_dict(self) -> dict[str, Any]:
        return {"points": self.path() if self.points else None, "updates": list(self.updates)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        points = state_dict.get("points")
        self.points = list(points) if points is not None else []
        self.updates = list(state_dict.get("updates", []))


class DurableCheckpointIO(CheckpointIO):
    """Lightning's extension point for checkpoint files: every checkpoint is written durably
    (rundir.write_durably), so a checkpoint is replaced only once its successor is committed, and read with
    read_checkpoint (no code runs). After each checkpoint the run's metrics.csv is rewritten from the history that
    checkpoint holds."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path, lambda file: torch.save(checkpoint, file))
        if "history" in checkpoint:
            write_metrics(self.run_dir, checkpoint["history"])

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path)

    def remove_checkpoint(self, path: Any) -> None:
        Path(path).unlink(missing_ok=True)


class Tracking(Callback):
    """logger=mlflow (mlptrain.tracking): whenever a checkpoint is saved, the rows of each run's history not yet in
    MLflow are logged (a run's: `pl_module.history`; a population's members': `histories(pl_module)`), and the
    MLflow run's id is kept in the checkpoint (its state; a member's, in its own checkpoint), for a resume to
    continue it."""

    def __init__(self, trackers: Any, histories: Callable[[L.LightningModule], Any] | None = None) -> None:
        self.trackers, self.histories = list(trackers), histories or (lambda module: [module.history])

    @property
    def state_key(self) -> str:
        from mlptrain.tracking import STATE_KEY

        return STATE_KEY

    def state_dict(self) -> dict[str, Any]:
        return self.trackers[0].state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # read before training starts (resumed_run_id), so that the run is continued before it trains

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        for tracker, history in zip(self.trackers, self.histories(pl_module)):
            tracker.log_rows(history)
