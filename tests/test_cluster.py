"""Cluster features on this CPU: SIGTERM and resume, several processes (DDP over gloo), the submitit
launcher, SLURM's requeue signal, and the Optuna sweeper."""

import csv
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from mlptrain.errors import RunInterrupted
from mlptrain.train import train
from tests.conftest import ROOT, compose_config, run_python
from tests.test_train import summary, weights

pytestmark = pytest.mark.slow  # subprocesses: see pyproject.toml's markers

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


def metrics_text(run_dir: str | Path) -> str:
    return (Path(run_dir) / "metrics.csv").read_text()


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


@pytest.mark.parametrize(
    ("steps_per_call", "accumulate", "updates"),
    [(1, 1, 120), (4, 1, 120), (1, 4, 30)],
    ids=["1", "4", "accumulate_grad_batches=4"],  # 4: stopped with 3 of an update's 4 mini-batches' gradients summed
)
def test_sigterm_mid_epoch_then_resume_auto_equals_an_uninterrupted_run(
    make_cfg: MakeCfg, steps_per_call: int, accumulate: int, updates: int
) -> None:
    setup = [*TWO_EPOCHS, f"steps_per_call={steps_per_call}", f"+trainer.accumulate_grad_batches={accumulate}"]
    straight = make_cfg(*setup, run="straight")
    train(straight)

    stopped = make_cfg(*setup, run="stopped")
    with pytest.raises(RunInterrupted, match="interrupted during epoch 1"):
        train(stopped, callbacks=[_SigtermAt(epoch=1, batch=6)])  # step 7 of 60 / 4 of 15: mid-epoch
    last = Path(stopped.output_dir) / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["MNISTDataModule"] == {"epoch": 1, "batches_done": 7 * steps_per_call}  # 7 steps trained
    assert summary(stopped)["status"] == "interrupted"
    # As a checkpoint written before system.MemberAccuracy holds it: torchmetrics' micro MulticlassAccuracy's
    # counts, and the training loss's sums as scalars (before system.MemberMean's member axis)
    state = saved["state_dict"]
    state.update({key: state[key].view(()) for key in ("train_loss.total", "train_loss.examples")})
    correct, examples = state.pop("train_acc.correct"), state.pop("train_acc.examples")
    wrong = examples - correct
    state.update({f"train_acc.{key}": value.view(1) for key, value in (("tp", correct), ("fp", wrong), ("fn", wrong))})
    state["train_acc.tn"] = (10 * examples - correct - 2 * wrong).view(1)
    torch.save(saved, last)

    resumed = make_cfg(*setup, "resume=auto", run="stopped")  # the same directory, as a requeued job has
    train(resumed)
    assert summary(resumed)["status"] == "completed"
    assert summary(resumed)["global_steps"] == summary(straight)["global_steps"] == updates
    a, b = weights(summary(straight)["checkpoints"]["last"]), weights(summary(resumed)["checkpoints"]["last"])
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    # metrics.csv whole, the test row and the learning rates included (it has no time columns): no row twice
    assert metrics_text(resumed.output_dir) == metrics_text(straight.output_dir)
    assert summary(resumed)["test_acc"] == summary(straight)["test_acc"]


def test_resume_auto_without_a_checkpoint_starts_afresh(make_cfg: MakeCfg) -> None:
    cfg = make_cfg("resume=auto", "report.enabled=false")
    train(cfg)
    assert summary(cfg)["status"] == "completed" and summary(cfg)["epochs"] == 1


# Float64 and no dropout: two processes averaging the gradients of their halves of each mini-batch make the
# one-process updates up to rounding, so the runs can be compared tightly. 60 validation images: the best epoch
# (1) is not the last (3, no better), so the test of each process must be at the best checkpoint's weights.
DDP_RUN = [
    "trainer.accelerator=cpu",
    "trainer.precision=64-true",
    "trainer.max_epochs=4",
    "trainer.num_sanity_val_steps=0",
    "data.val_size=60",
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
    assert single["global_steps"] == double["global_steps"] == 200  # 4 epochs of 1000 images in batches of 20
    a, b = weights(one / "checkpoints" / "last.ckpt"), weights(two / "checkpoints" / "last.ckpt")
    assert all(torch.allclose(a[key], b[key], rtol=0, atol=1e-10) for key in a)
    # Validation and test are split between the processes and their counts summed: the same accuracy; the
    # losses agree to the float32 the metrics accumulate in.
    rows_one, rows_two = epoch_rows(one), epoch_rows(two)
    assert len(rows_one) == len(rows_two) == 4  # a row per epoch: its training and its validation
    assert all(abs(float(x[k] or 0) - float(y[k] or 0)) < 1e-6 for x, y in zip(rows_one, rows_two) for k in x)
    assert single["test_acc"] == double["test_acc"] and abs(single["test_loss"] - double["test_loss"]) < 1e-6
    # Both processes tested best.ckpt's weights, which are not the last epoch's: train=false finds the same there
    best = two / "checkpoints" / "best.ckpt"
    assert Path(double["tested_checkpoint"]) == best.resolve()
    assert torch.load(best, weights_only=True)["epoch"] < double["epochs"] - 1
    evaluated = compose_config(["trainer=cpu", *DDP_RUN, "train=false", f"ckpt_path={best}"], tmp_path / "evaluated")
    train(evaluated)
    assert summary(evaluated)["test_acc"] == double["test_acc"]


class _KillAfter(Callback):
    """Sends SIGUSR1 after a given step, then dies at the next one, as a SLURM job at its time limit."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.at = (epoch, batch)
        self.signalled = False

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.signalled:
            raise RuntimeError("the job is killed")  # what SLURM does once the requeue is asked for
        if (trainer.current_epoch, args[-1]) == self.at:
            self.signalled = True
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.parametrize("command", [["resume=auto"], []], ids=["resume=auto", "the same command"])
def test_slurm_requeue_signal_checkpoints_requeues_and_resumes(
    make_cfg: MakeCfg,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    command: list[str],
) -> None:
    """SLURM's time-limit signal (SIGUSR1): Lightning's requeue, with last.ckpt written at the end of the step in
    progress, as a SIGTERM writes it. The requeued job resumes from it, with resume=auto or without (SLURM's
    restart count says it is the same job started again), and ends as a run that went through."""
    setup = [*TWO_EPOCHS, "steps_per_call=1"]  # Lightning's loop, where the kill below lands at mini-batch 7
    straight = make_cfg(*setup, run="straight")
    train(straight)

    bin_dir = tmp_path / "bin"  # no SLURM here: a stand-in scontrol records what Lightning asks of it
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.txt"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0"}
    for key, value in {**slurm, "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NTASKS_PER_NODE": "1"}.items():
        monkeypatch.setenv(key, value)

    job = make_cfg(*setup, run="job")
    with pytest.raises(RuntimeError, match="killed"):
        train(job, callbacks=[_KillAfter(epoch=1, batch=6)])
    assert (tmp_path / "scontrol.txt").read_text().split() == ["requeue", "4242"]
    last = Path(job.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["MNISTDataModule"] == {"epoch": 1, "batches_done": 7}
    assert not list(Path(job.output_dir).glob("hpc_ckpt_*"))  # Lightning's own file: none to auto-restore

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    requeued = make_cfg(*setup, *command, run="job")  # the requeued job: same command, same directory
    with caplog.at_level(logging.INFO, logger="mlptrain"):
        train(requeued)
    assert f"resume=auto: resuming from {last.resolve()} (epoch 1, " in caplog.text
    a, b = weights(summary(straight)["checkpoints"]["last"]), weights(summary(requeued)["checkpoints"]["last"])
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert metrics_text(requeued.output_dir) == metrics_text(straight.output_dir)


TINY = ["trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=20", "report.enabled=false"]


def test_submitit_local_sweep_gives_each_job_its_directory(tmp_path: Path) -> None:
    # Started from tmp_path, so the default outputs/ tree is made there, as it would be in a user's project.
    sweep = run_python(
        str(ROOT / "train.py"), "-m", "hydra/launcher=submitit_local", "model.activation=relu,tanh", *TINY, cwd=tmp_path
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    jobs = sorted(path for path in sweep_dir.iterdir() if path.name.isdigit())
    assert [job.name for job in jobs] == ["0", "1"]
    for job, activation in zip(jobs, ("relu", "tanh")):
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"
        assert f"activation: {activation}" in (job / "config.yaml").read_text()
    assert list((sweep_dir / ".submitit").iterdir())  # submitit ran the jobs: its pickles and logs are there


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "train.py"), *TINY, "trainer.limit_train_batches=1"]
    runs = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)
    ]
    assert all(run.wait(timeout=300) == 0 for run in runs)
    run_dirs = list((tmp_path / "outputs").glob("*/*"))
    summaries = [json.loads((run_dir / "summary.json").read_text()) for run_dir in run_dirs]
    assert len(run_dirs) == 2 and [s["status"] for s in summaries] == ["completed", "completed"]
    assert {s["run_dir"] for s in summaries} == {str(run_dir.resolve()) for run_dir in run_dirs}


def test_several_processes_per_job_in_a_local_sweep_are_refused(tmp_path: Path) -> None:
    sweep = run_python("train.py", "-m", "trainer=ddp", *TINY, f"hydra.sweep.dir={tmp_path}", timeout=300)
    assert "trainer.devices=2 inside a -m sweep" in sweep.stderr + sweep.stdout
    assert not (tmp_path / "0" / "summary.json").exists()


def test_optuna_search_maximises_val_acc_and_survives_a_failed_trial(tmp_path: Path) -> None:
    # lr 1e5 makes the loss NaN: that trial fails, is recorded as failed, and the search goes on.
    search = run_python(
        "train.py", "hparams_search=optuna", "hydra.sweeper.n_trials=4", "optimizer=sgd",
        "optimizer.lr=choice(0.05,100000.0)", *TINY, f"hydra.sweep.dir={tmp_path}", timeout=300,
    )  # fmt: skip
    assert search.returncode == 0, search.stderr[-3000:]
    summaries = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("*/summary.json"))]
    assert len(summaries) == 4
    statuses = {summary["status"] for summary in summaries}
    assert statuses == {"completed", "failed"}
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    best = max(summary["best_val_acc"] for summary in summaries if summary["status"] == "completed")
    assert results["best_value"] == pytest.approx(best)
    assert results["best_params"]["optimizer.lr"] == 0.05


def test_sbatch_example_runs_under_srun_and_resumes_in_its_job_directory(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # no SLURM here: srun runs the task itself, with the variables SLURM would set
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_dir / "srun").chmod(0o755)
    job_id = f"{os.getpid()}{len(str(tmp_path))}"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": job_id,
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_JOB_NAME": "mlptrain",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODELIST": "localhost",
        **{key: "0" for key in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID")},
    }
    run_dir = ROOT / "outputs" / "slurm" / job_id
    command = ["bash", str(ROOT / "scripts" / "slurm" / "train.sbatch"), *TINY]
    try:
        first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
        requeued = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)  # same job id
        assert requeued.returncode == 0, requeued.stderr[-3000:]
        assert f"resume=auto: the run in {run_dir} is complete" in requeued.stdout  # a finished job's requeue
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def readme_cluster_commands() -> list[list[str]]:
    section = (ROOT / "README.md").read_text().split("## Running on a cluster")[1].split("\n## ")[0]
    block = re.search(r"```text\n(.*?)```", section, flags=re.S).group(1)
    return [shlex.split(line, comments=True)[2:] for line in block.splitlines() if line.startswith("python train.py")]


@pytest.mark.parametrize("args", readme_cluster_commands(), ids=" ".join)
def test_readme_cluster_commands_compose(args: list[str], tmp_path: Path) -> None:
    # Each sweep's first point; the launcher's settings resolved as submitit would receive them.
    overrides = [re.sub(r"=(range\()?([^,\[]+),.*", r"=\2", arg) for arg in args if arg != "-m"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    if "hydra/launcher=slurm" in args:
        assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == cfg.trainer.devices == 4
        assert launcher["additional_parameters"] == {"signal": "USR1@120", "requeue": True}
        assert launcher["max_num_timeout"] == 0
    if "hydra/launcher=population_slurm" in args:
        assert launcher["max_members"] == 250 and launcher["submit"]["tasks_per_node"] == 1
        assert launcher["submit"]["additional_parameters"] == {"signal": "USR1@120", "requeue": True}
    if "hparams_search=optuna" in args:
        assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper.direction == "maximize"
