"""Faults a cluster deals out, for real: SIGTERM, SIGINT and SIGUSR1 at every phase, two processes on one run
directory, and a run directory that cannot be written. After each, the same command with resume=auto ends with
the weights, metrics.csv and results of a run that went through. SIGKILLs: tests/test_sigkill.py (a file of its
own, so that pytest-xdist's --dist loadfile gives it a worker of its own: it is the longest test)."""

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mlptrain.errors import RunDirError
from mlptrain.rundir import LOCK_FILE
from mlptrain.train import train
from tests.conftest import ROOT, compose_config
from tests.test_train import weights

pytestmark = pytest.mark.slow  # subprocesses

# 3 epochs of 300 training steps (2 mini-batches each, about a second), with dropout: a resume must restore
# the place in the epoch, the random draws and the records.
RUN = [
    "trainer.accelerator=cpu",
    "data.train_size=6000",
    "data.batch_size=10",
    "steps_per_call=2",
    "trainer.max_epochs=3",
    "model.dropout=0.2",
    "model.hidden=[32]",
    "report.enabled=false",
    "progress_bar=false",
]
RESULTS = ("status", "test_acc", "test_loss", "best_val_acc", "epochs", "global_steps", "tested_checkpoint")


def start(run: Path, *extra: str, script: str = "train.py") -> subprocess.Popen:
    """The run's command (RUN, less the keys `extra` sets) in a process, its output in one pipe."""
    keys = {argument.split("=")[0] for argument in extra}
    command = [sys.executable, script, *extra, *(a for a in RUN if a.split("=")[0] not in keys), f"hydra.run.dir={run}"]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def same_as(run: Path, straight: Path) -> None:
    a, b = weights(run / "checkpoints" / "last.ckpt"), weights(straight / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert (run / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()
    ours, theirs = (results(folder) for folder in (run, straight))
    assert ours == theirs and ours["status"] == "completed"


def results(run: Path) -> dict:
    """summary.json's results, the tested checkpoint by its name (each run has its own directory)."""
    summary = json.loads((run / "summary.json").read_text())
    return {key: Path(summary[key]).name if key == "tested_checkpoint" else summary[key] for key in RESULTS}


def went_through(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A run that went through, and its wall time as a process."""
    run = tmp_path_factory.mktemp("straight") / "run"
    began = time.monotonic()
    status, output = finish(start(run))
    assert status == 0, output[-3000:]
    return run, time.monotonic() - began


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    return went_through(tmp_path_factory)


# A line each phase logs as it begins or ends, how long after it the signal is sent, whether the run has finished
# training by then, and what the run needs for the phase to be there.
PHASES = {
    "before fit": ("Training path:", 0.0, False, ()),
    "in validation": ("Total FLOPs", 0.0, False, ()),  # the summary, then the sanity check's validation
    "in an epoch": ("epoch 0 ", 0.0, False, ()),
    "in the test": ("Testing the weights of", 0.0, True, ()),
    "in the report": ("Testing the weights of", 1.0, True, ("report.enabled=true",)),
    "after the summary": ("Test accuracy", 0.0, True, ()),
}


def test_lightnings_sigterm_lines_are_not_written_from_inside_its_signal_handler() -> None:
    """Lightning logs "Received SIGTERM" from inside its SIGTERM handler, which can run in the middle of a log line's
    write into train.log; the second write into that buffered file is then refused as reentrant, with a traceback on
    the console (seen once in CI, in the test below). quiet_console drops the line before any handler writes it."""
    import io
    import logging
    from types import SimpleNamespace

    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    from mlptrain.cli import quiet_console

    quiet_console()
    logger = logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector")
    written, level = io.StringIO(), logger.level
    handler = logging.StreamHandler(written)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        connector = _SignalConnector(SimpleNamespace(local_rank=0, strategy=SimpleNamespace(launcher=None)))
        connector._sigterm_notifier_fn(signal.SIGTERM, None)
        connector._sigterm_handler_fn(signal.SIGTERM, None)
        logger.info("another line of the module")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert written.getvalue() == "another line of the module\n"


def test_a_sigterm_while_the_process_exits_leaves_its_exit_status_alone() -> None:
    """CPython puts the default handlers back while it finalizes, after the exit handlers: a SIGTERM then, the
    run's files all written, would end the process with -15 (seen: the test below, SIGTERM "in the report", where
    the signal came as the process ended). An object whose finalizer takes a second holds the process there."""
    code = (
        "import time\n"
        "from mlptrain import signals\n"
        "signals.hold()\n"
        "class Slow:\n"
        "    def __del__(self):\n"
        "        print('finalizing', flush=True)\n"
        "        time.sleep(1)\n"
        "keep = Slow()\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "finalizing\n"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0


@pytest.mark.parametrize(
    ("signum", "phase"),
    [
        *[(signal.SIGTERM, phase) for phase in PHASES],
        (signal.SIGINT, "before fit"),
        (signal.SIGINT, "in the report"),
        (signal.SIGUSR1, "before fit"),
        (signal.SIGUSR1, "in the test"),
        (signal.SIGUSR1, "after the summary"),
    ],
    ids=lambda value: value if isinstance(value, str) else value.name,
)
def test_a_signal_at_any_phase_ends_without_a_traceback_and_the_run_completes(
    phase: str, signum: signal.Signals, straight: tuple[Path, float], tmp_path: Path
) -> None:
    marker, delay, trained, needs = PHASES[phase]
    run = tmp_path / "run"
    process = start(run, *needs)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if marker in line:
            time.sleep(delay)
            process.send_signal(signum)
            break
    status, rest = finish(process)
    output = "".join(lines) + rest
    assert marker in lines[-1], f"the run never logged {marker!r}, so no signal was sent: {output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    finished = json.loads((run / "summary.json").read_text())["status"] if (run / "summary.json").exists() else None
    if finished == "completed":  # it had written everything, or nothing was left but to write it
        assert status == 0, output[-3000:]
    else:  # stopped, with the one paragraph that gives the command to go on; after training, only Lightning's
        assert status == 1 and "resume=auto" in output, output[-3000:]  # SIGTERM handling in the test stops it
        assert not trained or signum == signal.SIGTERM, output[-3000:]
        status, output = finish(start(run, "resume=auto"))
        assert status == 0, output[-3000:]
    same_as(run, straight[0])


def test_an_unwritable_run_directory_is_one_paragraph(tmp_path: Path) -> None:
    cfg = compose_config(RUN, Path("/sys/kernel"))  # a directory even root cannot write into
    with pytest.raises(RunDirError, match=r"cannot write into its directory /sys/kernel \(Permission denied"):
        train(cfg)
    with pytest.raises(RunDirError, match=r"cannot write into its directory /sys/kernel/run \("):
        train(compose_config(RUN, Path("/sys/kernel/run")))  # nor make one there


def test_the_same_command_started_twice_on_one_run_directory_trains_once(
    straight: tuple[Path, float], tmp_path: Path
) -> None:
    """A requeued job whose previous instance has not exited yet, or a second terminal: the second process is
    refused, naming the first, and the first writes what a run alone writes."""
    run = tmp_path / "run"
    first = start(run, "resume=auto")
    while not ((run / LOCK_FILE).exists() and (run / LOCK_FILE).read_text()):
        assert first.poll() is None
        time.sleep(0.05)
    # Paused while the second starts (its imports take seconds): otherwise the first may finish before the
    # second looks, as it did with other tests running beside this one.
    first.send_signal(signal.SIGSTOP)
    try:
        status, output = finish(start(run, "resume=auto"))
    finally:
        first.send_signal(signal.SIGCONT)
    assert status == 1 and "Traceback" not in output, output[-3000:]
    assert f"is in use by host {socket.gethostname()} pid {first.pid} (it holds run.lock)" in output
    status, output = finish(first)
    assert status == 0, output[-3000:]
    same_as(run, straight[0])


@pytest.fixture
def small_filesystem(tmp_path: Path, straight: tuple[Path, float]):
    """A real filesystem (tmpfs) with room for the run's files and two and a half checkpoints: the second
    epoch's checkpoint does not fit. Yields a function that gives it room; skipped where mounting is refused."""
    folder = tmp_path / "small"
    folder.mkdir()
    size = int(2.5 * (straight[0] / "checkpoints" / "last.ckpt").stat().st_size) + 64 * 1024
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs root: {mounted.stderr.decode().strip()}")
    try:
        yield folder, lambda: subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_disk_that_fills_in_mid_run_is_one_paragraph_and_resume_finishes_the_run(
    small_filesystem: tuple[Path, Callable[[], None]], straight: tuple[Path, float]
) -> None:
    folder, make_room = small_filesystem
    run = folder / "run"
    status, output = finish(start(run))
    assert status == 1 and "Traceback" not in output, output[-3000:]
    assert f"The run cannot write into its directory {run} (No space left on device: {run}/checkpoints/" in output
    assert "resume=auto" in output, output[-3000:]
    make_room()
    status, output = finish(start(run, "resume=auto"))
    assert status == 0, output[-3000:]
    same_as(run, straight[0])
