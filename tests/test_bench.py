"""scripts/bench.py runs and reports every system; the figures themselves are for docs/benchmarks.md, not tests."""

import json
from pathlib import Path

import pytest

from tests.conftest import run_python

pytestmark = pytest.mark.slow  # subprocesses: see pyproject.toml's markers


# Every system of the table but compile=true: compiling the relu network costs 30-90 s here with inductor's cache
# empty (CI), and that path is tests/test_train.py's; the row runs the same function with compile=true set.
SYSTEMS = [
    "mlptrain",
    "mlptrain, Lightning's loop (steps_per_call=1)",
    "bare eager PyTorch loop",
    "mlptrain, loader=dataloader",
    "NumPy, backprop by hand",
]


def test_bench_reports_every_system_doing_the_same_work(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["setups=[relu]", "rounds=1", "epochs=2", "overrides=[data.train_size=10000]", f"out={out}"]
    done = run_python("scripts/bench.py", *args, f"systems=[{','.join(repr(s) for s in SYSTEMS)}]")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    by_system = {row["system"]: row for row in rows}
    assert list(by_system) == SYSTEMS  # those asked for, in the table's order
    assert by_system["bare eager PyTorch loop"]["x_eager"] == by_system["NumPy, backprop by hand"]["x_numpy"] == 1.0
    # The trainer as `python train.py` runs this setup (10 epochs of 79 updates): several a step, not compiled.
    assert by_system["mlptrain"]["path"].startswith("50 mini-batches per training step, not compiled (790 updates")
    assert all(row["s_per_epoch"] > 0 and row["epochs_timed"] == 1 for row in rows)
    # Same initial weights, same batches, same optimizer: the same accuracy, whoever is fastest.
    accuracies = [row["test_acc"] for row in rows]
    assert min(accuracies) > 0.92 and max(accuracies) - min(accuracies) < 0.005
    assert "| relu | bare eager PyTorch loop |" in done.stdout


def test_bench_times_every_command_its_phases_and_the_targets(tmp_path: Path) -> None:
    out = tmp_path / "commands.json"
    short = "train_overrides=[trainer.max_epochs=2,data.train_size=5000,report.enabled=false]"
    done = run_python("scripts/bench.py", "commands=true", "runs=1", short, f"out={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {row["command"]: row for row in result["rows"]}
    assert {"python train.py", "import torch", "python train.py --help", "scripts/predict.py index=8"} <= set(rows)
    assert all(row["wall_s"] > 0 and row["peak_rss_mb"] > 0 for row in rows.values())
    # The light commands' memory is their own (a launcher starts them), not the benchmark's torch and Lightning.
    assert rows["python train.py --help"]["peak_rss_mb"] < rows["import torch"]["peak_rss_mb"] / 2
    phases = result["train_phases"]
    assert phases["training (the epochs' own times)"] > 0 and len(phases) == 6
    assert sum(phases.values()) == pytest.approx(rows["python train.py"]["wall_s"], rel=0.05)
    assert result["targets"][0][0].startswith("python train.py: wall")
    assert "| target | measured | met |" in done.stdout


def test_bench_against_another_commit_times_both_and_compares_their_records(tmp_path: Path) -> None:
    """against=HEAD: the committed code against the working tree's (the same here, unless a change is under way in
    system code): whole processes of each setup, and whether their metrics.csv are the same bytes."""
    out = tmp_path / "against.json"
    short = "overrides=[data.train_size=2000,data.val_size=1000,report.enabled=false]"
    done = run_python("scripts/bench.py", "against=HEAD", "runs=1", short, f"out={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(row["setup"], row["system"]) for row in rows] == [
        (setup, system) for setup in ("default", "nielsen, 3 epochs") for system in ("HEAD", "this checkout")
    ]
    assert all(row["wall_s"] > 0 and row["same_metrics_csv"] for row in rows)
    assert rows[0]["x_HEAD"] == 1.0 and "| nielsen, 3 epochs | this checkout |" in done.stdout
