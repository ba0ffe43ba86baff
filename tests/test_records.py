"""What a run writes around its weights: metrics.csv from the history its checkpoints hold, one process per run
directory, resume=auto past damaged checkpoints and finished runs, checkpoints that cannot run code, and
Lightning's debugging flags. Slow tier: tests/test_sigkill.py (SIGKILLs), tests/test_faults.py (signals) and
tests/test_slurm.py."""

import csv
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import DictConfig

from mlptrain.cli import main
from mlptrain.errors import CheckpointError, ConfigError, RunDirError
from mlptrain.rundir import LOCK_FILE, RunLock, read_checkpoint
from mlptrain.system import load_checkpoint
from mlptrain.train import train
from tests.conftest import logged_errors, run_in_process
from tests.test_train import summary, weights

MakeCfg = Callable[..., DictConfig]
TWO_EPOCHS = ["trainer.max_epochs=2", "trainer.limit_train_batches=10", "data.train_size=2000"]


def rows(run_dir: str | Path) -> list[dict[str, str]]:
    return list(csv.DictReader((Path(run_dir) / "metrics.csv").open()))


def test_each_epoch_line_gives_that_epochs_values_only(make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture) -> None:
    """The log's line an epoch is its row of the history: an epoch without a validation (check_val_every_n_epoch)
    shows none, not the last one's (Lightning's callback_metrics keep it)."""
    cfg = make_cfg("trainer.max_epochs=3", "+trainer.check_val_every_n_epoch=2", *TWO_EPOCHS[1:])
    with caplog.at_level(logging.INFO, logger="mlptrain"):
        train(cfg)
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("epoch ")]
    assert [("val/acc" in line, line.endswith(" s training)")) for line in lines] == [
        (False, True), (True, True), (False, True)
    ]  # fmt: skip
    table = rows(cfg.output_dir)
    assert (
        f"val/acc {float(table[1]['val/acc']):.4f}" in lines[1]
        and f"train/loss {float(table[2]['train/loss']):.4f}" in lines[2]
    )


def test_metrics_csv_has_a_row_an_epoch_and_the_test_from_the_checkpoints_history(make_cfg: MakeCfg) -> None:
    cfg = make_cfg(*TWO_EPOCHS, "log_grad_norms=true")
    train(cfg)
    table = rows(cfg.output_dir)
    assert [row["epoch"] for row in table] == ["0", "1", "2"]  # two epochs, then the test (after epoch 2's count)
    assert all(row["train/loss"] and row["val/acc"] and row["lr-AdamW"] for row in table[:2])
    assert table[-1]["test/acc"] and not table[-1]["train/loss"]
    assert float(table[-1]["test/acc"]) == summary(cfg)["test_acc"]
    assert list(table[0])[:6] == ["epoch", "step", "train/loss", "train/acc", "val/loss", "val/acc"]
    assert any(column.startswith("grad_norm/") for column in table[0])
    last = read_checkpoint(summary(cfg)["checkpoints"]["last"])
    assert [{key: str(value) for key, value in row.items()} for row in last["history"]] == [
        {key: value for key, value in row.items() if value} for row in table[:2]
    ]  # the file is the history the checkpoint restores, and the test row
    assert not (Path(cfg.output_dir) / "hparams.yaml").exists()  # no CSVLogger: config.yaml is the record


def test_resume_auto_on_a_finished_run_says_so_and_writes_nothing(
    make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_cfg(*TWO_EPOCHS)
    first = train(cfg)
    run = Path(cfg.output_dir)
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    with caplog.at_level(logging.INFO, logger="mlptrain"):
        again = train(make_cfg(*TWO_EPOCHS, "resume=auto"))  # the same run, and the same command with resume=auto
    assert again == first
    assert f"resume=auto: the run in {run.resolve()} is complete" in caplog.text
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before
    longer = make_cfg("trainer.max_epochs=3", *TWO_EPOCHS[1:], "resume=auto")  # another run: it goes on
    train(longer)
    assert [row["epoch"] for row in rows(run)] == ["0", "1", "2", "3"] and summary(longer)["epochs"] == 3


def _hold_in_another_process(run_dir: Path) -> subprocess.Popen:
    """A process that holds run_dir's lock until its standard input closes."""
    code = (
        "import sys; from pathlib import Path; from mlptrain.rundir import RunLock\n"
        f"lock = RunLock(Path({str(run_dir)!r})); lock.acquire(); print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_process_on_a_held_run_directory_is_refused_and_a_dead_holders_lock_taken_over(
    make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_cfg(*TWO_EPOCHS)
    run = Path(cfg.output_dir)
    run.mkdir(parents=True)
    holder = _hold_in_another_process(run)
    try:
        with pytest.raises(ConfigError, match=rf"is in use by host \S+ pid {holder.pid} .* did not start"):
            train(cfg)
        assert sorted(path.name for path in run.iterdir()) == [LOCK_FILE]  # nothing written, nothing lost
    finally:
        holder.kill()  # dies holding it: the kernel drops the lock, the file still names it
        holder.wait()
    assert f"pid {holder.pid}" in (run / LOCK_FILE).read_text()
    with caplog.at_level(logging.INFO, logger="mlptrain"):
        train(cfg)
    assert f"took over the lock of host {os.uname().nodename} pid {holder.pid}" in caplog.text
    assert summary(cfg)["status"] == "completed" and (run / LOCK_FILE).read_text() == ""  # released


def test_the_lock_is_the_kernels_and_one_holder_at_a_time(tmp_path: Path) -> None:
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    first.acquire()
    with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
        second.acquire()
    first.release()
    second.acquire()  # released: free again, with no log of a takeover
    second.release()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_resume_auto_sets_a_damaged_checkpoint_aside_and_resumes_from_one_that_loads(
    make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture
) -> None:
    constant = [*TWO_EPOCHS[1:], "scheduler=none"]  # 2 epochs, then a third: as 3 that ran through
    straight = make_cfg("trainer.max_epochs=3", *constant, run="straight")
    train(straight)
    cfg = make_cfg("trainer.max_epochs=2", *constant, run="cut")
    train(cfg)
    folder = Path(cfg.output_dir) / "checkpoints"
    _truncate(folder / "last.ckpt")  # as a kill or a full disk leaves a file written in place
    with caplog.at_level(logging.INFO, logger="mlptrain"):
        train(make_cfg("trainer.max_epochs=3", *constant, "resume=auto", run="cut"))
    assert f"{folder / 'last.ckpt'} does not load (RuntimeError: PytorchStreamReader failed" in caplog.text
    assert f"so it is skipped and kept as {folder / 'last.ckpt.damaged'}" in caplog.text
    assert f"resume=auto: resuming from {(folder / 'best.ckpt').resolve()}" in caplog.text
    assert (folder / "last.ckpt.damaged").is_file()
    a, b = weights(summary(straight)["checkpoints"]["last"]), weights(folder / "last.ckpt")
    assert all(torch.equal(a[key], b[key]) for key in a)  # best was epoch 1's end: epoch 2 trained again
    assert rows(cfg.output_dir) == rows(straight.output_dir)


def test_resume_auto_with_no_checkpoint_that_loads_is_one_paragraph(
    make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_cfg(*TWO_EPOCHS)
    train(cfg)
    folder = Path(cfg.output_dir) / "checkpoints"
    for name in ("last.ckpt", "best.ckpt"):
        _truncate(folder / name)
    (Path(cfg.output_dir) / "summary.json").unlink()  # not finished, as after a kill during the test
    with pytest.raises(SystemExit) as stop:
        main(make_cfg(*TWO_EPOCHS, "resume=auto"))  # the command line's body: one paragraph, exit status 1
    assert stop.value.code == 1
    (message,) = logged_errors(caplog)
    assert "found checkpoints in" in message and "but none of them loads" in message
    assert sorted(path.name for path in folder.iterdir()) == ["best.ckpt.damaged", "last.ckpt.damaged"]


class _Payload:
    """A pickle that runs a command when it is loaded without weights_only: what a crafted checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def crafted(make_cfg: MakeCfg, tmp_path: Path) -> tuple[Path, Path]:
    """A real checkpoint with a payload added; the file its command would create."""
    cfg = make_cfg(*TWO_EPOCHS, "report.landscape=pca", run="source")
    train(cfg)
    checkpoint = torch.load(summary(cfg)["checkpoints"]["last"], weights_only=True)
    marker = tmp_path / "payload-ran"
    checkpoint["hyper_parameters"]["note"] = _Payload(marker)
    path = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, path)
    return path, marker


@pytest.mark.parametrize(
    ("script", "arguments"),
    [
        ("train.py", ["train=false", "ckpt_path={ckpt}"]),
        ("train.py", ["train=false", "ckpt_path={ckpt}", "report.landscape=pca"]),  # the landscape redraw
        ("train.py", ["ckpt_path={ckpt}", *TWO_EPOCHS]),  # resuming from it
        ("train.py", ["resume=auto", *TWO_EPOCHS]),  # as the run's own last.ckpt
        ("scripts/predict.py", ["ckpt_path={ckpt}", "index=0"]),
    ],
)
def test_a_crafted_checkpoint_runs_no_code_through_any_command(
    script: str, arguments: list[str], crafted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, marker = crafted
    arguments = [argument.format(ckpt=ckpt) for argument in arguments]
    if script == "train.py":
        run = tmp_path / "target"
        if "resume=auto" in arguments:
            (run / "checkpoints").mkdir(parents=True)
            (run / "checkpoints" / "last.ckpt").write_bytes(ckpt.read_bytes())
        arguments += [f"hydra.run.dir={run}", "report.enabled=false"]
    status, output = run_in_process(script, arguments, capsys)
    assert not marker.exists()
    assert status == 1 and "Traceback" not in output, output
    assert "could run code of the file's choosing, so it was not loaded" in output


def test_read_checkpoint_refuses_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, path)  # loads, but holds no model
    with pytest.raises(CheckpointError, match="is not an mlptrain checkpoint"):
        read_checkpoint(path)


DEBUG_FLAGS = [
    "+trainer.fast_dev_run=true",
    "+trainer.overfit_batches=2",
    "trainer.limit_val_batches=3",
    "+trainer.profiler=simple",
    "+trainer.detect_anomaly=true",
    "+trainer.max_time=00:00:10:00",
    "+trainer.val_check_interval=5",
]


def test_a_debugging_flag_lightning_refuses_is_one_paragraph(
    make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        main(make_cfg(*TWO_EPOCHS, "+trainer.val_check_interval=100"))  # more than the epoch's 10 batches
    (message,) = logged_errors(caplog)
    assert message.startswith("Lightning refused the trainer settings: `val_check_interval` (100) must be less")
    assert "trainer.*" in message


@pytest.mark.parametrize("flag", DEBUG_FLAGS)
def test_lightnings_debugging_flags_run(flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [flag, *TWO_EPOCHS, f"hydra.run.dir={tmp_path}", "report.enabled=false", "trainer.accelerator=cpu"]
    status, output = run_in_process("train.py", args, capsys)
    assert status == 0 and "Traceback" not in output, output
    result = json.loads((tmp_path / "summary.json").read_text())
    assert result["status"] == "completed"
    assert rows(tmp_path)[-1]["test/acc"] == str(result["test_acc"])


def test_a_checkpoint_between_two_epochs_is_at_the_next_ones_start(make_cfg: MakeCfg) -> None:
    """SLURM's signal can come after Lightning has counted an epoch as done and before the next one starts: the
    place in the data then is the next epoch's start, not the finished epoch's count of batches in it."""
    cfg = make_cfg(*TWO_EPOCHS)
    train(cfg)
    system = load_checkpoint(summary(cfg)["checkpoints"]["last"])[0]
    system.batches_done_in_epoch, system.ended_epoch = 10, 1
    assert (system.batches_done_in(1), system.batches_done_in(2)) == (10, 0)
    system.ended_epoch = None  # in epoch 2, 10 batches in
    assert system.batches_done_in(2) == 10


def _files(run: Path) -> dict[str, bytes]:
    """Every file under a run directory, by its path there, with its bytes (train.log aside: the log goes on)."""
    return {
        str(path.relative_to(run)): path.read_bytes()
        for path in sorted(run.rglob("*"))
        if path.is_file() and path.name != "train.log"
    }


def test_a_run_directory_holds_one_run(make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture) -> None:
    """A second run pointed at a finished run's directory, or resume=auto with another config, is refused with
    one paragraph and the directory left as it was; resume=discard starts afresh there; trainer.max_epochs may
    change on a resume, a one-cycle schedule's not past its plan."""
    cfg = make_cfg(*TWO_EPOCHS)
    train(cfg)
    run = Path(cfg.output_dir)
    before = _files(run)
    with pytest.raises(RunDirError, match=r"already holds a run \(status completed, seed 42, .*add resume=discard"):
        train(make_cfg(*TWO_EPOCHS, "seed=7"))
    with pytest.raises(RunDirError, match=r"another config \(optimizer.lr: 0.001 there, 0.1 now\)"):
        train(make_cfg(*TWO_EPOCHS, "optimizer.lr=0.1", "resume=auto"))
    with pytest.raises(RunDirError, match=r"model.hidden: \[128, 64\] there, \[32\] now; seed: 42 there, 7 now"):
        train(make_cfg(*TWO_EPOCHS, "seed=7", "model.hidden=[32]", "resume=auto"))
    assert _files(run) == before
    with caplog.at_level(logging.INFO, logger="mlptrain"):
        train(make_cfg("trainer.max_epochs=3", *TWO_EPOCHS[1:], "resume=auto"))  # a longer run: it goes on
    assert "The cosine schedule keeps the plan in its checkpoint" in caplog.text
    assert [row["epoch"] for row in rows(run)] == ["0", "1", "2", "3"]
    fresh = make_cfg(*TWO_EPOCHS, "seed=7", "resume=discard")
    train(fresh)
    assert summary(fresh)["seed"] == 7 and summary(fresh)["epochs"] == 2
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert read_checkpoint(run / "checkpoints" / "best.ckpt")["config"]["seed"] == 7
    onecycle = make_cfg(*TWO_EPOCHS, "scheduler=onecycle", run="onecycle")
    train(onecycle)
    with pytest.raises(RunDirError, match=r"past the 2 epochs its one-cycle schedule was planned for"):
        train(make_cfg("trainer.max_epochs=3", *TWO_EPOCHS[1:], "scheduler=onecycle", "resume=auto", run="onecycle"))


def test_train_false_records_the_network_it_evaluates(make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture) -> None:
    trained = make_cfg("model.hidden=[32]", run="trained")
    train(trained)
    evaluated = make_cfg("train=false", f"ckpt_path={summary(trained)['checkpoints']['best']}", "model.hidden=[64]")
    with caplog.at_level(logging.INFO, logger="mlptrain"):
        train(evaluated)
    recorded = yaml.safe_load((Path(evaluated.output_dir) / "config.yaml").read_text())
    assert recorded["model"]["hidden"] == [32] and "which differ in model.hidden" in caplog.text
