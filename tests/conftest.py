"""Compose the real config with Hydra's compose API and shrink it for fast runs."""

import csv
import os
import runpy
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from omegaconf import DictConfig


@pytest.fixture(autouse=True)
def signal_handlers_as_they_were() -> Iterator[None]:
    """Every test leaves the worker's signal handlers as it found them. Lightning ignores SIGINT for good once a
    fit is interrupted (SIG_IGN, lightning.pytorch.trainer.call), and an ignored signal is inherited by every
    process started later: a test that then sends Ctrl-C to a child (scripts/export.py serving its page) waited
    for ever, in whichever worker such a test had run before."""
    import signal

    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    yield
    for signum, handler in saved.items():
        if handler is not None and signal.getsignal(signum) is not handler:
            signal.signal(signum, handler)


# pytest runs the tests on one pytest-xdist worker per core (pyproject.toml's addopts: -n auto). Each worker,
# and every process its tests start, gets its share of the cores: torch's default, every core in each process,
# would oversubscribe them (OpenMP threads spinning), which slows runs several times over. The rest of this file
# imports torch, Hydra and Lightning where it uses them: pytest-xdist's controller loads it too, before it starts
# the workers, and needs none of them (Lightning's import alone is 4-8 s here).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    import torch

    THREADS = max(1, len(os.sched_getaffinity(0)) // WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)  # the processes its tests start
    torch.set_num_threads(THREADS)  # this one

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

# A run small enough for a test: one epoch of 100 mini-batches on the CPU, no progress bar, no pictures
# (tests/test_plots.py draws them).
SMALL = [
    "report.enabled=false",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=100",
    "trainer.num_sanity_val_steps=0",
    "progress_bar=false",
]


def compose_config(overrides: list[str], output_dir: Path, config: str = "train") -> DictConfig:
    """conf/train.yaml (or conf/compare.yaml) composed with `overrides`, writing to output_dir."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config, overrides=[f"output_dir={output_dir}", *overrides])


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """make_cfg(*overrides, run="run"): the composed config of a small run writing to tmp_path/run."""

    def make(*overrides: str, run: str = "run") -> DictConfig:
        return compose_config([*SMALL, *overrides], tmp_path / run)

    return make


def run_python(
    *args: str, timeout: int = 600, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    """`python ARGS...` from the repository root (or `cwd`), as a user types it; output captured."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def logged_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The ERROR lines logged so far: the one-paragraph messages main() gives users."""
    return [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]


def run_in_process(script: str, arguments: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The command as a user runs it, but in this process (no start-up per case): exit status and output."""
    from hydra.core.global_hydra import GlobalHydra

    from mlptrain import signals

    GlobalHydra.instance().clear()
    old_argv = sys.argv
    sys.argv = [str(ROOT / script), *arguments]
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = old_argv
        GlobalHydra.instance().clear()
        signals.let_go()  # the command line holds signals until its process ends: this process goes on
    output = capsys.readouterr()
    return status, output.out + output.err


def csv_histories(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Each metric of a run's metrics.csv: its (step, value) pairs, sorted (logger=mlflow's tests compare MLflow's)."""
    histories: dict[str, list[tuple[int, float]]] = {}
    with (run_dir / "metrics.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            for key, value in row.items():
                if key not in ("epoch", "step") and value != "":
                    histories.setdefault(key, []).append((int(row["step"]), float(value)))
    return {key: sorted(values) for key, values in histories.items()}


def mlflow_histories(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Each metric of an MLflow run: its (step, value) pairs as MLflow holds them, sorted (a step logged twice shows
    twice)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    keys = client.get_run(run_id).data.metrics
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in keys}
