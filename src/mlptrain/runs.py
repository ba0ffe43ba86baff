"""Runs as Python objects, for a notebook (Jupyter, VS Code, Colab) or a script: the command line's runs, with the
same overrides, configs, checks, folders and records, given back as a `Run` to look at.

    import mlptrain
    run = mlptrain.run("model.activation=tanh", "loss=mse", trainer__max_epochs=3)
    run.summary["test_acc"], run.metrics, run.pictures(), run.page(), run.predict(images)
    sweep = mlptrain.sweep("model.activation=sigmoid,tanh,relu", trainer__max_epochs=3)   # one population
    run = mlptrain.load("outputs/2026-12-03/10-00-00-000000")                              # any finished run

Overrides are the command line's (`key=value`, `group=option`, `+key=value`); a keyword is one too, its dots
written as double underscores (`trainer__max_epochs=3` is `trainer.max_epochs=3`). A run goes through Hydra's own
application (frameworks.hydra_application), as `mlptrain train` does: its folder under outputs/ (or path=), its
.hydra/ and train.log, and for a sweep its launcher (a population by default: the jobs that stack train as one)
and its sweep report. What that changes in the process is put back when the call returns: the loggers Hydra
configures (the root logger among them), the warning filters, the signal handlers and Hydra's global state; so a
cell runs again, and a notebook's own logging and warnings stay as they were. A user's mistake is raised as the
command line's one paragraph (ConfigError, DataError, ...: mlptrain.errors), with no traceback through Hydra's
internals. Ctrl-C (the kernel's interrupt) stops training with its checkpoints kept and raises RunInterrupted,
which says how to go on: the same call with resume="auto" and path= the run's folder.
"""

import csv
import json
import logging
import signal
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mlptrain.errors import ConfigError, MlptrainError, RunInterrupted

CONFIGS = "mlptrain.conf"


def run(*overrides: str, path: str | Path | None = None, **settings: Any) -> "Run":
    """Train (or evaluate, train=false) the run the overrides describe, as `mlptrain train` does; its Run.

    path: its folder (hydra.run.dir; default: a new one under outputs/). resume="auto" goes on with the run
    in path where it stopped."""
    arguments = _arguments(overrides, settings)
    if path is not None:
        arguments.append(f"hydra.run.dir={_value(str(path))}")
    folders: list[Path] = []
    with _as_it_was():
        try:
            failed = _application().run("train", _task(folders), arguments).return_value
            if isinstance(failed, _Failed):
                raise failed.error
        except RunInterrupted as error:  # its paragraph, saying how to go on from here rather than from a shell
            from mlptrain.train import stopped_where

            raise RunInterrupted(
                f"{stopped_where(folders[-1], error.epoch)}. To go on where it stopped, call mlptrain.run again with "
                f'the same overrides and resume="auto", path="{folders[-1].resolve()}".',
                error.epoch,
            ) from None
    return Run(folders[-1])


def sweep(*overrides: str, path: str | Path | None = None, **settings: Any) -> "Sweep":
    """Train every job of the sweep the overrides describe (`model.activation=sigmoid,tanh seed=1,2`), as
    `mlptrain train -m` does, as one population where the jobs stack (hydra/launcher=population, unless the
    overrides name another launcher); its Sweep, whose table compares them.

    path: the sweep's folder (hydra.sweep.dir; default: a new one under outputs/multirun/)."""
    arguments = _arguments(overrides, settings)
    if not any(argument.startswith("hydra/launcher=") for argument in arguments):
        arguments.append("hydra/launcher=population")
    folder = (
        Path(path) if path is not None else Path("outputs/multirun") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    )
    arguments.append(f"hydra.sweep.dir={_value(str(folder))}")
    with _as_it_was():
        try:
            _application().multirun("train", _task([]), arguments)
        except SystemExit as stop:  # cli.SweepStatus: no job completed; its paragraph was logged
            raise MlptrainError(
                f"No job of the sweep in {folder.resolve()} completed: each job's paragraph above, and its "
                "summary.json, says what went wrong and how to go on."
            ) from stop
    return Sweep(folder)


def load(path: str | Path) -> "Run":
    """The run in `path` (a run's folder, as `run` or `mlptrain train` left it), as a Run."""
    folder = Path(path)
    if not (folder / "config.yaml").is_file():
        raise ConfigError(
            f"{folder} is not a run's folder: it has no config.yaml. Give the folder a run wrote (the last line of "
            "its log names it: `Run directory: ...`), such as outputs/<date>/<time>."
        )
    return Run(folder)


class Run:
    """A run's folder and what it holds: its summary, its metrics, its trained network, its pictures and its page.
    Everything is read from the files the run wrote, so a Run of a finished run's folder (`load`) is the same."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()

    def __repr__(self) -> str:
        summary = self.summary
        result = f", test accuracy {summary['test_acc']:.4f}" if summary.get("test_acc") is not None else ""
        return f"Run({str(self.path)!r}: {summary.get('status', 'not started')}{result})"

    @property
    def summary(self) -> dict[str, Any]:
        """summary.json: status, test_acc, best_val_acc, wall time, checkpoints, versions ({} before it exists)."""
        file = self.path / "summary.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    @property
    def config(self) -> dict[str, Any]:
        """The run's config, resolved, as config.yaml holds it."""
        import yaml

        return yaml.safe_load((self.path / "config.yaml").read_text())

    @property
    def metrics(self) -> Any:
        """metrics.csv: one row per epoch (and the test's last): a pandas DataFrame where pandas is installed,
        else a list of dicts."""
        with (self.path / "metrics.csv").open(newline="") as file:
            rows = [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(file)]
        return _table(rows)

    @property
    def checkpoint(self) -> Path:
        """The checkpoint the run was tested with (its best val/acc), else its last."""
        tested = self.summary.get("tested_checkpoint")
        for candidate in (tested, self.path / "checkpoints" / "best.ckpt", self.path / "checkpoints" / "last.ckpt"):
            if candidate and Path(candidate).is_file():
                return Path(candidate)
        raise ConfigError(f'The run in {self.path} has no checkpoint yet: train it first (resume="auto" goes on).')

    @cached_property
    def trained(self) -> Any:
        """The checkpoint's network with its cost and hyperparameters (predict.Trained)."""
        from mlptrain.predict import load_trained

        return load_trained(self.checkpoint)

    @property
    def model(self) -> Any:
        """The trained network, a model.MLP (a torch.nn.Module), in eval mode on the CPU."""
        return self.trained.model

    def probabilities(self, images: Any) -> Any:
        """A probability per digit (N, 10) for MNIST-like images, (N, 28, 28) or (28, 28), pixels 0 to 255."""
        import torch

        images = torch.as_tensor(images)
        if images.dim() == 2:
            images = images[None]
        return self.trained.probabilities_of(images, self.config["data"]["normalize"])

    def predict(self, images: Any) -> Any:
        """The digit the network predicts (N,) for MNIST-like images, (N, 28, 28) or (28, 28), pixels 0 to 255."""
        return self.probabilities(images).argmax(-1)

    def pictures(self) -> list[Path]:
        """The report's pictures, shown inline in a notebook (IPython's display); their paths."""
        from mlptrain.report import PICTURES

        files = [self.path / file for file, _ in PICTURES if (self.path / file).is_file()]
        _show_images(files)
        return files

    def page(self, height: int = 720) -> Any:
        """The page (draw a digit and watch the network decide) inline: an iframe holding it whole (srcdoc), so
        no server is needed. Written into the run's page/ first where report.page was off."""
        from html import escape

        page = self.path / "page" / "index.html"
        if not page.is_file():
            from mlptrain.page import page_of

            page_of(self.checkpoint, page.parent)
        text = page.read_text(encoding="utf-8")
        frame = (
            f'<div><iframe srcdoc="{escape(text)}" style="width: 100%; height: {height}px; border: 0"></iframe></div>'
        )
        try:
            from IPython.display import HTML
        except ImportError:
            return page
        return HTML(frame)


class Sweep:
    """A sweep's folder: its jobs as Runs, and sweep_jobs.csv (one row per job) as its table."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()

    def __repr__(self) -> str:
        return f"Sweep({str(self.path)!r}: {len(self.runs)} jobs)"

    @property
    def runs(self) -> list[Run]:
        jobs = [folder.parent for folder in self.path.glob("*/.hydra") if folder.parent.name.isdigit()]
        return [Run(job) for job in sorted(jobs, key=lambda job: int(job.name))]

    @property
    def table(self) -> Any:
        """sweep_jobs.csv: a pandas DataFrame where pandas is installed, else a list of dicts."""
        with (self.path / "sweep_jobs.csv").open(newline="") as file:
            return _table([{key: _number(value) for key, value in row.items()} for row in csv.DictReader(file)])

    def _repr_html_(self) -> str | None:
        table = self.table
        return table.to_html() if hasattr(table, "to_html") else None

    def pictures(self) -> list[Path]:
        """val_acc.png, every job's validation accuracy per epoch, shown inline; its path."""
        files = [self.path / "val_acc.png"] if (self.path / "val_acc.png").is_file() else []
        _show_images(files)
        return files


# -- overrides ---------------------------------------------------------------------------------------------------


def _arguments(overrides: Sequence[str], settings: dict[str, Any]) -> list[str]:
    for override in overrides:
        if not isinstance(override, str):
            raise ConfigError(
                f'Overrides are strings such as "model.activation=tanh", not {override!r}. Give other values as '
                "keywords: model__hidden=[32, 16]."
            )
    return [*overrides, *(f"{key.replace('__', '.')}={_value(value)}" for key, value in settings.items())]


def _value(value: Any) -> str:
    """A Python value as Hydra's override grammar writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_value(item) for item in value) + "]"
    text = str(value)
    if text and all(ch.isalnum() or ch in "._-/:" for ch in text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# -- running as the command line does, and leaving the process as it was --------------------------------------


def _application() -> Any:
    from hydra.core.plugins import Plugins

    # Hydra's plugin scan runs its core plugins' modules again, making new classes: first, as @hydra.main has it,
    # so that the launchers' sweeper (hydra_plugins.mlptrain_population) subclasses the BasicSweeper Hydra uses.
    Plugins.instance()
    from mlptrain.frameworks import hydra_application

    return hydra_application(CONFIGS, "train")


class _Failed:
    """A run's mistake, handed back through Hydra as the job's value (raised inside it, Hydra would print a line
    of its own and the traceback would go through its frames)."""

    def __init__(self, error: MlptrainError) -> None:
        self.error = error


def _task(folders: list[Path]) -> Any:
    """The job Hydra runs: the command line's (cli.main), handing a mistake back instead of exiting."""

    def task(cfg: DictConfig) -> Any:
        from mlptrain.cli import main

        folders.append(Path(cfg.output_dir))
        try:
            return main(cfg, command_line=False)
        except MlptrainError as error:
            return _Failed(error)

    return task


@contextmanager
def _as_it_was() -> Iterator[None]:
    """Run a Hydra job here, then put back what it changes in the process; raise what went wrong as the
    command line's paragraph."""
    with warnings.catch_warnings():  # first: the filters that the imports below and the run's add are dropped
        with _logging_signals_and_hydra_as_they_were():
            try:
                yield
            except (HydraException, OmegaConfBaseException) as error:  # the overrides do not compose
                raise ConfigError(_composition_paragraph(error)) from None
            except MlptrainError as error:
                raise error.with_traceback(None) from None  # the paragraph, not Hydra's frames


@contextmanager
def _logging_signals_and_hydra_as_they_were() -> Iterator[None]:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from mlptrain import signals

    loggers = _loggers()
    handlers = {handler for logger in loggers.values() for handler in logger.handlers}
    saved = {name: (log.level, list(log.handlers), log.propagate, log.disabled) for name, log in loggers.items()}
    main = threading.current_thread() is threading.main_thread()
    handled = {signum: signal.getsignal(signum) for signum in signals.DEFERRED} if main else {}
    held = signals.holding()
    hydra = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    hydra_config = HydraConfig.instance().cfg
    try:
        yield
    finally:
        for name, logger in _loggers().items():
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            level, kept, propagate, disabled = saved.get(name, (logging.NOTSET, [], name != "root", False))
            logger.setLevel(level)
            logger.handlers[:] = kept
            logger.propagate, logger.disabled = propagate, disabled
        if not held:
            signals.let_go()  # a launcher's hold() (hydra/launcher=population)
        for signum, handler in handled.items():
            if handler is not None:
                signal.signal(signum, handler)
        GlobalHydra.instance().clear()
        if hydra is not None:
            GlobalHydra.instance().initialize(hydra)
        HydraConfig.instance().cfg = hydra_config


def _loggers() -> dict[str, logging.Logger]:
    found = {
        name: logger for name, logger in logging.Logger.manager.loggerDict.items() if isinstance(logger, logging.Logger)
    }
    return {"root": logging.getLogger(), **found}


def _composition_paragraph(error: BaseException) -> str:
    causes, cause = [], error
    while cause is not None and len(causes) < 3:
        text = " ".join(line.strip() for line in str(cause).splitlines() if line.strip())
        if text and text not in causes:
            causes.append(text)
        cause = cause.__cause__
    return (
        f"The overrides do not make a valid config: {' '.join(causes)}. Each is key=value over mlptrain's configs "
        "(`mlptrain train --help` lists the groups and keys; a key they do not have needs a leading +)."
    )


# -- showing ------------------------------------------------------------------------------------------------------


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _table(rows: list[dict[str, Any]]) -> Any:
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows)


def _show_images(files: Sequence[Path]) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return
    if get_ipython() is not None:
        for file in files:
            display(Image(filename=str(file)))
