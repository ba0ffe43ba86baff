"""What a run's and each population member's checkpoints are kept by: its best.ckpt and last.ckpt named
(`Checkpoints`), a checkpoint where a SIGTERM stopped training, its path through weight space and its MLflow run.
How they are written: mlptrain.member_checkpoints."""

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class Checkpoints(NamedTuple):
    """A member's two checkpoints (a run's: its own): best.ckpt, the best val/acc so far, and last.ckpt, written
    at every epoch's end (and where a signal stopped training). Each its ModelCheckpoint, as Lightning keeps a
    checkpoint's name, score and state; MLPSystem marks the best and member_checkpoints.MemberCheckpointIO writes
    both, so they are not the Trainer's callbacks (`trigger` is)."""

    best: ModelCheckpoint
    last: ModelCheckpoint

    @classmethod
    def into(cls, dirpath: Path) -> "Checkpoints":
        # Their settings name their state in every checkpoint (ModelCheckpoint.state_key): kept as they were.
        best = ModelCheckpoint(
            dirpath=dirpath,
            filename="best",
            monitor="val/acc",
            mode="max",
            save_top_k=1,
            auto_insert_metric_name=False,
            save_on_train_epoch_end=True,
        )
        return cls(best, trigger(dirpath, "last"))  # no monitor: the latest, written over each epoch

    def paths(self) -> dict[str, str | None]:
        return {"best": self.best.best_model_path or None, "last": self.last.best_model_path or None}


def trigger(dirpath: Path, filename: str) -> ModelCheckpoint:
    """The Trainer's one ModelCheckpoint: it asks for a checkpoint at every training epoch's end, after its
    validation (the checkpoint then holds the epoch's whole row of each member's history, which metrics.csv is
    written from), and member_checkpoints.MemberCheckpointIO writes it as each member's. Since Lightning 2.6,
    save_last=True writes last.ckpt only at the epochs that also write a best checkpoint, so a resume would repeat
    epochs: hence every epoch's."""
    return ModelCheckpoint(
        dirpath=dirpath, filename=filename, save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True
    )


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
        trainer.save_checkpoint(path, weights_only=False)  # whole, to resume from (unset, Lightning logs a line)
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


class Tracking(Callback):
    """logger=mlflow (mlptrain.tracking): whenever a checkpoint is saved, the rows of each member's history (a
    run's: its one) not yet in MLflow are logged, and each member's MLflow run's id is kept in its checkpoint
    (member_checkpoints), for a resume to continue it."""

    def __init__(self, trackers: Any) -> None:
        self.trackers = list(trackers)

    @property
    def state_key(self) -> str:
        from mlptrain.tracking import STATE_KEY

        return STATE_KEY

    def state_dict(self) -> dict[str, Any]:
        return self.trackers[0].state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # read before training starts (resumed_run_id), so that the run is continued before it trains

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        for tracker, history in zip(self.trackers, pl_module.histories):
            tracker.log_rows(history)
