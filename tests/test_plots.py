"""The pictures of a run, the activation figure and the predict command, from a short real run."""

import json
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlptrain.plots import confusion_matrix, plot_mistakes
from mlptrain.train import train
from tests.conftest import run_in_process, run_python


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import compose_config

    run_dir = tmp_path_factory.mktemp("report")
    cfg = compose_config(
        [
            "trainer.accelerator=cpu",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=100",
            "progress_bar=false",
            "model.hidden=[20]",
            "log_grad_norms=true",
            "report.weight_tiles=12",
            "report.mistakes=7",
            "report.network_images=2",
            "report.landscape=pca",
        ],
        run_dir,
    )
    train(cfg)
    return run_dir


def test_every_picture_is_a_png_of_the_expected_size(run: Path) -> None:
    sizes = {
        name: png_size(run / name)
        for name in (
            "curves.png",
            "confusion.png",
            "weights.png",
            "mistakes.png",
            "grad_norms.png",
            "network.png",
            "landscape.png",
        )
    }
    assert sizes["curves.png"] == (1200, 480)
    assert sizes["confusion.png"] == (900, 780)
    assert sizes["grad_norms.png"] == (840, 540)
    assert sizes["weights.png"] == (1248, 348)  # 12 tiles: 8 columns, 2 rows
    assert sizes["mistakes.png"] == (1020, 468)  # 7 images: 5 columns, 2 rows
    assert sizes["network.png"] == (1320, 1104)  # 2 test images, one row each
    assert sizes["landscape.png"] == (900, 720)


@pytest.mark.slow  # a test-only run of its own; the fast tier sees landscape.png drawn in the module's run
def test_the_weights_path_is_kept_in_the_checkpoints_and_redraws_the_landscape(run: Path, tmp_path: Path) -> None:
    import torch

    from mlptrain.anatomy import flatten
    from mlptrain.predict import load_trained

    last = run / "checkpoints" / "last.ckpt"
    kept = torch.load(last, weights_only=True)["callbacks"]["WeightTrajectory"]
    # 2 epochs of 100 mini-batches, 50 a training step: a point every 10 updates is asked, one a step is taken.
    assert kept["updates"] == [0, 50, 100, 150, 200]
    trained = load_trained(last)
    torch.testing.assert_close(kept["points"][-1], flatten(trained.model))  # the path ends at the final weights
    assert len(kept["points"]) == 5 and not torch.equal(kept["points"][0], kept["points"][-1])
    # One command on the checkpoint draws it again, the same picture.
    from tests.conftest import compose_config

    cfg = compose_config(
        ["train=false", f"ckpt_path={last}", "report.landscape=pca", "report.network_images=0", "progress_bar=false"],
        tmp_path,
    )
    train(cfg)
    assert (tmp_path / "landscape.png").read_bytes() == (run / "landscape.png").read_bytes()
    assert not (tmp_path / "network.png").exists()


@pytest.mark.slow
def test_the_landscape_shows_the_whole_training_where_the_best_epoch_is_not_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run is tested at its best.ckpt, which holds the path up to that epoch: the report still draws the whole
    path, the one last.ckpt keeps (the same picture as redrawn from it)."""
    import torch

    from mlptrain.system import MLPSystem
    from tests.conftest import compose_config

    end_evaluation = MLPSystem.end_evaluation

    def falling_accuracy(self: MLPSystem, stage: str, values: dict) -> None:
        if stage == "val":  # each epoch's val/acc below the one before: the best checkpoint stays epoch 0's
            values = {**values, "val/acc": torch.full_like(values["val/acc"], 1 / (self.current_epoch + 2))}
        end_evaluation(self, stage, values)

    monkeypatch.setattr(MLPSystem, "end_evaluation", falling_accuracy)
    settings = ["model.hidden=[20]", "trainer.limit_train_batches=40", "progress_bar=false", "report.landscape=pca",
                "report.network_images=0"]  # fmt: skip
    train(compose_config([*settings, "trainer.max_epochs=3"], tmp_path / "run"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["tested_checkpoint"].endswith("best.ckpt") and summary["best_val_acc"] == pytest.approx(0.5)
    monkeypatch.undo()
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    train(compose_config([*settings, "train=false", f"ckpt_path={last}"], tmp_path / "redrawn"))
    drawn = (tmp_path / "run" / "landscape.png").read_bytes()
    assert drawn == (tmp_path / "redrawn" / "landscape.png").read_bytes()


def test_confusion_matrix_counts_the_whole_test_set(run: Path) -> None:
    matrix = np.loadtxt(run / "confusion.csv", delimiter=",", dtype=int)
    assert matrix.shape == (10, 10) and matrix.sum() == 10_000
    summary = json.loads((run / "summary.json").read_text())
    assert matrix.trace() / 10_000 == pytest.approx(summary["test_acc"], abs=1e-4)


def test_grad_norms_are_logged_per_layer(run: Path) -> None:
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "grad_norm/layers.0.weight" in header and "grad_norm/layers.1.weight" in header


def test_report_page_shows_the_figures_and_pictures(run: Path) -> None:
    report = (run / "report.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert f"| test accuracy | {100 * summary['test_acc']:.2f}% |" in report
    assert "| network | 784-20-10 |" in report
    for picture in ("curves.png", "confusion.png", "weights.png", "mistakes.png", "grad_norms.png", "network.png"):
        assert f"]({picture})" in report


def test_report_can_be_switched_off(tmp_path: Path, make_cfg) -> None:
    cfg = make_cfg("report.enabled=false", "trainer.limit_train_batches=5")
    train(cfg)
    assert not list(Path(cfg.output_dir).glob("*.png")) and not (Path(cfg.output_dir) / "report.md").exists()


def test_confusion_matrix_and_mistakes_by_hand(tmp_path: Path) -> None:
    labels = np.array([0, 1, 2, 2, 3])
    probs = np.full((5, 10), 0.01)
    probs[[0, 1, 2, 3, 4], [0, 7, 2, 5, 9]] = [0.9, 0.6, 0.9, 0.8, 0.95]
    matrix = confusion_matrix(labels, probs.argmax(1))
    assert matrix.sum() == 5 and matrix.trace() == 2 and matrix[1, 7] == 1 and matrix[2, 5] == 1
    worst = plot_mistakes(np.zeros((5, 28, 28)), labels, probs, tmp_path / "m.png", count=10)
    assert worst == [4, 3, 1]  # wrong ones, most confident first


def _script(*args: str) -> subprocess.CompletedProcess:
    return run_python(*args, timeout=300)


def test_plot_activations_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, output = run_in_process("scripts/plot_activations.py", [f"out={tmp_path / 'a.png'}"], capsys)
    assert status == 0, output
    assert "13 activations drawn" in output and png_size(tmp_path / "a.png") == (1536, 1248)


def test_predict_a_test_image_and_a_users_picture(run: Path, tmp_path: Path, capsys) -> None:
    best = run / "checkpoints" / "best.ckpt"
    status, output = run_in_process("scripts/predict.py", [f"ckpt_path={best}", "index=0"], capsys)
    assert status == 0, output
    assert "prediction: 7 (true label: 7)" in output  # test image 0 is a clear 7
    assert len([line for line in output.splitlines() if line[:1].isdigit()]) == 10
    # The same 7 as a user would draw it: dark ink on white paper, 3 times larger.
    from mlptrain.predict import test_image

    pixels, _ = test_image(0)
    Image.fromarray(255 - pixels).resize((84, 84)).save(tmp_path / "seven.png")
    status, output = run_in_process(
        "scripts/predict.py", [f"ckpt_path={best}", f"image={tmp_path / 'seven.png'}"], capsys
    )
    assert status == 0 and "prediction: 7" in output


def test_predict_draws_the_network_and_the_nudges(run: Path, tmp_path: Path, capsys) -> None:
    best = run / "checkpoints" / "best.ckpt"
    network, nudges = tmp_path / "network.png", tmp_path / "nudges.png"
    arguments = [f"ckpt_path={best}", "index=1", f"network={network}", f"nudges={nudges}"]
    status, output = run_in_process("scripts/predict.py", arguments, capsys)
    assert status == 0, output
    assert png_size(network) == (1320, 552) and png_size(nudges) == (1440, 1020)
    # A user's picture needs its digit for the nudges: the cost is measured against it.
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "blank.png")
    arguments = [f"ckpt_path={best}", f"image={tmp_path / 'blank.png'}", f"nudges={nudges}"]
    status, output = run_in_process("scripts/predict.py", arguments, capsys)
    assert status == 1 and "label=D" in output
    status, output = run_in_process("scripts/predict.py", [*arguments, "label=3"], capsys)
    assert status == 0, output


def test_predict_errors_are_one_line(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "not-an-image.png").write_text("hello")
    for args in (
        ["index=3"],
        [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", f"image={tmp_path / 'not-an-image.png'}"],
        [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", "index=10000"],
    ):
        status, output = run_in_process("scripts/predict.py", args, capsys)
        assert status == 1 and output.startswith("error: ") and "Traceback" not in output, output
        assert len(output.strip().splitlines()) == 1


@pytest.mark.slow  # a process of its own: what a user's shell sees
def test_predict_error_from_the_shell(tmp_path: Path) -> None:
    done = _script("scripts/predict.py", "index=3")
    assert done.returncode == 1 and done.stderr.startswith("error: Give ckpt_path=") and done.stdout == ""


def test_the_weight_tiles_are_each_units_weights_on_its_own_scale() -> None:
    """weights.png is one image of tiles: tile i (row i // 8, column i % 8) is unit i's 784 weights divided by
    their largest magnitude, so that each unit's own extremes are full red and full blue; its title names it."""
    from mlptrain.plots import weights_figure

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(12, 784)) * np.arange(1, 13)[:, None]  # units of very different scales
    bounds = np.abs(weights).max(1)
    figure = weights_figure(weights, tiles=12)
    mosaic = np.asarray(figure.axes[0].images[0].get_array().filled(np.nan))
    for unit in range(12):
        top, left = 9 + (unit // 8) * 37, (unit % 8) * 32
        np.testing.assert_allclose(mosaic[top : top + 28, left : left + 28].ravel(), weights[unit] / bounds[unit])
    assert np.isnan(mosaic[:9]).all() and np.isnan(mosaic[:, 28:32]).all()  # the gaps and title rows stay white
    assert [text.get_text() for text in figure.axes[0].texts] == [f"unit {i}" for i in range(12)]
