"""The command lines' shared body: a quiet console, and a user's mistake as one paragraph and exit status 1.

Imports neither torch nor Lightning: a command pays for them once its config has passed mlptrain.config.check,
so that a mistake is told in the time Hydra takes to compose the config."""

import atexit
import gc
import logging
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from mlptrain.config import check
from mlptrain.errors import MlptrainError

log = logging.getLogger(__name__)


class _DropLines(logging.Filter):
    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


# Lines other libraries print that say nothing about this run: an advertisement, a TPU count on machines
# without one, a note on how Lightning counts steps; and, on a machine without CUDA, torch's remark that
# it has no CUDA compiler while it compiles for the CPU.
_LIGHTNING_NOISE = _DropLines(
    "💡 Tip:", "TPU available: False", "Loading `train_dataloader` to estimate number of stepping batches"
)
_NO_CUDA_NOISE = _DropLines("No CUDA runtime is found")
# logger=mlflow: MLflow's SQLite store says so each time it is opened, the first time and every time after.
_MLFLOW_STORE_NOISE = _DropLines("Creating initial MLflow database tables", "Updating database tables")
# Lightning logs "Received SIGTERM" from inside its signal handler, which Python runs between any two bytecodes of
# the main thread: also in the middle of a log line's write to train.log, where a second write into the same
# buffered file is refused ("reentrant call") with a traceback on the console. The run's own message says it.
_SIGTERM_NOISE = _DropLines("[rank: 0] Received SIGTERM", "Received SIGTERM", "Bypassing SIGTERM")


def quiet_console() -> None:
    """Silence, narrowly (by logger or module, and message) and in this one place, what is not ours to say.
    Installed once per process, by main()."""
    import torch
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_LIGHTNING_NOISE)  # a filter already there is not added twice
    if not torch.cuda.is_available():
        logging.getLogger("torch.utils.cpp_extension").addFilter(_NO_CUDA_NOISE)
    logging.getLogger("mlflow.store.db.utils").addFilter(_MLFLOW_STORE_NOISE)
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").addFilter(_SIGTERM_NOISE)
    # Lightning 2.6 calls an API that torch 2.10+ deprecates; nothing a user can change.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    # Each epoch value is a torchmetrics compute(), which already gathers every process's counts.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\(.*sync_dist=True\)`")
    if "SLURM_JOB_ID" not in os.environ:
        # On a cluster's login node (SLURM installed, this process no job of it), Lightning hints twice a run
        # that srun could start it. Inside a SLURM job, where leaving srun out is a real mistake, it still says so.
        warnings.filterwarnings(
            "ignore",
            message="The `srun` command is available on your system but is not used",
            category=PossibleUserWarning,
        )


def main(cfg: DictConfig, task: Callable[[DictConfig], Any] | None = None, command_line: bool = True) -> Any:
    """A command line's body: run `task` (mlptrain.train.train by default, or compare), and turn a user's mistake
    into one paragraph and exit status 1. command_line=False (mlptrain.runs, in a notebook's process): signals are
    left to their handlers, and the mistake is raised, as the paragraph, where a command line would exit; a job of
    a sweep logs it and returns None in both."""
    signals = None
    try:
        check(cfg)  # before torch and Lightning load: a mistake costs what composing the config costs
        quiet_console()
        if command_line:
            from mlptrain import signals

            signals.hold()  # SIGTERM, SIGINT and SIGUSR1 are taken during training alone (mlptrain.signals)
        if task is None:
            from mlptrain.train import train as task
        return task(cfg)
    except MlptrainError as error:
        in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        if not command_line and not in_sweep:
            raise
        log.error("%s", error)
        if in_sweep:
            return None  # one failed job of a sweep must not stop the others; its summary.json says why
        sys.exit(1)
    finally:
        if signals is not None:
            signals.drain()


class SweepStatus(Callback):
    """A -m sweep's end (conf/train.yaml, hydra.callbacks): its exit status, 1 when none of its jobs completed,
    with one paragraph that counts them by status (a job that failed says why itself, in its log and
    summary.json); and, where some completed and `report` is on, the sweep's comparison (sweep_report.md,
    sweep_jobs.csv, val_acc.png: mlptrain.sweep_report), named in the last log line; with logger=mlflow, the
    sweep's MLflow run. Any launcher, a population's and Optuna's search included: it reads the jobs' files."""

    def __init__(self, report: bool = True) -> None:
        self.report = report

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mlptrain.rundir import run_status
        from mlptrain.tracking import finish_sweep

        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = sorted(folder.parent for folder in sweep_dir.glob("**/.hydra") if folder.is_dir())
        statuses = Counter(run_status(job) or "refused before training" for job in jobs)
        failed = {status: count for status, count in statuses.items() if status != "completed"}
        if failed and statuses["completed"]:
            log.warning(
                "%d of the sweep's %d jobs did not complete (%s): see each one's summary.json or log in %s",
                sum(failed.values()), len(jobs), _counted(failed), sweep_dir.resolve(),
            )  # fmt: skip
        if statuses["completed"] and self.report:
            _write_sweep_report(sweep_dir)
        finish_sweep(sweep_dir, jobs)  # logger=mlflow (a job's config.yaml says so): the sweep's MLflow run
        if not jobs or statuses["completed"]:
            return
        log.error(
            "No job of the sweep completed (of %d: %s), so the sweep ends with exit status 1. Each job's own "
            "paragraph above (and its summary.json or log in %s) says what went wrong and how to go on.",
            len(jobs), _counted(failed), sweep_dir.resolve(),
        )  # fmt: skip
        sys.exit(1)


def _write_sweep_report(sweep_dir: Path) -> None:
    """The sweep's comparison, as scripts/report.py writes it; a failure to write it is one warning: the jobs'
    own records are complete, and scripts/report.py writes it later."""
    from mlptrain.errors import MlptrainError
    from mlptrain.sweep_report import summarize

    try:
        summarize(sweep_dir)
    except (MlptrainError, OSError) as error:
        log.warning(
            "The sweep's report could not be written (%s); `python scripts/report.py %s` writes it.", error, sweep_dir
        )
        return
    log.info(
        "Sweep report: %s (the jobs side by side; one row per job in sweep_jobs.csv, their curves in val_acc.png)",
        (sweep_dir / "sweep_report.md").resolve(),
    )


def _counted(statuses: dict[str, int]) -> str:
    return ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))


def exit_without_collecting() -> None:
    """Let this process end without CPython's last garbage collection, which walks every object torch's and
    Lightning's imports made (1.5-2 s on 2 cores, for nothing anyone sees). Registered by a command line's
    `__main__` block; at exit, every file that matters was written durably (flushed, fsynced, renamed) by then,
    and handlers registered before it (logging's flush) still run after it."""
    atexit.unregister(_freeze)  # once, however often a harness runs the block in one process
    atexit.register(_freeze)


def _freeze() -> None:
    gc.disable()
    gc.freeze()  # CPython's documented API: what is frozen is left out of every collection, the last one too
