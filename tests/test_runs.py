"""The notebook API (mlptrain.runs): run(), sweep() and load() train and read runs as the command line does, in
this process, and leave it as they found it."""

import logging
import signal
import warnings
from pathlib import Path

import IPython.display  # noqa: F401  (as in a notebook, where it is imported already: it adds a warning filter)
import pytest
import torch

import mlptrain
from mlptrain.errors import ConfigError, MlptrainError
from mlptrain.predict import test_set as mnist_test_set
from mlptrain.runs import _arguments, _value

SMALL = {"trainer__max_epochs": 2, "data__train_size": 2000, "report__enabled": False, "model__hidden": [16]}


def _state() -> tuple:
    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    return (
        root.level,
        list(root.handlers),
        list(warnings.filters),
        signal.getsignal(signal.SIGINT),
        signal.getsignal(signal.SIGTERM),
        GlobalHydra.instance().is_initialized(),
    )


def test_overrides_from_keywords() -> None:
    assert _value([32, 16]) == "[32,16]"
    assert _value(None) == "null"
    assert _value(True) == "true"
    assert _value(0.5) == "0.5"
    assert _value("tanh") == "tanh"
    assert _value("a b") == "'a b'"
    assert _arguments(["loss=mse"], {"trainer__max_epochs": 3, "model__hidden": (8,)}) == [
        "loss=mse",
        "trainer.max_epochs=3",
        "model.hidden=[8]",
    ]
    with pytest.raises(ConfigError, match="Overrides are strings"):
        _arguments([3], {})


def test_run_trains_as_the_command_line_and_leaves_the_process_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = _state()
    run = mlptrain.run("model.activation=tanh", **SMALL)
    assert _state() == before  # root logger, warning filters, Ctrl-C and SIGTERM, Hydra's global state
    assert [path.name for path in tmp_path.iterdir()] == ["outputs"]  # nothing else in the working directory
    assert run.path.parent.parent == tmp_path / "outputs"
    assert {".hydra", "train.log", "config.yaml", "metrics.csv", "summary.json", "checkpoints"} <= {
        path.name for path in run.path.iterdir()
    }
    assert "Run directory:" in (run.path / "train.log").read_text()
    assert run.summary["status"] == "completed"
    assert run.config["model"]["activation"] == "tanh"
    metrics = run.metrics
    assert list(metrics["epoch"]) == [0, 1, 2] and metrics["test/acc"].iloc[-1] == run.summary["test_acc"]
    assert isinstance(run.model, torch.nn.Module)
    # The network it gives back is the tested one: its answers on the test set score the summary's accuracy.
    images, labels = mnist_test_set()
    assert float((run.predict(images) == labels).float().mean()) == pytest.approx(run.summary["test_acc"], abs=1e-6)
    assert run.probabilities(images[0]).shape == (1, 10)
    page = run.page()
    assert 'srcdoc="' in page.data and (run.path / "page" / "index.html").is_file()
    assert repr(mlptrain.load(run.path)) == repr(run)
    # A second call in the same process, as a notebook's cell run again
    again = mlptrain.run("model.activation=tanh", path=tmp_path / "outputs" / "again", **SMALL)
    assert again.summary["test_acc"] == run.summary["test_acc"]  # the same seed: the same run
    assert _state() == before


def test_mistakes_are_the_command_lines_paragraph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = _state()
    with pytest.raises(ConfigError) as refused:
        mlptrain.run("model.activaton=tanh")
    assert "model.activaton" in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(ConfigError, match=r"optimizer.lr=-1.0 is out of range: it must be > 0") as refused:
        mlptrain.run(optimizer__lr=-1)
    frames = [frame.filename for frame in __import__("traceback").extract_tb(refused.value.__traceback__)]
    assert not any("/hydra/" in name for name in frames), frames  # no traceback through Hydra's internals
    with pytest.raises(ConfigError, match="is not a run's folder"):
        mlptrain.load(tmp_path)
    assert _state() == before


def test_sweep_trains_one_population_and_gives_its_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = _state()
    sweep = mlptrain.sweep("model.activation=sigmoid,relu", "seed=1,2", **SMALL)
    assert _state() == before
    table = sweep.table
    assert list(table["model.activation"]) == ["sigmoid", "sigmoid", "relu", "relu"]
    assert list(table["status"]) == ["completed"] * 4
    assert [run.summary["test_acc"] for run in sweep.runs] == list(table["test_acc"])
    assert "with the other members of a population" in (sweep.runs[0].path / "train.log").read_text()
    assert "<table" in sweep._repr_html_()
    with pytest.raises(MlptrainError, match="No job of the sweep"):
        mlptrain.sweep("optimizer.lr=-1,-2", **SMALL)
    assert _state() == before
