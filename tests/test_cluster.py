"""Cluster features on this CPU: SIGTERM and resume, several processes (DDP over gloo), the submitit
launcher, SLURM's requeue signal, and the Optuna sweeper."""

import csv
import os
import signal
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from mlptrain.errors import RunInterrupted
from mlptrain.train import train
from tests.test_train import summary, weights

MakeCfg = Callable[..., DictConfig]
# Two epochs of 60 mini-batches of 10 images, with dropout, so that a resume must also restore where
# the random draws were.
TWO_EPOCHS = [
    "data.train_size=600",
    "data.batch_size=10",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=null",
    "model.dropout=0.2",
    "report.enabled=false",
]


class _SigtermAt(Callback):
    """Sends this process a real SIGTERM after a given training step, as a cluster's scheduler would."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if (trainer.current_epoch, args[-1]) == (self.epoch, self.batch):
            os.kill(os.getpid(), signal.SIGTERM)


def epoch_rows(cfg: DictConfig) -> list[dict[str, str]]:
    """metrics.csv's per-epoch training and validation values, without the wall-clock ones."""
    rows = csv.DictReader((Path(cfg.output_dir) / "metrics.csv").open())
    keep = ("epoch", "train/loss", "train/acc", "val/loss", "val/acc")
    return [{key: row[key] for key in keep} for row in rows if row.get("train/loss") or row.get("val/loss")]


@pytest.mark.parametrize("steps_per_call", [1, 4])
def test_sigterm_mid_epoch_then_resume_auto_equals_an_uninterrupted_run(make_cfg: MakeCfg, steps_per_call: int) -> None:
    setup = [*TWO_EPOCHS, f"steps_per_call={steps_per_call}"]
    straight = make_cfg(*setup, run="straight")
    train(straight)

    stopped = make_cfg(*setup, run="stopped")
    with pytest.raises(RunInterrupted, match="interrupted during epoch 1"):
        train(stopped, callbacks=[_SigtermAt(epoch=1, batch=6)])  # step 7 of 60 / 4 of 15: mid-epoch
    last = Path(stopped.output_dir) / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["MNISTDataModule"] == {"epoch": 1, "steps_done": 7}
    assert summary(stopped)["status"] == "interrupted"

    resumed = make_cfg(*setup, "resume=auto", run="stopped")  # the same directory, as a requeued job has
    train(resumed)
    assert summary(resumed)["status"] == "completed"
    assert summary(resumed)["global_steps"] == summary(straight)["global_steps"] == 120
    a, b = weights(summary(straight)["checkpoints"]["last"]), weights(summary(resumed)["checkpoints"]["last"])
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert epoch_rows(resumed) == epoch_rows(straight)  # epoch 0 kept from the first part, epoch 1 whole
    assert summary(resumed)["test_acc"] == summary(straight)["test_acc"]


def test_resume_auto_without_a_checkpoint_starts_afresh(make_cfg: MakeCfg) -> None:
    cfg = make_cfg("resume=auto", "report.enabled=false")
    train(cfg)
    assert summary(cfg)["status"] == "completed" and summary(cfg)["epochs"] == 1
