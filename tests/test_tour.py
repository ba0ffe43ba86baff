"""Every command in docs/tour.md still composes into a valid config (they are run by hand: they take minutes)."""

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mlptrain.config import EXPORT_RULES, ExportConfig, check, parse_arguments
from mlptrain.data import MNISTDataModule
from mlptrain.system import MLPSystem
from mlptrain.training_path import choose_path
from tests.conftest import CONF_DIR, ROOT

TOUR = ROOT / "docs" / "tour.md"


def tour_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", TOUR.read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.startswith("python ")]


def test_the_tour_has_its_pages() -> None:
    text = TOUR.read_text()
    for topic in ("3b1b", "step", "vanishing", "cross-entropy", "learning rate", "batch", "overfitting", "baselines"):
        assert topic in text.lower(), topic
    assert len(tour_commands()) >= 15


@pytest.mark.parametrize("command", tour_commands())
def test_tour_command_composes(command: str, tmp_path: Path) -> None:
    args = shlex.split(command, comments=True)
    if args[1] == "scripts/predict.py":  # its arguments, typed and checked (the checkpoint is the reader's own)
        parse_arguments(args[2:])
        return
    if args[1] == "scripts/export.py":
        parse_arguments(args[2:], ExportConfig, EXPORT_RULES)
        return
    script = {"train.py": "train", "scripts/compare.py": "compare"}[args[1]]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(script, overrides=[f"output_dir={tmp_path}", *args[2:]])
    check(cfg)  # every rule a run checks before it reads data
    if cfg.train:
        choose_path(cfg)  # and the training path it would take (refused there, with a reason, if none fits)
    plain = OmegaConf.to_container(cfg, resolve=True)
    MLPSystem(model=plain["model"], loss=plain["loss"], optimizer=plain["optimizer"], scheduler=plain["scheduler"])
    MNISTDataModule(**plain["data"])
