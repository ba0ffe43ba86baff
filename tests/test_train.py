"""train(cfg) end to end on the embedded MNIST, and the messages users get for bad input."""

import csv
import gzip
import json
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from mlptrain.data import EMBEDDED_DIR, SHA256
from mlptrain.system import MLPSystem
from mlptrain.train import main, train
from tests.conftest import logged_errors, run_python

MakeCfg = Callable[..., DictConfig]
# 2 epochs of 70 mini-batches of 10 images in float64, where two ways of making the same updates must agree.
FLOAT64_SHORT = [
    "data.train_size=700",
    "data.batch_size=10",
    "trainer.max_epochs=2",
    "trainer.precision=64-true",
    "trainer.limit_train_batches=null",
    "report.enabled=false",
]


def summary(cfg: DictConfig) -> dict:
    return json.loads((Path(cfg.output_dir) / "summary.json").read_text())


def weights(path: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)["state_dict"]


def test_one_epoch_learns_mnist_and_writes_the_run(make_cfg: MakeCfg) -> None:
    cfg = make_cfg("model.hidden=[32]", "trainer.limit_train_batches=null")
    best_val = train(cfg)
    run = Path(cfg.output_dir)
    result = summary(cfg)
    assert result["status"] == "completed"
    assert result["test_acc"] >= 0.90  # one epoch of a 784-32-10 ReLU net, AdamW, 391 steps
    assert result["best_val_acc"] == pytest.approx(best_val)
    assert result["parameters"] == 785 * 32 + 33 * 10
    assert (result["epochs"], result["global_steps"], result["seed"], result["device"]) == (1, 391, 42, "cpu")
    assert {"torch", "lightning", "torchmetrics", "hydra-core", "python"} <= set(result["versions"])
    assert Path(result["checkpoints"]["best"]).is_file() and Path(result["checkpoints"]["last"]).is_file()
    assert "hidden:\n  - 32" in (run / "config.yaml").read_text()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"} <= set(rows[0])
    assert float(next(r for r in rows if r["test/acc"])["test/acc"]) == pytest.approx(result["test_acc"])
    saved = torch.load(result["checkpoints"]["best"], weights_only=False)
    assert saved["hyper_parameters"]["model"]["hidden"] == [32]
    assert saved["library_versions"]["lightning"] == result["versions"]["lightning"]
    assert saved["config"]["data"]["val_size"] == 10_000 and saved["config"]["seed"] == 42


def test_same_seed_repeats_exactly_and_another_seed_does_not(make_cfg: MakeCfg) -> None:
    runs = [make_cfg("seed=3", run="a"), make_cfg("seed=3", run="b"), make_cfg("seed=4", run="c")]
    for cfg in runs:
        train(cfg)
    a, b, c = (weights(summary(cfg)["checkpoints"]["last"]) for cfg in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary(runs[0])["test_loss"] == summary(runs[1])["test_loss"]
    assert not torch.equal(a["model.layers.0.weight"], c["model.layers.0.weight"])


def test_resuming_from_a_checkpoint_continues_the_same_run(make_cfg: MakeCfg) -> None:
    common = ("scheduler=none", "trainer.limit_train_batches=30")
    straight = make_cfg(*common, "trainer.max_epochs=2", run="straight")
    train(straight)
    first = make_cfg(*common, "trainer.max_epochs=1", run="first")
    train(first)
    resumed = make_cfg(
        *common, "trainer.max_epochs=2", f"ckpt_path={summary(first)['checkpoints']['last']}", run="resumed"
    )
    train(resumed)
    assert summary(resumed)["epochs"] == 2 and summary(resumed)["global_steps"] == 60
    a, b = weights(summary(straight)["checkpoints"]["last"]), weights(summary(resumed)["checkpoints"]["last"])
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-7) for k in a)


def test_test_only_mode_evaluates_a_checkpoint(make_cfg: MakeCfg) -> None:
    trained = make_cfg(run="trained")
    train(trained)
    best = summary(trained)["checkpoints"]["best"]
    # A different model config on the command line does not matter: the checkpoint describes its model.
    evaluated = make_cfg("train=false", f"ckpt_path={best}", "model.hidden=[7]", run="evaluated")
    train(evaluated)
    assert summary(evaluated)["test_acc"] == summary(trained)["test_acc"]
    assert summary(evaluated)["tested_checkpoint"] == best


def test_dataloader_path_trains_like_the_tensor_path(make_cfg: MakeCfg) -> None:
    tensor, classic = make_cfg(run="tensor"), make_cfg("data.loader=dataloader", run="classic")
    train(tensor)
    train(classic)
    assert summary(classic)["test_acc"] == pytest.approx(summary(tensor)["test_acc"], abs=0.002)


def test_tensorboard_logger_writes_events_besides_metrics_csv(make_cfg: MakeCfg) -> None:
    cfg = make_cfg("logger=tensorboard", "trainer.limit_train_batches=5")
    train(cfg)
    assert list((Path(cfg.output_dir) / "tensorboard").glob("events.out.tfevents.*"))
    assert (Path(cfg.output_dir) / "metrics.csv").is_file()


@pytest.fixture
def corrupt_data(tmp_path: Path) -> Path:
    raw = tmp_path / "corrupt" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in SHA256:
        shutil.copyfile(EMBEDDED_DIR / "MNIST" / "raw" / f"{name}.gz", raw / f"{name}.gz")
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not mnist"))
    return raw.parents[1]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.activation=relux"], "model.activation='relux' is not a known activation. Use one of: identity, step"),
        (["model.hidden=[16,0]"], "model.hidden must be a list of positive integer widths"),
        (["optimizer.lr=0"], "optimizer.lr must be a positive number, got 0"),
        (["optimizer=sgd", "optimizer.lr=-1"], "optimizer.lr must be a positive number, got -1"),
        (["data.batch_size=0"], "data.batch_size must be a positive integer, got 0"),
        (["model.output_activation=softmax"], "needs model.output_activation=none (got 'softmax')"),
        (["loss=mse", "loss.reduction=l2"], "loss.reduction='l2' is not known"),
        (["train=false"], "train=false evaluates a checkpoint on the test set: also give ckpt_path"),
        (["ckpt_path=no/such.ckpt"], "ckpt_path=no/such.ckpt is not a file"),
        (["data.dir={tmp}/empty"], "train-images-idx3-ubyte(.gz) is missing and data.download is false"),
        (["data.dir={corrupt}"], "train-labels-idx1-ubyte.gz decompresses to content whose SHA-256"),
        (["+trainer.no_such_argument=1"], "The trainer config is not valid"),
    ],
)
def test_bad_input_gets_a_one_paragraph_error(
    make_cfg: MakeCfg,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    corrupt_data: Path,
    overrides: list,
    message: str,
) -> None:
    overrides = [o.format(tmp=tmp_path, corrupt=corrupt_data) for o in overrides]
    with pytest.raises(SystemExit) as exit_info:
        main(make_cfg(*overrides))
    assert exit_info.value.code == 1
    errors = logged_errors(caplog)
    assert len(errors) == 1 and message in errors[0]
    assert "\n" not in errors[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where there is no GPU")
def test_asking_for_a_gpu_without_one(make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(make_cfg("trainer.accelerator=gpu"))
    error = logged_errors(caplog)[0]
    assert error.startswith("The trainer config is not valid") and "trainer.*" in error


@pytest.mark.parametrize(("steps_per_call", "calls"), [(1, 50), (10, 5)])  # 50 mini-batches an epoch either way
def test_nan_loss_stops_with_epoch_and_step_and_keeps_earlier_checkpoints(
    make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture, steps_per_call: int, calls: int
) -> None:
    # A step schedule that multiplies the learning rate by 1e30 after the first epoch: epoch 1 diverges.
    cfg = make_cfg(
        "optimizer=sgd",
        "scheduler=step",
        "scheduler.step_size=1",
        "scheduler.gamma=1e30",
        "trainer.max_epochs=3",
        f"steps_per_call={steps_per_call}",
        f"trainer.limit_train_batches={calls}",
        f"check_finite_every_n_steps={calls // 5}",
    )
    with pytest.raises(SystemExit):
        main(cfg)
    error = logged_errors(caplog)[0]
    assert re.search(r"became NaN or infinite at epoch 1, global step 5\d,", error)
    assert "lower it" in error and "Checkpoints written before it are kept" in error
    result = summary(cfg)
    assert result["status"] == "failed" and result["epochs"] == 1
    last = torch.load(result["checkpoints"]["last"], weights_only=False)
    assert last["epoch"] == 0 and all(torch.isfinite(t).all() for t in last["state_dict"].values())
    rows = list(csv.DictReader((Path(cfg.output_dir) / "metrics.csv").open()))
    assert any(row["epoch"] == "0" and row["val/acc"] for row in rows)  # epoch 0's metrics are still there


def test_interrupted_run_keeps_its_files_and_says_how_to_resume(
    make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    epoch_end = MLPSystem.on_train_epoch_end

    def ctrl_c_in_second_epoch(self: MLPSystem) -> None:
        if self.current_epoch == 1:
            raise KeyboardInterrupt
        epoch_end(self)

    monkeypatch.setattr(MLPSystem, "on_train_epoch_end", ctrl_c_in_second_epoch)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # Lightning would make this process ignore Ctrl-C
    cfg = make_cfg("trainer.max_epochs=3", "trainer.limit_train_batches=10")
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    assert exit_info.value.code == 1
    error = logged_errors(caplog)[0]
    last = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    assert f"interrupted during epoch 1. What was written is kept in {cfg.output_dir}" in error
    assert f"resume=auto hydra.run.dir={cfg.output_dir}" in error and f"ckpt_path={last}" in error
    assert summary(cfg)["status"] == "interrupted"
    assert torch.load(last, weights_only=False)["epoch"] == 0


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {"HYDRA_FULL_ERROR": "0", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    return run_python("train.py", *args, timeout=300, env=env)


def test_command_line_errors_have_no_traceback(tmp_path: Path) -> None:
    bad = _cli("model.activation=relux", f"hydra.run.dir={tmp_path}")
    assert bad.returncode == 1
    assert "is not a known activation. Use one of:" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


def test_hydra_names_unknown_keys_and_groups(tmp_path: Path) -> None:
    typo = _cli("model.actvation=tanh", f"hydra.run.dir={tmp_path}")
    assert typo.returncode != 0 and "actvation" in typo.stderr and "Traceback" not in typo.stderr
    group = _cli("optimizer=sgdd", f"hydra.run.dir={tmp_path}")
    assert group.returncode != 0 and "Available options in 'optimizer'" in group.stderr


@pytest.mark.parametrize(
    "setup",
    [
        ["optimizer=sgd", "optimizer.momentum=0.9", "scheduler=cosine"],
        ["optimizer=adam", "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5"],
        ["optimizer=adamw", "scheduler=onecycle"],
    ],
)
def test_several_steps_per_call_make_the_same_updates(make_cfg: MakeCfg, setup: list[str]) -> None:
    """steps_per_call=7 against 1, float64: the same weights bit for bit, the same step count and metrics."""
    common = [*setup, *FLOAT64_SHORT]
    one, seven = make_cfg(*common, run="one"), make_cfg(*common, "steps_per_call=7", run="seven")
    train(one)
    train(seven)
    a, b = weights(summary(one)["checkpoints"]["last"]), weights(summary(seven)["checkpoints"]["last"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary(one)["global_steps"] == summary(seven)["global_steps"] == 140
    rows = [list(csv.DictReader((Path(cfg.output_dir) / "metrics.csv").open())) for cfg in (one, seven)]
    for metric in ("train/loss", "train/acc", "val/acc", "test/acc"):
        values = [[float(r[metric]) for r in run if r.get(metric)] for run in rows]
        assert values[0] == pytest.approx(values[1], rel=1e-6), metric  # torchmetrics sums in float32


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["steps_per_call=0"], "steps_per_call must be a positive integer"),
        (["steps_per_call=4", "data.loader=dataloader"], "needs data.loader=tensor"),
        (["steps_per_call=4", "trainer.gradient_clip_val=1.0"], "does not clip gradients"),
    ],
)
def test_steps_per_call_limits_are_explained(
    make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture, overrides: list[str], message: str
) -> None:
    with pytest.raises(SystemExit):
        main(make_cfg(*overrides))
    assert message in logged_errors(caplog)[0]


@pytest.mark.parametrize(
    "setup",
    [
        ["optimizer=sgd", "optimizer.momentum=0.9", "optimizer.nesterov=true", "scheduler=cosine"],
        ["optimizer=sgd", "optimizer.weight_decay=0.01", "scheduler=cosine"],
        ["optimizer=sgd", "scheduler=onecycle"],  # OneCycleLR cycles SGD's momentum, even from 0
        ["optimizer=adam", "optimizer.weight_decay=0.001", "scheduler=cosine"],
        ["optimizer=adamw", "scheduler=onecycle"],  # ... and Adam's beta1
    ],
    ids=["sgd-nesterov", "sgd-decay", "sgd-onecycle", "adam", "adamw-onecycle"],
)
def test_compiled_steps_match_the_eager_ones(
    make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture, setup: list[str]
) -> None:
    """compile_steps=5 (torch.compile of 5 updates at a time) against plain steps, float64: the same weights,
    optimizer state and per-epoch metrics."""
    common = [*setup, *FLOAT64_SHORT]
    eager = make_cfg(*common, run="eager")
    compiled = make_cfg(*common, "steps_per_call=10", "compile_steps=5", run="compiled")
    train(eager)
    train(compiled)
    a, b = weights(summary(eager)["checkpoints"]["last"]), weights(summary(compiled)["checkpoints"]["last"])
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-10, atol=1e-12), key
    states = [torch.load(summary(cfg)["checkpoints"]["last"], weights_only=False)["optimizer_states"][0]["state"]
              for cfg in (eager, compiled)]  # fmt: skip
    for index, state in states[0].items():
        for key, value in state.items():
            other = states[1][index][key].to(value.dtype)  # Adam's step count: float32 or float64
            assert torch.allclose(value, other, rtol=1e-9, atol=1e-12), (index, key)
    assert summary(compiled)["global_steps"] == summary(eager)["global_steps"] == 140
    rows = [list(csv.DictReader((Path(cfg.output_dir) / "metrics.csv").open())) for cfg in (eager, compiled)]
    for row_eager, row_compiled in zip(*rows, strict=True):
        for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
            if row_eager[key]:
                assert abs(float(row_eager[key]) - float(row_compiled[key])) < 1e-6, key
    assert not [r for r in caplog.records if "torch.compile failed" in r.getMessage()]  # it did not fall back


def test_compile_steps_limits_are_explained(make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture) -> None:
    for overrides, message in (
        (["steps_per_call=10", "compile_steps=3", "optimizer=sgd"], "must divide steps_per_call=10"),
        (
            ["steps_per_call=10", "compile_steps=5", "optimizer=adam", "+optimizer.amsgrad=true"],
            "not dampening, amsgrad",
        ),
    ):
        caplog.clear()
        with pytest.raises(SystemExit):
            main(make_cfg(*overrides))
        assert message in logged_errors(caplog)[0]


def test_compile_failure_falls_back_to_eager_steps(
    make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        def fails(*args: object, **kwargs: object) -> None:
            raise RuntimeError("no C++ compiler")

        return fails

    monkeypatch.setattr(torch, "compile", broken)
    common = [
        "optimizer=sgd",
        "optimizer.momentum=0.9",
        "scheduler=cosine",
        "data.train_size=300",
        "data.batch_size=10",
        "trainer.limit_train_batches=null",
        "report.enabled=false",
    ]
    plain, fallback = (
        make_cfg(*common, run="plain"),
        make_cfg(*common, "steps_per_call=10", "compile_steps=5", run="fb"),
    )
    train(plain)
    train(fallback)
    assert any("torch.compile failed (no C++ compiler)" in r.getMessage() for r in caplog.records)
    a, b = weights(summary(plain)["checkpoints"]["last"]), weights(summary(fallback)["checkpoints"]["last"])
    assert all(torch.equal(a[k], b[k]) for k in a)  # the steps it could not compile ran eagerly, exactly
