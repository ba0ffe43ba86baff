"""A real sweep (`python train.py -m`) and scripts/report.py over it."""

import csv
from pathlib import Path

import pytest

from tests.conftest import run_in_process, run_python

pytestmark = pytest.mark.slow  # subprocesses: see pyproject.toml's markers

SHORT = ["trainer.max_epochs=2", "trainer.limit_train_batches=20", "report.enabled=false", "progress_bar=false"]
OUTPUT: dict[Path, str] = {}  # what each sweep below printed


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 activations x 2 seeds, and a learning rate that diverges in one more setting."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    done = run_python(
        "train.py",
        "-m",
        "model.activation=relu,tanh",
        "seed=1,2",
        "optimizer=sgd",
        "scheduler=none",
        "optimizer.lr=0.1,1e30",
        *SHORT,
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    OUTPUT[sweep_dir] = done.stdout + done.stderr
    return sweep_dir


def test_a_sweep_writes_its_report_as_it_ends_and_names_it_last(sweep: Path) -> None:
    """No second command: the sweep's comparison is written as it ends (cli.SweepStatus), and named last."""
    table = (sweep / "sweep_report.md").read_text()
    assert "varied: model.activation, optimizer.lr, seed." in table and "| 2/2 |" in table
    assert (sweep / "val_acc.png").read_bytes().startswith(b"\x89PNG") and (sweep / "sweep_jobs.csv").is_file()
    lines = [line for line in OUTPUT[sweep].splitlines() if line.strip()]
    assert f"Sweep report: {(sweep / 'sweep_report.md').resolve()}" in lines[-1], lines[-3:]


def test_a_failed_job_does_not_stop_the_sweep(sweep: Path) -> None:
    assert sorted(int(p.name) for p in sweep.iterdir() if p.is_dir()) == list(range(8))
    assert len(list(sweep.glob("*/summary.json"))) == 8


def test_report_folds_seeds_into_mean_and_std(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, output = run_in_process("scripts/report.py", [str(sweep)], capsys)
    assert status == 0, output
    table = (sweep / "sweep_report.md").read_text()
    assert "varied: model.activation, optimizer.lr, seed." in table
    rows = [line for line in table.splitlines() if line.startswith(("| relu", "| tanh"))]
    assert len(rows) == 4  # two activations x two learning rates, seeds folded
    converged = [row for row in rows if "| 0.1 |" in row]
    assert all("| 2/2 |" in row and "±" in row for row in converged)
    assert "| relu | 1e+30 | 0/2 | — |" in table  # diverged: NaN loss (tanh happens to stay finite)
    assert "Not completed:" in table and "(failed)" in table
    with (sweep / "sweep_jobs.csv").open() as file:
        jobs = list(csv.DictReader(file))
    assert len(jobs) == 8 and {job["status"] for job in jobs} == {"completed", "failed"}
    assert (sweep / "val_acc.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("launcher", ["basic", "population"])
def test_a_sweep_none_of_whose_jobs_completed_exits_1(
    launcher: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["-m", f"hydra/launcher={launcher}", "optimizer.lr=-1", "seed=1,2", f"hydra.sweep.dir={tmp_path}"]
    status, output = run_in_process("train.py", [*arguments, *SHORT], capsys)
    assert status == 1 and "Traceback" not in output, output
    assert output.count("optimizer.lr=-1.0 is out of range") == 2, output  # each job's own paragraph
    assert "No job of the sweep completed (of 2: 2 refused before training)" in output, output
