"""What each command imports: `--help` and a config's mistake need neither torch nor Lightning, and inference
(predict, the page) needs torch and the checkpoint, not Lightning, torchmetrics, torchvision or matplotlib.
Each command runs as a user types it, under `python -X importtime`, which lists every module it imported."""

from pathlib import Path

import pytest

from mlptrain.train import train
from tests.conftest import SMALL, compose_config, run_python

pytestmark = pytest.mark.slow

TRAINING_ONLY = ("lightning", "torchmetrics", "torchvision")


def imported(stderr: str) -> set[str]:
    """The top-level packages a process imported, from -X importtime's lines ('import time: ... | name')."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0] for line in stderr.splitlines() if line.startswith("import time:")
    }


def command(*args: str) -> tuple[int, str, set[str]]:
    done = run_python("-X", "importtime", *args)
    return (
        done.returncode,
        done.stdout + "\n".join(line for line in done.stderr.splitlines() if "import time:" not in line),
        imported(done.stderr),
    )


def test_help_imports_neither_torch_nor_lightning() -> None:
    status, output, modules = command("train.py", "--help")
    assert status == 0 and "== Configuration groups ==" in output and "lr: 0.001" in output, output[-2000:]
    assert {"hydra", "omegaconf"} <= modules  # the check is real: it sees what was imported
    assert not modules & {"torch", *TRAINING_ONLY}, sorted(modules & {"torch", *TRAINING_ONLY})


def test_a_config_mistake_is_told_before_lightning_loads(tmp_path: Path) -> None:
    status, output, modules = command("train.py", "optimizer.lr=-1", f"hydra.run.dir={tmp_path}")
    assert status == 1 and "optimizer.lr=-1.0 is out of range" in output, output[-2000:]
    assert not modules & set(TRAINING_ONLY), sorted(modules & set(TRAINING_ONLY))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("startup")
    train(compose_config([*SMALL, "model.hidden=[16,16]"], run))
    return run / "checkpoints" / "best.ckpt"


def test_predict_and_the_page_use_torch_and_the_checkpoint_alone(checkpoint: Path, tmp_path: Path) -> None:
    status, output, modules = command("scripts/predict.py", f"ckpt_path={checkpoint}", "index=8")
    assert status == 0 and "prediction:" in output, output[-2000:]
    assert "torch" in modules and not modules & {*TRAINING_ONLY, "matplotlib"}, sorted(modules & {*TRAINING_ONLY})
    status, output, modules = command("scripts/export.py", f"ckpt_path={checkpoint}", f"out={tmp_path / 'page'}")
    assert status == 0 and (tmp_path / "page" / "index.html").exists(), output[-2000:]
    assert "torch" in modules and not modules & {*TRAINING_ONLY, "matplotlib"}, sorted(modules & {*TRAINING_ONLY})
