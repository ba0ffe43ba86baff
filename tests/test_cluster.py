"""Cluster features on this CPU: SIGTERM and resume, several processes (DDP over gloo), the submitit
launcher, SLURM's requeue signal, and the Optuna sweeper."""

import csv
import json
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
from tests.conftest import run_python
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


def epoch_rows(run_dir: str | Path) -> list[dict[str, str]]:
    """metrics.csv's per-epoch training and validation values, without the wall-clock ones."""
    rows = csv.DictReader((Path(run_dir) / "metrics.csv").open())
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
    assert epoch_rows(resumed.output_dir) == epoch_rows(
        straight.output_dir
    )  # epoch 0 kept from the first part, epoch 1 whole
    assert summary(resumed)["test_acc"] == summary(straight)["test_acc"]


def test_resume_auto_without_a_checkpoint_starts_afresh(make_cfg: MakeCfg) -> None:
    cfg = make_cfg("resume=auto", "report.enabled=false")
    train(cfg)
    assert summary(cfg)["status"] == "completed" and summary(cfg)["epochs"] == 1


# Float64 and no dropout: two processes averaging the gradients of their halves of each mini-batch make the
# one-process updates up to rounding, so the runs can be compared tightly.
DDP_RUN = [
    "trainer.accelerator=cpu",
    "trainer.precision=64-true",
    "trainer.max_epochs=2",
    "trainer.num_sanity_val_steps=0",
    "data.train_size=1000",
    "data.batch_size=20",
    "progress_bar=false",
    "report.enabled=false",
]


def test_two_gloo_processes_train_like_one_with_the_same_global_batch(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for run_dir, devices in ((one, "trainer=cpu"), (two, "trainer=ddp")):
        done = run_python("train.py", devices, *DDP_RUN, f"hydra.run.dir={run_dir}", timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["one", "two"]  # no run directory per process
    single, double = json.loads((one / "summary.json").read_text()), json.loads((two / "summary.json").read_text())
    assert (single["processes"], double["processes"]) == (1, 2)
    assert single["global_steps"] == double["global_steps"] == 100  # 2 epochs of 1000 images in batches of 20
    a, b = weights(one / "checkpoints" / "last.ckpt"), weights(two / "checkpoints" / "last.ckpt")
    assert all(torch.allclose(a[key], b[key], rtol=0, atol=1e-10) for key in a)
    # Validation and test are split between the processes and their counts summed: the same accuracy; the
    # losses agree to the float32 the metrics accumulate in.
    rows_one, rows_two = epoch_rows(one), epoch_rows(two)
    assert len(rows_one) == len(rows_two) == 4  # a training row and a validation row per epoch
    assert all(abs(float(x[k] or 0) - float(y[k] or 0)) < 1e-6 for x, y in zip(rows_one, rows_two) for k in x)
    assert single["test_acc"] == double["test_acc"] and abs(single["test_loss"] - double["test_loss"]) < 1e-6
