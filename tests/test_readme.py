"""Every `python ...` command in README.md runs as written, with the run shrunk to a few batches."""

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_in_process, run_python

pytestmark = pytest.mark.slow  # subprocesses: see pyproject.toml's markers

SHRINK = [  # and no pictures: tests/test_plots.py draws every one of them
    "report.enabled=false",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.num_sanity_val_steps=0",
]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.startswith("python ")]


def run(args: list[str], run_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Hydra commands (train.py, scripts/compare.py) shrunk and writing to run_dir; each command in this process (it
    starts in a second, not in ten), a sweep (-m) in a process of its own: exit status, output."""
    if args[0] in ("train.py", "scripts/compare.py"):
        args = [*args, *SHRINK, f"hydra.{'sweep' if '-m' in args else 'run'}.dir={run_dir}"]
    elif args[0] == "scripts/plot_activations.py":
        args = [*args, f"out={run_dir / 'activations.png'}"]  # not over the committed picture
    elif args[0] == "scripts/predict.py":  # its pictures into run_dir, not the working directory
        args = [re.sub(r"^(network|nudges)=", rf"\1={run_dir}/", arg) for arg in args]
    elif args[0] == "scripts/export.py":  # the page or model.onnx into run_dir, not the checkpoint's run
        args = [*args, f"out={run_dir / ('model.onnx' if 'format=onnx' in args else 'page')}"]
    if "-m" not in args:
        return run_in_process(args[0], args[1:], capsys)
    done = run_python(*args)
    return done.returncode, done.stdout + done.stderr


def checkpoint(tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> Path:
    run_dir = tmp_path_factory.getbasetemp() / "for-readme"
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():  # made once, by the first command that needs it
        status, output = run(["train.py"], run_dir, capsys)
        assert status == 0, output
    return run_dir / "checkpoints" / "last.ckpt"


def test_readme_opens_with_install_train_test() -> None:
    first_block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S).group(1)
    commands = [shlex.join(shlex.split(line, comments=True)) for line in first_block.splitlines()]
    assert commands == ["pip install -e '.[dev]'", "python train.py", "pytest"]
    assert len(readme_commands()) >= 10


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(
    command: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    args = shlex.split(command, comments=True)
    if any(arg.startswith("ckpt_path=") for arg in args):
        ckpt = checkpoint(tmp_path_factory, capsys)
        args = [re.sub(r"^ckpt_path=.*", f"ckpt_path={ckpt}", arg) for arg in args]
    status, output = run(args[1:] if args[0] == "python" else args, tmp_path, capsys)
    assert status == 0, f"{command}\n{output[-4000:]}"
    made = {
        "train.py": "summary.json",
        "scripts/compare.py": "comparison.md",
        "scripts/plot_activations.py": "activations.png",
        "scripts/export.py": "model.onnx" if "format=onnx" in args else "page/index.html",
    }
    if "-m" in args:  # a sweep: a folder per job
        assert len(list(tmp_path.glob(f"*/{made[args[1]]}"))) == len(re.search(r"seed=(\S+)", command)[1].split(","))
    elif args[1] in made:
        assert (tmp_path / made[args[1]]).is_file()
    else:
        assert "prediction: " in output
        for picture in re.findall(r"(?:network|nudges)=(\S+)", command):
            assert (tmp_path / picture).is_file()
