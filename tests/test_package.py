"""mlptrain as an installed package: a wheel built with `python -m build`, installed into a fresh virtual
environment, runs from a directory outside the checkout (`mlptrain train`, `predict`, `page`), with its configs
from inside the package and MNIST from the user's cache; and where MNIST is missing, one paragraph says what to do."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlptrain.mnist import EMBEDDED_DIR, SHA256, cache_dir, data_dir, default_dir
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # a wheel, a virtual environment and subprocesses


def test_mnist_is_found_where_data_dir_null_looks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLPTRAIN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_dir() == EMBEDDED_DIR  # in the checkout: its copy
    assert cache_dir() == tmp_path / "cache" / "mlptrain"
    monkeypatch.setenv("MLPTRAIN_DATA", str(tmp_path / "mine"))
    assert default_dir() == data_dir(None) == tmp_path / "mine"
    assert data_dir("~/x") == Path.home() / "x"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding the wheel of this checkout (not an editable install), with torch and the
    other dependencies seen from this environment's site-packages: its bin/ folder."""
    folder = tmp_path_factory.mktemp("package")
    source = folder / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".git", "outputs", "*-ubyte", "__pycache__", "*.egg-info"),
    )
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(folder / "dist"), str(source)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (folder / "dist").glob("mlptrain-*.whl")
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)]
    installed = subprocess.run(pip, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv / "bin"


def _command(bin_dir: Path, cwd: Path, *arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(bin_dir / "mlptrain"), *arguments], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_wheel_trains_predicts_and_draws_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache = tmp_path / "cache"
    raw = cache / "mlptrain" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in SHA256:  # the four files, where a user's cache holds them
        shutil.copyfile(EMBEDDED_DIR / "MNIST" / "raw" / f"{name}.gz", raw / f"{name}.gz")
    env = {key: value for key, value in os.environ.items() if key not in ("MLPTRAIN_DATA", "PYTHONPATH")}
    env.update(XDG_CACHE_HOME=str(cache), PATH=f"{installed}:{env['PATH']}")
    where = subprocess.run(
        [str(installed / "python"), "-c", "import mlptrain; print(mlptrain.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(installed.parent)), (
        where.stdout + where.stderr
    )  # the wheel's, not the checkout's

    trained = _command(installed, elsewhere, "train", "trainer.max_epochs=1", "data.train_size=5000", env=env)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    (run_dir,) = (elsewhere / "outputs").glob("*/*")
    assert (run_dir / "report.md").is_file() and (run_dir / "train.log").is_file()
    assert sorted(path.name for path in elsewhere.iterdir()) == ["outputs"]
    best = run_dir / "checkpoints" / "best.ckpt"

    predicted = _command(installed, elsewhere, "predict", f"ckpt_path={best}", "index=0", env=env)
    assert predicted.returncode == 0 and "prediction: " in predicted.stdout, predicted.stderr[-3000:]
    page = _command(installed, elsewhere, "page", f"ckpt_path={best}", env=env)
    assert page.returncode == 0 and (run_dir / "page" / "index.html").is_file(), page.stderr[-3000:]
    module = subprocess.run(
        [str(installed / "python"), "-m", "mlptrain", "report", str(run_dir)],
        cwd=elsewhere, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert module.returncode == 0 and (run_dir / "sweep_report.md").is_file(), module.stderr  # python -m mlptrain

    # The launchers are Hydra plugins the wheel carries: a sweep trains as one population from here too.
    swept = _command(installed, elsewhere, "train", "-m", "hydra/launcher=population", "seed=1,2",
                     "trainer.max_epochs=1", "data.train_size=2000", "report.enabled=false", env=env)  # fmt: skip
    assert swept.returncode == 0 and "Population of 2 members" in swept.stdout + swept.stderr, swept.stderr[-3000:]

    # No MNIST in the cache, and no network: one paragraph that says where to put the files, and exit status 1.
    shutil.rmtree(cache)
    offline = {**env, "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    missing = _command(installed, elsewhere, "train", "trainer.max_epochs=1", env=offline)
    assert missing.returncode == 1
    assert f"{cache / 'mlptrain' / 'MNIST' / 'raw'}" in missing.stdout + missing.stderr
    assert "data.download=true" in missing.stdout + missing.stderr and "Traceback" not in missing.stderr
    fetched = _command(installed, elsewhere, "train", "trainer.max_epochs=1", "data.download=true", env=offline)
    assert fetched.returncode == 1, fetched.stdout[-2000:]
    assert "Downloading MNIST into" in fetched.stdout + fetched.stderr and "failed" in fetched.stdout + fetched.stderr
    assert "Traceback" not in fetched.stderr
