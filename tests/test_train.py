"""train(cfg) end to end on the embedded MNIST, and the messages users get for bad input."""

import csv
import gzip
import importlib.util
import json
import logging
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from mlptrain.cli import main
from mlptrain.mnist import EMBEDDED_DIR, SHA256
from mlptrain.system import MLPSystem
from mlptrain.train import train
from mlptrain.training_path import choose_path
from tests.conftest import compose_config, logged_errors, run_in_process, run_python

MakeCfg = Callable[..., DictConfig]
# 2 epochs of 70 mini-batches in float64, where two ways of making the same updates must agree. The last of
# each epoch has 5 images, the others 10: the training step that takes it has batches of two sizes.
FLOAT64_SHORT = [
    "data.train_size=695",
    "data.batch_size=10",
    "trainer.max_epochs=2",
    "trainer.precision=64-true",
    "trainer.limit_train_batches=null",
    "trainer.limit_val_batches=2",  # validation and test of 2,000 images each: the same subset on every path
    "trainer.limit_test_batches=2",
    "report.enabled=false",
]


def summary(cfg: DictConfig) -> dict:
    return json.loads((Path(cfg.output_dir) / "summary.json").read_text())


def weights(path: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


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
    saved = torch.load(result["checkpoints"]["best"], weights_only=True)
    assert saved["hyper_parameters"]["model"]["hidden"] == [32]
    assert saved["library_versions"]["lightning"] == result["versions"]["lightning"]
    assert saved["config"]["data"]["val_size"] == 10_000 and saved["config"]["seed"] == 42


def test_last_ckpt_is_the_last_epoch_even_when_it_is_not_the_best(make_cfg: MakeCfg) -> None:
    # A learning rate of 1e-12 leaves every prediction as the first epoch made it: val/acc never improves again.
    cfg = make_cfg(
        "trainer.max_epochs=3", "trainer.limit_train_batches=5", "optimizer=sgd", "optimizer.lr=1e-12", "scheduler=none"
    )
    train(cfg)
    folder = Path(cfg.output_dir) / "checkpoints"
    best, last = (torch.load(folder / name, weights_only=True) for name in ("best.ckpt", "last.ckpt"))
    assert best["epoch"] == 0 and best["updates_done"] == 5
    assert last["epoch"] == 2 and last["updates_done"] == 15  # what resume=auto continues from
    summary = json.loads((Path(cfg.output_dir) / "summary.json").read_text())
    assert summary["checkpoints"] == {"best": str(folder / "best.ckpt"), "last": str(folder / "last.ckpt")}


@pytest.mark.slow  # several whole runs
def test_same_seed_repeats_exactly_and_another_seed_does_not(make_cfg: MakeCfg) -> None:
    runs = [make_cfg("seed=3", run="a"), make_cfg("seed=3", run="b"), make_cfg("seed=4", run="c")]
    for cfg in runs:
        train(cfg)
    a, b, c = (weights(summary(cfg)["checkpoints"]["last"]) for cfg in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary(runs[0])["test_loss"] == summary(runs[1])["test_loss"]
    assert not torch.equal(a["model.layers.0.weight"], c["model.layers.0.weight"])


@pytest.mark.slow  # several whole runs
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


@pytest.mark.slow  # several whole runs
def test_test_only_mode_evaluates_a_checkpoint(make_cfg: MakeCfg) -> None:
    trained = make_cfg(run="trained")
    train(trained)
    best = summary(trained)["checkpoints"]["best"]
    # A different model config on the command line does not matter: the checkpoint describes its model.
    evaluated = make_cfg("train=false", f"ckpt_path={best}", "model.hidden=[7]", run="evaluated")
    train(evaluated)
    assert summary(evaluated)["test_acc"] == summary(trained)["test_acc"]
    assert summary(evaluated)["tested_checkpoint"] == best


@pytest.mark.slow  # several whole runs
def test_dataloader_path_trains_like_the_tensor_path(make_cfg: MakeCfg) -> None:
    tensor, classic = make_cfg(run="tensor"), make_cfg("data.loader=dataloader", run="classic")
    train(tensor)
    train(classic)
    assert summary(classic)["test_acc"] == pytest.approx(summary(tensor)["test_acc"], abs=0.002)


@pytest.mark.slow  # several whole runs
def test_tensorboard_logger_writes_events_besides_metrics_csv(make_cfg: MakeCfg) -> None:
    cfg = make_cfg("logger=tensorboard", "trainer.limit_train_batches=5")
    train(cfg)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(cfg.output_dir) / "tensorboard"))
    events.Reload()
    rows = list(csv.DictReader((Path(cfg.output_dir) / "metrics.csv").open()))
    csv_acc = next(float(row["val/acc"]) for row in rows if row.get("val/acc"))
    assert events.Scalars("val/acc")[-1].value == pytest.approx(csv_acc, rel=1e-6)  # the same value in both


def test_tensorboard_without_the_package_says_which_extra_to_install(
    make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if "tensorboard" in name else real(name, *a))
    with pytest.raises(SystemExit):
        main(make_cfg("logger=tensorboard"))
    assert 'pip install -e ".[tensorboard]"' in logged_errors(caplog)[0]


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
        (["model.activation=relux"], "model.activation='relux' is not a known activation: use one of identity, step"),
        (["model.hidden=[16,0]"], "model.hidden=[16, 0] is out of range: each value must be >= 1"),
        (["optimizer.lr=0"], "optimizer.lr=0.0 is out of range: it must be > 0"),
        (["data.batch_size=0"], "data.batch_size=0 is out of range: it must be >= 1"),
        (["model.output_activation=softmax"], "needs model.output_activation=none (got 'softmax')"),
        (["loss=mse", "loss.reduction=l2"], "loss.reduction='l2' is not one of its choices"),
        (
            ["optimizer.lr=0", "data.batch_size=0"],
            "data.batch_size=0 is out of range: it must be >= 1. Change it on the command line or in conf/data/. "
            "optimizer.lr=0.0",
        ),
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


@pytest.mark.parametrize("steps_per_call", [1, 10])  # 50 mini-batches an epoch either way
def test_nan_loss_stops_with_epoch_and_step_and_keeps_earlier_checkpoints(
    make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture, steps_per_call: int
) -> None:
    # A step schedule that multiplies the learning rate by 1e30 after the first epoch: epoch 1 diverges.
    cfg = make_cfg(
        "optimizer=sgd",
        "scheduler=step",
        "scheduler.step_size=1",
        "scheduler.gamma=1e30",
        "trainer.max_epochs=3",
        f"steps_per_call={steps_per_call}",
        "trainer.limit_train_batches=50",
        "check_finite_every_n_steps=10",
    )
    with pytest.raises(SystemExit):
        main(cfg)
    error = logged_errors(caplog)[0]
    assert re.search(r"became NaN or infinite at epoch 1, global step 5\d,", error)
    assert "lower it" in error and "Checkpoints written before it are kept" in error
    result = summary(cfg)
    assert result["status"] == "failed" and result["epochs"] == 1
    last = torch.load(result["checkpoints"]["last"], weights_only=True)
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
    assert torch.load(last, weights_only=True)["epoch"] == 0


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {"HYDRA_FULL_ERROR": "0", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    return run_python("train.py", *args, timeout=300, env=env)


# What a default run may print: our log lines (the checkpoint tested among them), Lightning's device line and
# its line at the end of training, its model summary. Anything else (an advertisement, a warning) is noise.
OURS = re.compile(r"^\[[\d-]+ [\d:,]+\]\[mlptrain\.\w+\]\[INFO\] - ")
# Lightning's own lines, once each, through the run's console and train.log handlers (conf/hydra/job_logging/
# mlptrain.yaml): Lightning's `INFO: ` console handler would print each a second time.
LIGHTNING = re.compile(
    r"^\[[\d-]+ [\d:,]+\]\[lightning\.pytorch\.utilities\.rank_zero\]\[INFO\] - (GPU available: |`Trainer\.fit` "
    r"stopped: `max_epochs=2` reached\.)"
)
SUMMARY = re.compile(
    r"^([┏┃┡│└].*|(Trainable|Non-trainable|Total) params: .*|Total estimated .*|Modules in .*|Total FLOPs: .*)$"
)


@pytest.mark.slow
def test_a_default_run_prints_only_its_own_lines(tmp_path: Path) -> None:
    done = _cli("trainer.max_epochs=2", "trainer.limit_train_batches=20", f"hydra.run.dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    lines = [line.rstrip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    noise = [line for line in lines if not (OURS.match(line) or LIGHTNING.match(line) or SUMMARY.match(line))]
    assert not noise, noise
    assert sum(bool(LIGHTNING.match(line)) for line in lines) == 2
    assert "GPU available: " in (tmp_path / "train.log").read_text()  # the run's log has Lightning's lines too
    assert "Total FLOPs: 218 K" in lines  # 2 × (784·128 + 128·64 + 64·10) multiply-adds for one image
    assert sum(" - epoch " in line for line in lines) == 2
    assert any(" - Test accuracy " in line for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["-m", "run"])
def test_hydras_own_logging_choices_replace_mlptrains(tmp_path: Path, how: str) -> None:
    """hydra/job_logging=disabled and hydra/hydra_logging=disabled, as Hydra documents them, on a run and on a
    population sweep: the run trains without its log, and no logging config refers to a handler they removed."""
    where = (
        [f"hydra.sweep.dir={tmp_path}", "hydra/launcher=population", "-m"]
        if how == "-m"
        else [f"hydra.run.dir={tmp_path}"]
    )
    silent = ("hydra/job_logging=disabled", "hydra/hydra_logging=disabled")
    done = _cli(*silent, "trainer.max_epochs=1", "trainer.limit_train_batches=20", "report.enabled=false", *where)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    run_dir = tmp_path / "0" if how == "-m" else tmp_path
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert " - epoch 0 " not in done.stdout + done.stderr  # our lines went with the logging


def test_hydra_names_unknown_keys_and_groups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, output = run_in_process("train.py", ["model.actvation=tanh", f"hydra.run.dir={tmp_path}"], capsys)
    assert status == 1 and "actvation" in output and "Traceback" not in output
    status, output = run_in_process("train.py", ["optimizer=sgdd", f"hydra.run.dir={tmp_path}"], capsys)
    assert status == 1 and "Available options in 'optimizer'" in output


OPTIMIZERS = {
    "sgd-nesterov-decay": [
        "optimizer=sgd",
        # not the default 0.1, with which this momentum diverges (a training loss of 271 in epoch 2): a diverging
        # run magnifies the paths' last-digit rounding differences to 1e-6 and more, whatever their updates
        "optimizer.lr=0.01",
        "optimizer.momentum=0.9",
        "optimizer.nesterov=true",
        "optimizer.weight_decay=0.01",
    ],
    "adam": ["optimizer=adam", "optimizer.weight_decay=0.001"],
    "adamw": ["optimizer=adamw"],  # its decoupled weight decay, 0.01
}
SCHEDULES = {"none": ["scheduler=none"], "cosine": ["scheduler=cosine"], "onecycle": ["scheduler=onecycle"]}
CLIPPED = {  # gradient clipping, both algorithms, and the gradient norms logged before it
    "sgd-cosine-clip-norm": [*OPTIMIZERS["sgd-nesterov-decay"], "scheduler=cosine", "trainer.gradient_clip_val=0.5"],
    "adam-onecycle-cycled-clip-value": [
        *OPTIMIZERS["adam"],
        "scheduler=onecycle",
        "scheduler.cycle_momentum=true",  # beta1 cycled step by step: scheduled values inside a compiled group
        "trainer.gradient_clip_val=0.01",
        "trainer.gradient_clip_algorithm=value",
    ],
}
SETUPS = {
    # A constant rate is what every schedule's steps also pass: Adam and AdamW are taken with schedules only.
    **{
        f"{o}-{s}": [*OPTIMIZERS[o], *SCHEDULES[s]]
        for o in OPTIMIZERS
        for s in SCHEDULES
        if s != "none" or o[:3] == "sgd"
    },
    **{name: [*setup, "log_grad_norms=true"] for name, setup in CLIPPED.items()},
}
PATHS = {
    "several": ["steps_per_call=7", "compile=false"],
    # 70 mini-batches an epoch, 20 a call: groups of 10 compiled, and short groups and the first update eager
    "compiled": ["steps_per_call=20", "compile=true"],
}
# The setups also run compiled: each optimizer's update, momentum with Nesterov and L2 decay, both clipping
# algorithms and the norms, and scheduled betas. The schedules' rates reach the compiled group as tensors, one
# code path whatever the schedule; and each compile costs 30-100 s on 2 cores with inductor's cache empty (CI).
COMPILED = {"sgd-nesterov-decay-onecycle", "adamw-cosine", "sgd-cosine-clip-norm", "adam-onecycle-cycled-clip-value"}


def _optimizer_state(cfg: DictConfig) -> dict:
    return torch.load(summary(cfg)["checkpoints"]["last"], weights_only=True)["optimizer_states"][0]["state"]


def _epoch_values(cfg: DictConfig) -> list[dict[str, float]]:
    rows = csv.DictReader((Path(cfg.output_dir) / "metrics.csv").open())
    wanted = ("train/", "val/", "test/", "grad_norm/", "lr-")
    return [{k: float(v) for k, v in row.items() if v and k.startswith(wanted)} for row in rows]


@pytest.mark.slow
@pytest.mark.parametrize("setup", SETUPS)
def test_every_path_makes_the_plain_paths_updates(
    make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture, setup: str
) -> None:
    """Several mini-batches per training step, eager, and compiled (COMPILED), against Lightning's own loop (one
    optimizer.step() per step), float64: weights, optimizer state and epoch metrics agree to 1e-10."""
    common = [*SETUPS[setup], *FLOAT64_SHORT]
    plain = make_cfg(*common, "steps_per_call=1", "compile=false", run="plain")
    train(plain)
    for name, path in PATHS.items() if setup in COMPILED else [("several", PATHS["several"])]:
        other = make_cfg(*common, *path, run=name)
        train(other)
        a, b = weights(summary(plain)["checkpoints"]["last"]), weights(summary(other)["checkpoints"]["last"])
        for key in a:
            assert torch.allclose(a[key], b[key], rtol=1e-10, atol=1e-10), (name, key, (a[key] - b[key]).abs().max())
        states = _optimizer_state(plain), _optimizer_state(other)
        assert states[0].keys() == states[1].keys() and states[0], name
        for index, state in states[0].items():
            for key, value in state.items():
                assert torch.allclose(value, states[1][index][key].to(value.dtype), rtol=1e-10, atol=1e-10), key
        assert summary(other)["global_steps"] == summary(plain)["global_steps"] == 140
        rows = _epoch_values(plain), _epoch_values(other)
        assert [row.keys() for row in rows[0]] == [row.keys() for row in rows[1]], name
        for row_plain, row_other in zip(*rows):
            for key, value in row_plain.items():
                assert row_other[key] == pytest.approx(value, rel=1e-10, abs=1e-10), (name, key)
    assert not [r for r in caplog.records if "torch.compile failed" in r.getMessage()]  # it did compile


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd-nesterov-decay", "adam"])
def test_every_implementation_makes_the_same_updates_in_lightnings_loop_and_several_a_step(
    make_cfg: MakeCfg, optimizer: str
) -> None:
    """optimizer.implementation (single, foreach, fused; auto is fused here) in Lightning's loop and K a step, float64:
    the same weights and optimizer state to 1e-10, and what the optimizer was built with is what was asked."""
    runs = {}
    for implementation in ("single", "foreach", "fused", "auto"):
        for path in (["steps_per_call=1"], ["steps_per_call=7"]):
            chosen = f"optimizer.implementation={implementation}"
            cfg = make_cfg(*OPTIMIZERS[optimizer], "scheduler=cosine", *FLOAT64_SHORT, *path, "compile=false", chosen,
                           run=f"{implementation}-{path[0][-1]}")  # fmt: skip
            train(cfg)
            runs[cfg.output_dir] = weights(summary(cfg)["checkpoints"]["last"]), _optimizer_state(cfg)
            built = torch.load(summary(cfg)["checkpoints"]["last"], weights_only=True)["optimizer_states"][0]
            group = built["param_groups"][0]
            expected = {"single": (False, None), "foreach": (True, None)}.get(implementation, (None, True))
            assert (group["foreach"], group["fused"]) == expected, (implementation, group["foreach"], group["fused"])
    (first_weights, first_state), *others = runs.values()
    for other_weights, other_state in others:
        for key in first_weights:
            assert torch.allclose(first_weights[key], other_weights[key], rtol=1e-10, atol=1e-10), key
        for index, state in first_state.items():
            for key, value in state.items():
                assert torch.allclose(value, other_state[index][key].to(value.dtype), rtol=1e-10, atol=1e-10), key


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ([], "50 mini-batches per training step, not compiled (3,910 updates, fewer than the 20,000"),
        (["experiment=nielsen"], "50 mini-batches per training step, compiled (150,000 updates, at least 20,000"),
        (["experiment=modern", "trainer.max_epochs=60"], "not compiled (dropout: compiled code would draw"),
        (["data.loader=dataloader"], "Lightning's loop, one mini-batch per training step: data.loader=dataloader"),
        (["trainer=ddp"], "Lightning's loop, one mini-batch per training step: with several processes"),
        (["trainer.num_nodes=2"], "Lightning's loop, one mini-batch per training step: with several processes"),
        # devices=auto is one process where Lightning would take one device (here: no GPU), as train() decides
        (["trainer.devices=auto", "trainer.accelerator=cpu"], "50 mini-batches per training step"),
        (["trainer.precision=bf16-mixed"], "trainer.precision=bf16-mixed needs Lightning's mixed-precision loop"),
        (["+trainer.max_steps=100"], "trainer.max_steps counts Lightning's training steps"),
        (["optimizer=any"], "torch.optim.RMSprop has no functional"),
        (["steps_per_call=1"], "Lightning's loop, one mini-batch per training step: steps_per_call=1"),
        (["steps_per_call=8", "compile=true"], "8 mini-batches per training step, compiled (compile=true)"),
        (["optimizer=sgd", "scheduler=onecycle", "scheduler.cycle_momentum=true"], "SGD's momentum is cycled"),
    ],
)
def test_the_training_path_is_chosen_from_the_config(tmp_path: Path, overrides: list[str], path: str) -> None:
    assert path in choose_path(compose_config(overrides, tmp_path)).why  # the real config, not the small run


def test_the_chosen_path_is_logged_in_one_line(make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    train(make_cfg("trainer.limit_train_batches=20", "report.enabled=false"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Training path:")]
    assert lines == ["Training path: 50 mini-batches per training step, not compiled (20 updates, fewer than the "
                     "20,000 that pay for compiling)"]  # fmt: skip


def test_an_optimizer_without_a_functional_update_trains_in_lightnings_loop(
    make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cfg = make_cfg("optimizer=any", "optimizer.lr=0.001", "steps_per_call=4", "report.enabled=false")
    train(cfg)
    assert any("torch.optim.RMSprop has no functional update" in r.getMessage() for r in caplog.records)
    assert summary(cfg)["global_steps"] == 100 and summary(cfg)["test_acc"] > 0.85


@pytest.mark.parametrize("steps_per_call", [1, 7])
@pytest.mark.parametrize(("limit", "updates"), [("30", 30), ("0.1", 39)])  # 391 mini-batches an epoch
def test_limit_train_batches_counts_mini_batches_on_every_path(
    make_cfg: MakeCfg, steps_per_call: int, limit: str, updates: int
) -> None:
    cfg = make_cfg(f"steps_per_call={steps_per_call}", f"trainer.limit_train_batches={limit}", "trainer.max_epochs=2",
                   "report.enabled=false")  # fmt: skip
    train(cfg)
    assert summary(cfg)["global_steps"] == 2 * updates


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["steps_per_call=0"], "steps_per_call=0 is not allowed: use auto or a positive integer"),
        (
            ["steps_per_call=4", "data.loader=dataloader"],
            "steps_per_call=4 cannot be used here: data.loader=dataloader",
        ),
        (["compile=maybe"], "compile='maybe' is not one of its choices: use one of auto, true, false"),
        (["steps_per_call=1", "compile=true"], "but this run makes one per step (steps_per_call=1)"),
        (
            ["optimizer=sgd", "scheduler=onecycle", "scheduler.cycle_momentum=true", "compile=true"],
            "compile=true does not compile SGD with a momentum that scheduler.cycle_momentum=true changes",
        ),
    ],
)
def test_speed_settings_that_cannot_hold_are_explained(
    make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture, overrides: list[str], message: str
) -> None:
    with pytest.raises(SystemExit):
        main(make_cfg(*overrides))
    assert message in logged_errors(caplog)[0]


@pytest.mark.slow
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
        make_cfg(*common, "steps_per_call=1", run="plain"),
        make_cfg(*common, "steps_per_call=10", "compile=true", run="fb"),
    )
    train(plain)
    train(fallback)
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "(no C++ compiler)" in warnings[0]
    a, b = weights(summary(plain)["checkpoints"]["last"]), weights(summary(fallback)["checkpoints"]["last"])
    assert all(torch.equal(a[k], b[k]) for k in a)  # the steps it could not compile ran eagerly, exactly
