"""Every config in conf/ composes, and what it composes builds a valid data module, model and trainer."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mlptrain.config import check
from mlptrain.data import MNISTDataModule
from mlptrain.system import MLPSystem
from mlptrain.train import trainer_for
from mlptrain.training_path import choose_path
from tests.conftest import CONF_DIR, compose_config

GROUPS = {group.name: sorted(p.stem for p in group.glob("*.yaml")) for group in CONF_DIR.iterdir() if group.is_dir()}
# baselines/ belongs to conf/compare.yaml (scripts/compare.py); everything else to conf/train.yaml.
CHOICES = [
    f"{group}={option}" for group, options in sorted(GROUPS.items()) for option in options if group != "baselines"
]


def build(overrides: list[str], tmp_path: Path) -> tuple:
    cfg = compose_config(overrides, tmp_path)
    check(cfg)  # every rule a run checks before it reads data
    choose_path(cfg)  # and the training path it would take
    plain = OmegaConf.to_container(cfg, resolve=True)
    system = MLPSystem(
        model=plain["model"], loss=plain["loss"], optimizer=plain["optimizer"], scheduler=plain["scheduler"]
    )
    data = MNISTDataModule(**plain["data"])
    if cfg.trainer.accelerator != "gpu":  # the gpu trainer is checked where there is a GPU (tests/test_gpu.py)
        trainer_for(system.writing_into([cfg]), cfg)
    return cfg, system, data


def test_groups_are_the_documented_ones() -> None:
    assert set(GROUPS) == {
        "model",
        "data",
        "loss",
        "optimizer",
        "scheduler",
        "trainer",
        "logger",
        "experiment",
        "hparams_search",
        "baselines",
        "hydra",  # hydra/launcher/slurm.yaml: tested in tests/test_cluster.py
    }
    assert {"3b1b", "nielsen", "modern"} <= set(GROUPS["experiment"])
    assert {"cpu", "gpu", "auto", "ddp"} <= set(GROUPS["trainer"])


@pytest.mark.parametrize("choice", CHOICES)
def test_every_config_composes_and_builds(choice: str, tmp_path: Path) -> None:
    build([choice], tmp_path)


def test_nielsen_is_the_books_network(tmp_path: Path) -> None:
    cfg, system, data = build(["experiment=nielsen"], tmp_path)
    assert [layer.out_features for layer in system.model.layers] == [30, 10]
    assert (cfg.model.activation, cfg.model.output_activation, cfg.model.init) == ("sigmoid", "sigmoid", "normal")
    assert (cfg.loss.name, cfg.loss.reduction) == ("mse", "half_sum")
    assert (cfg.optimizer._target_, cfg.optimizer.lr, cfg.optimizer.momentum) == ("torch.optim.SGD", 3.0, 0.0)
    assert (data.batch_size, data.normalize, len(data.split_indices()[0])) == (10, "unit", 50_000)
    assert cfg.trainer.max_epochs == 30


def test_3b1b_is_784_16_16_10_sigmoid_mse_sgd(tmp_path: Path) -> None:
    cfg, system, _ = build(["experiment=3b1b"], tmp_path)
    assert [layer.out_features for layer in system.model.layers] == [16, 16, 10]
    assert (cfg.model.activation, cfg.loss.name, cfg.optimizer._target_) == ("sigmoid", "mse", "torch.optim.SGD")


def test_command_line_overrides_from_the_issue(tmp_path: Path) -> None:
    overrides = (
        "model.hidden=[128,64] model.activation=tanh loss=mse optimizer=sgd optimizer.lr=0.5 "
        "data.batch_size=32 trainer.max_epochs=3 seed=7"
    ).split()
    cfg, system, data = build(overrides, tmp_path)
    assert [layer.out_features for layer in system.model.layers] == [128, 64, 10]
    assert (cfg.loss.name, cfg.optimizer.lr, data.batch_size, cfg.trainer.max_epochs) == ("mse", 0.5, 32, 3)
    assert cfg.seed == 7 and data.shuffle_seed == 7


def test_activation_by_target_from_the_command_line(tmp_path: Path) -> None:
    _, system, _ = build(["model.activation={_target_: torch.nn.Hardtanh, min_val: -2.0}"], tmp_path)
    assert type(system.model.activations[0]).__name__ == "Hardtanh"
    assert system.model.activations[0].min_val == -2.0


# Keys that the file's opening comment already explains.
SELF_EXPLAINED = ("defaults:", "hydra:", "_target_:", "_partial_:", "name:", "tensorboard:")


def test_every_default_key_has_a_comment() -> None:
    """Configs are the interface: each key in conf/ says what it does and what it allows."""
    for path in CONF_DIR.rglob("*.yaml"):
        lines = path.read_text().splitlines()
        assert lines[0].startswith("#"), f"{path} should open with a comment saying what it is"
        if path.parent.name in ("experiment", "baselines"):  # their opening comment says what they are
            continue
        for line in lines:
            is_key = line and not line.startswith((" ", "#", "-")) and ":" in line
            if is_key and not line.startswith(SELF_EXPLAINED):
                assert "#" in line, f"{path.name}: `{line}` has no comment"


@pytest.mark.parametrize("baseline", GROUPS["baselines"])
def test_every_baseline_config_composes(baseline: str, tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("compare", overrides=[f"output_dir={tmp_path}", "experiment=nielsen", f"baselines=[{baseline}]"])
    assert list(cfg.baselines) == [baseline]
    assert cfg.scheduler.name == "none" and cfg.model.hidden == [30]
    OmegaConf.to_container(cfg.baselines, resolve=True)  # every interpolation resolves
