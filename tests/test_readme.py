"""Every `python ...` command in README.md runs as written, with the run shrunk to a few batches."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_python

pytestmark = pytest.mark.slow  # subprocesses: see pyproject.toml's markers

SHRINK = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.num_sanity_val_steps=0",
]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.startswith("python ")]


def run(args: list[str], run_dir: Path) -> subprocess.CompletedProcess:
    """Hydra commands (train.py, scripts/compare.py) shrunk and writing to run_dir; the other scripts as written."""
    if args[0] in ("train.py", "scripts/compare.py"):
        args = [*args, *SHRINK, f"hydra.run.dir={run_dir}"]
    elif args[0] == "scripts/plot_activations.py":
        args = [*args, f"out={run_dir / 'activations.png'}"]  # not over the committed picture
    return run_python(*args)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("for-readme")
    done = run(["train.py"], run_dir)
    assert done.returncode == 0, done.stderr
    return run_dir / "checkpoints" / "last.ckpt"


def test_readme_opens_with_install_train_test() -> None:
    first_block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S).group(1)
    commands = [shlex.join(shlex.split(line, comments=True)) for line in first_block.splitlines()]
    assert commands == ["pip install -e '.[dev]'", "python train.py", "pytest"]
    assert len(readme_commands()) >= 10


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(command: str, checkpoint: Path, tmp_path: Path) -> None:
    args = [re.sub(r"^ckpt_path=.*", f"ckpt_path={checkpoint}", arg) for arg in shlex.split(command, comments=True)]
    done = run(args[1:] if args[0] == "python" else args, tmp_path)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    made = {
        "train.py": "summary.json",
        "scripts/compare.py": "comparison.md",
        "scripts/plot_activations.py": "activations.png",
    }
    if args[1] in made:
        assert (tmp_path / made[args[1]]).is_file()
    else:
        assert "prediction: " in done.stdout
