"""A run's directory: what it resumes from, and what it writes besides the checkpoints (summary.json, CSV files)."""

import csv
import functools
import importlib.metadata
import json
import logging
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


def library_versions() -> dict[str, str]:
    """Versions that decide what a run computes, stored with every summary and checkpoint."""
    return dict(_versions())  # a copy: the caller may change it


@functools.cache  # reading the packages' metadata takes ~15 ms, and every checkpoint of every run records them
def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "cuda": str(torch.version.cuda)}
    for package in ("mlptrain", "torch", "lightning", "torchmetrics", "torchvision", "hydra-core", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def resume_path(resume: str | None, ckpt_path: str | None, run_dir: Path) -> str | None:
    """The checkpoint training starts from: ckpt_path, or with resume=auto the newest in the run directory."""
    if resume is None:
        return ckpt_path
    # last.ckpt: the end of an epoch, or where a SIGTERM stopped the run; hpc_ckpt_N.ckpt: Lightning's
    # SLURM requeue (SIGUSR1) writes these into the run directory.
    candidates = [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
    found = [path for path in candidates if path.is_file()]
    if not found:
        log.info("resume=auto: no checkpoint in %s yet, so training starts from the beginning", run_dir.resolve())
        return None
    newest = max(found, key=lambda path: path.stat().st_mtime)
    log.info("resume=auto: resuming from %s", newest.resolve())
    return str(newest)


def keep_metrics(trainer: L.Trainer, previous: str) -> None:
    """Put back the rows of metrics.csv that CSVLogger deletes when a resumed run reuses its directory."""
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger) and rank_zero_only.rank == 0:
            writer = logger.experiment  # made now: this is where the old file is deleted
            Path(writer.metrics_file_path).write_text(previous)
            writer.metrics_keys = sorted(previous.splitlines()[0].split(","))


def write_summary(
    run_dir: Path, summary: dict[str, Any], start: float, trainer: L.Trainer, checkpoints: Any, **fields: Any
) -> None:
    """summary.json; `checkpoints`: the run's callbacks.Checkpoints."""
    best = checkpoints.best.best_model_score
    summary.update(
        fields,
        best_val_acc=float(best) if best is not None else None,
        epochs=trainer.current_epoch,
        wall_time_s=round(time.perf_counter() - start, 3),
    )
    summary.setdefault("checkpoints", checkpoints.paths())
    # Optimizer updates (Lightning's global_step counts training steps, of several updates each on the fast path)
    summary.setdefault("global_steps", getattr(trainer.lightning_module, "updates_done", trainer.global_step))
    if rank_zero_only.rank == 0:  # one summary per run, whatever the number of processes
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows of dicts as a CSV file, columns in the order they first appear."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(rows)
