"""scripts/compare.py: the trainer and the baselines on the same split, weights and batches, side by side."""

import csv
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from mlptrain.baselines.centroid import NearestCentroid
from mlptrain.cli import main
from mlptrain.compare import compare
from mlptrain.data import MNISTDataModule
from tests.conftest import CONF_DIR, SMALL, logged_errors, run_python

ALL = "baselines=[numpy,centroid,logistic,nielsen_network]"


def compare_config(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("compare", overrides=[f"output_dir={tmp_path}", *SMALL, *overrides])


@pytest.fixture(scope="module")
def nielsen_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """experiment=nielsen, 2 epochs of 300 mini-batches, every baseline."""
    run_dir = tmp_path_factory.mktemp("compare")
    cfg = compare_config(run_dir, "experiment=nielsen", ALL, "trainer.max_epochs=2", "trainer.limit_train_batches=300")
    return run_dir, compare(cfg)


def by_system(rows: list[dict]) -> dict[str, list[dict]]:
    systems: dict[str, list[dict]] = {}
    for row in rows:
        systems.setdefault(row["system"], []).append(row)
    return systems


@pytest.mark.slow
def test_every_system_is_trained_and_evaluated_every_epoch(nielsen_run: tuple[Path, list[dict]]) -> None:
    run_dir, rows = nielsen_run
    systems = by_system(rows)
    assert list(systems) == ["mlptrain", "numpy", "centroid", "logistic", "nielsen_network"]
    assert all([r["epoch"] for r in epochs] == [0, 1] for epochs in systems.values())
    with (run_dir / "epochs.csv").open() as file:
        assert len(list(csv.DictReader(file))) == 10


@pytest.mark.slow
def test_hand_written_nets_follow_the_trainer_step_for_step(nielsen_run: tuple[Path, list[dict]]) -> None:
    """Same initial weights and batches: float32 NumPy and float64 network.py track autograd's run."""
    systems = by_system(nielsen_run[1])
    for name in ("numpy", "nielsen_network"):
        for mine, reference in zip(systems[name], systems["mlptrain"]):
            assert mine["test_acc"] == pytest.approx(reference["test_acc"], abs=0.002)
            assert mine["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-3)
    assert systems["numpy"][0]["train_loss"] == pytest.approx(systems["mlptrain"][0]["train_loss"], rel=1e-4)


@pytest.mark.slow
def test_simple_baselines_reach_their_usual_accuracy(nielsen_run: tuple[Path, list[dict]]) -> None:
    systems = by_system(nielsen_run[1])
    assert 0.78 < systems["centroid"][-1]["test_acc"] < 0.85  # nearest class mean on MNIST: ~82%
    assert systems["logistic"][-1]["test_acc"] > 0.85


@pytest.mark.slow
def test_gradient_parity_table(nielsen_run: tuple[Path, list[dict]]) -> None:
    with (nielsen_run[0] / "gradient_parity.csv").open() as file:
        parity = list(csv.DictReader(file))
    assert {row["system"] for row in parity} == {"numpy", "nielsen_network"}
    assert len(parity) == 8 and all(float(row["max_rel_diff"]) < 1e-10 for row in parity)


@pytest.mark.slow
def test_markdown_table_and_plot(nielsen_run: tuple[Path, list[dict]]) -> None:
    run_dir = nielsen_run[0]
    table = (run_dir / "comparison.md").read_text()
    assert "| mlptrain | 2 |" in table and "| nielsen_network | 2 |" in table and "Gradient parity" in table
    png = (run_dir / "test_accuracy.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (840, 540)


def test_baseline_batches_are_the_trainers() -> None:
    """The batches the baselines get (data.epoch_batches) are those the trainer's loader serves, in its order."""
    data = MNISTDataModule(train_size=1000, batch_size=64, shuffle_seed=5)
    data.setup()
    loader = data.train_dataloader()
    loader.sampler.set_epoch(3)
    served = [labels.numpy() for _, labels in loader]
    _, y = data.arrays("train")
    given = data.epoch_batches(3)
    assert [len(index) for index in given] == [64] * 15 + [40]
    assert len(served) == len(given) and all(np.array_equal(y[i], s) for i, s in zip(given, served))
    assert not np.array_equal(np.concatenate(given), np.concatenate(data.epoch_batches(4)))  # a fresh shuffle
    for limit, count in ((4, 4), (0.5, 8)):
        limited = MNISTDataModule(train_size=1000, batch_size=64, shuffle_seed=5, limit_train_batches=limit)
        assert len(limited.epoch_batches(3)) == count


def test_centroid_predicts_the_nearest_mean() -> None:
    x = np.array([[0.0, 0.0], [0.2, 0.0], [5.0, 5.0], [5.2, 5.0]] + [[10.0 * d, -3.0] for d in range(2, 10)])
    y = np.array([0, 0, 1, 1, *range(2, 10)])
    centroid = NearestCentroid()
    centroid.fit_epoch(x, y, [np.arange(len(y))])
    assert centroid.predict(np.array([[0.1, 0.3], [4.0, 4.0], [31.0, -3.0]])).tolist() == [0, 1, 3]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["scheduler=cosine"], "add scheduler=none"),
        (["model.dropout=0.3"], "set model.dropout=0"),
        (["optimizer=sgd", "+optimizer.dampening=0.5"], "SGD does not implement optimizer.dampening"),
        (["+optimizer.amsgrad=true"], "AdamW does not implement optimizer.amsgrad"),
        (["experiment=3b1b", "baselines=[nielsen_network]"], "network.py is sigmoid neurons"),
        (["baselines=[]"], "baselines is empty"),
    ],
)
def test_comparisons_that_are_not_like_for_like_are_refused_before_training(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    overrides: list[str],
    message: str,
) -> None:
    if not any(o.startswith("baselines=") for o in overrides):
        overrides = ["baselines=[numpy]", *overrides]
    cfg = compare_config(tmp_path, *overrides)
    with pytest.raises(SystemExit):
        main(cfg, compare)
    assert message in logged_errors(caplog)[0]
    assert not (tmp_path / "mlptrain").exists()


@pytest.mark.slow
def test_the_readme_command(tmp_path: Path) -> None:
    done = run_python(
        "scripts/compare.py",
        "experiment=nielsen",
        "baselines=[numpy,centroid]",
        *SMALL,
        "trainer.limit_train_batches=20",
        "trainer.limit_val_batches=2",
        f"hydra.run.dir={tmp_path}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "comparison.md").read_text()
    assert "| mlptrain | 1 |" in table and "| numpy | 1 |" in table and "| centroid | 1 |" in table
