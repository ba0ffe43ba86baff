"""A run's directory: who holds it (run.lock), what it resumes from, and every file it writes, durably
(checkpoints through member_checkpoints.MemberCheckpointIO, metrics.csv from the history the checkpoints hold,
summary.json). Imports neither torch nor Lightning until a function needs them: the launchers read run statuses
here when Hydra discovers them, `--help` included.

A file that matters is never written in place: it goes to a temporary file in the same directory, which is
flushed and fsynced, then moved over the old one with os.replace, and then the directory is fsynced. A kill or
a full disk at any moment leaves either the old file or the new one, never a piece of either."""

import csv
import errno
import fcntl
import functools
import importlib.metadata
import io
import itertools
import json
import logging
import os
import platform
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mlptrain.errors import CheckpointError, ConfigError, RunDirError

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
DAMAGED = ".damaged"  # a checkpoint that does not load is renamed with this added, and skipped
_TEMPORARY = ".tmp-"  # in the names of files being written: .<name>.tmp-<pid>-<n>
_written = itertools.count()  # makes each temporary name unique, also for a write a signal handler starts


def library_versions() -> dict[str, str]:
    """Versions that decide what a run computes, stored with every summary and checkpoint."""
    return dict(_versions())  # a copy: the caller may change it


@functools.cache  # reading the packages' metadata takes ~15 ms, and every checkpoint of every run records them
def _versions() -> dict[str, str]:
    import torch

    versions = {"python": platform.python_version(), "cuda": str(torch.version.cuda)}
    for package in ("mlptrain", "torch", "lightning", "torchmetrics", "torchvision", "hydra-core", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def write_durably(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write `path` through write(file) so that a crash leaves the old file or the new one, whole. A write that
    fails (a full disk, a quota) raises OSError naming `path`, whatever the writer (torch.save) made of it."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}{_TEMPORARY}{os.getpid()}-{next(_written)}")
    try:
        with temporary.open("wb") as opened:
            file = _Watched(opened)
            try:
                write(file)  # type: ignore[arg-type]
                file.flush()
            except Exception as error:
                if file.failed is None or file.failed is error:
                    raise
                raise file.failed from error  # torch.save turns it into "RuntimeError: unexpected pos ..."
            os.fsync(opened.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.filename is None:  # a write or a flush that failed: the file it was for
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


class _Watched:
    """A file that keeps the OSError its write or flush raised (`failed`), for write_durably to re-raise."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.failed: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.failed = error
            raise

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as error:
            self.failed = error
            raise

    def __getattr__(self, name: str) -> Any:  # tell, seek, fileno, ...: the file's own
        return getattr(self.file, name)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # the rename itself is in the directory's entries
    finally:
        os.close(descriptor)


def yaml_text(node: Any) -> str:
    """A plain container (dicts, lists, values) as YAML, as OmegaConf.to_yaml writes a config: the same text,
    through libyaml's C emitter where PyYAML has it (7x faster: a population writes a config per member)."""
    import yaml  # Hydra's own dependency

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(node, Dumper=dumper, default_flow_style=False, allow_unicode=True, sort_keys=False)


def write_text_durably(path: Path, text: str) -> None:
    write_durably(path, lambda file: file.write(text.encode()))


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows of dicts as a CSV file, columns in the order they first appear, written durably."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_durably(path, text.getvalue())


def running_summary(run_dir: Path, seed: int, parameters: int, trainer: "L.Trainer") -> dict[str, Any]:
    """summary.json's first fields, a run's and a population member's alike; `summarize` completes them."""
    device = trainer.strategy.root_device
    if device.type == "cuda":
        import torch  # loaded with the trainer

        device = f"{device} ({torch.cuda.get_device_name(device)})"
    return {
        "status": "running",
        "run_dir": str(run_dir.resolve()),
        "seed": seed,
        "parameters": parameters,
        "device": str(device),
        "processes": trainer.world_size,
        "versions": library_versions(),
    }


def summarize(
    summary: dict[str, Any], start: float, trainer: "L.Trainer", checkpoints: Any, **fields: Any
) -> dict[str, Any]:
    """summary.json's content, completed from the trainer; `checkpoints`: the run's callbacks.Checkpoints."""
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
    return summary


def _rank_zero() -> bool:
    """Whether this is the run's first process (or its only one): it writes the run's records."""
    from lightning.pytorch.utilities import rank_zero_only  # records are written while training: Lightning is loaded

    return rank_zero_only.rank == 0


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    if _rank_zero():  # one summary per run, whatever the number of processes
        write_text_durably(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


def write_completed(
    run_dir: Path,
    history: Sequence[dict[str, Any]],
    tested: dict[str, Any],
    summary: dict[str, Any],
    report: Callable[[], Any] | None,
    tracker: Any,
    say: Callable[[str], None],
    wait: bool = True,
) -> None:
    """A completed run's records, a population member's alike, in the order that makes summary.json the last
    word: metrics.csv, its history and the test's row (`tested`: epoch, step, test/loss, test/acc); the report,
    which `report` draws; summary.json, status completed with the test's values; the MLflow run, from those files
    (`tracker`, logger=mlflow; `wait`: done on return); then the run's last log lines (`say`)."""
    write_metrics(run_dir, [*history, tested])
    summary.update(status="completed", test_acc=tested["test/acc"], test_loss=tested["test/loss"])
    if report is not None:
        report()
        say(f"Report with pictures: {(run_dir / 'report.md').resolve()}")
    write_summary(run_dir, summary)  # last: a summary that says completed vouches for every file before it
    if tracker is not None:
        tracker.finish(wait=wait)
    checkpoint = summary.get("tested_checkpoint")
    say(f"Test accuracy {tested['test/acc']:.4f}, test loss {tested['test/loss']:.4f} (checkpoint {checkpoint})")
    say(f"Run directory: {run_dir.resolve()}")


def write_failed(
    run_dir: Path, history: Sequence[dict[str, Any]], summary: dict[str, Any], error: str, tracker: Any = None
) -> str:
    """A failed run's records, a population member's alike: metrics.csv as far as it got, summary.json with status
    failed and the error, the MLflow run (logger=mlflow); returns the error's message, with the checkpoints kept."""
    write_metrics(run_dir, history)
    write_summary(run_dir, {**summary, "status": "failed", "error": error})
    if tracker is not None:
        tracker.finish()
    kept = [path for path in summary["checkpoints"].values() if path]
    return error + (f" Checkpoints written before it are kept: {', '.join(kept)}." if kept else "")


# Keys that say how a run is started or shown, not what it computes: the same run, whichever of these it had.
HOW_STARTED = ("resume", "ckpt_path", "progress_bar")


def run_status(run_dir: str | Path) -> str | None:
    """The status a run's summary.json gives (running, completed, failed, interrupted), or None without one."""
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def completed_summary(run_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of a run in `run_dir` that completed with this config (config.yaml), else None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):  # none yet, or unreadable: not a completed run
        return None
    stored = stored_config(run_dir)  # a population's resume reads one per member
    if summary.get("status") != "completed" or stored is None:
        return None
    same = all(stored.get(key) == value for key, value in config.items() if key not in HOW_STARTED)
    return summary if same and stored.keys() == config.keys() else None


# What a run may be resumed with changed (resume=auto into a directory whose config.yaml says otherwise): how it
# is started or shown, and trainer.max_epochs, which extends or shortens it. Any other difference is another run.
MAY_DIFFER_ON_RESUME = (
    *HOW_STARTED,
    "output_dir",  # the same directory, written another way (relative, absolute)
    "trainer.max_epochs",
    "check_finite_every_n_steps",
    "data.root",
    "report.enabled",
    "report.weight_tiles",
    "report.mistakes",
    "report.network_images",
    "report.page",
)
# The files and folders a run writes into its directory (Hydra's .hydra/ and train.log aside): resume=discard
# removes these, and a directory holding any of them holds a run.
RUN_FILES = (
    "config.yaml",
    "summary.json",
    "metrics.csv",
    "checkpoints",
    "report.md",
    "curves.png",
    "confusion.png",
    "confusion.csv",
    "weights.png",
    "mistakes.png",
    "grad_norms.png",
    "network.png",
    "landscape.png",
    "page",
    "tensorboard",
)


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted.key: value}, as a user types it on the command line."""
    items: dict[str, Any] = {}
    for name, node in config.items():
        if isinstance(node, dict) and node:
            items.update(flat(node, f"{prefix}{name}."))
        else:
            items[f"{prefix}{name}"] = node
    return items


def _held_run(run_dir: Path) -> list[str]:
    """The files of a run `run_dir` holds, by name (hpc_ckpt_N.ckpt included); none for a fresh directory."""
    held = [name for name in RUN_FILES if (run_dir / name).exists()]
    return held + sorted(path.name for path in run_dir.glob("hpc_ckpt_*.ckpt"))


def requeued_by_slurm() -> bool:
    """Whether this process is a SLURM job started again by a requeue (preemption, or Lightning's own on the
    time-limit signal): the same command, in the directory its first start wrote, which it goes on with."""
    return os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")


def claim(run_dir: Path, config: dict[str, Any]) -> None:
    """Make sure `run_dir` (held by this process) holds no other run than the one `config` describes.

    A directory holding a run is refused unless this run resumes it (resume=auto, or a SLURM requeue) with the
    same config, but for MAY_DIFFER_ON_RESUME; resume=discard removes that run's files first. Raises RunDirError
    (one paragraph: what the directory holds, the keys that differ, the ways on), leaving the directory as it was."""
    held = _held_run(run_dir)
    if not held:
        return
    where = run_dir.resolve()
    if config.get("resume") == "discard":
        ckpt = config.get("ckpt_path")
        if ckpt is not None and where in Path(ckpt).resolve().parents:
            raise RunDirError(
                f"resume=discard would remove the run in {where}, but ckpt_path={ckpt} is one of its files. Copy "
                "that checkpoint elsewhere first, or give this run another directory (hydra.run.dir=...)."
            )
        _discard(run_dir, held)
        return
    stored = stored_config(run_dir)
    resuming = config.get("resume") == "auto" or requeued_by_slurm()
    if not resuming:
        raise RunDirError(
            f"The directory {where} already holds a run ({_describe(run_dir, stored, held)}), and this one does not "
            "resume it: training there would overwrite its last.ckpt, metrics.csv, summary.json and config.yaml "
            "and leave its best.ckpt among this run's checkpoints. Nothing was changed. To go on with that run, "
            "run its own command with resume=auto; to start this run, give it another directory "
            "(hydra.run.dir=...); to throw the old run away and start this one in its place, add resume=discard."
        )
    if stored is None:
        return  # no record of what it was started with (written first by every run): its checkpoints decide
    old, new = flat(stored), flat(config)
    differ = sorted(
        key
        for key in old.keys() | new.keys()
        if old.get(key, "<absent>") != new.get(key, "<absent>") and key not in MAY_DIFFER_ON_RESUME
    )
    if differ:
        shown = "; ".join(
            f"{key}: {old.get(key, '<absent>')!r} there, {new.get(key, '<absent>')!r} now" for key in differ
        )
        raise RunDirError(
            f"resume=auto would go on with the run in {where}, but that run was started with another config "
            f"({shown}). Resuming would train on from its checkpoint's state under settings it never trained with. "
            "Nothing was changed. Resume it with the config in its config.yaml (only "
            f"{', '.join(MAY_DIFFER_ON_RESUME)} may differ), give this run another directory (hydra.run.dir=...), "
            "or add resume=discard instead of resume=auto to throw the old run away and start this one there."
        )
    before, now = old.get("trainer.max_epochs"), new.get("trainer.max_epochs")
    schedule = old.get("scheduler.name")
    if before == now or schedule not in ("cosine", "onecycle"):
        return
    # The schedule's state is in the checkpoint, with the length it was planned for (T_max, total_steps).
    if schedule == "onecycle" and (now or 0) > (before or 0):
        raise RunDirError(
            f"resume=auto with trainer.max_epochs={now} would extend the run in {where} past the {before} epochs "
            "its one-cycle schedule was planned for, and that schedule cannot step past its last update (the "
            "plan is in the checkpoint). Nothing was changed. Resume it with trainer.max_epochs at most "
            f"{before}, or start a longer run in another directory (hydra.run.dir=...)."
        )
    log.info(
        "resume=auto: trainer.max_epochs is %s now, %s when the run started. The cosine schedule keeps the plan "
        "in its checkpoint: the learning rate reaches scheduler.min_lr at the end of epoch %s%s",
        now, before, before,
        ", and past it rises again along the cosine" if (now or 0) > (before or 0) else ", which this run stops before",
    )  # fmt: skip


def stored_config(run_dir: Path, name: str = "config.yaml") -> dict[str, Any] | None:
    """The config a run directory's config.yaml (or another YAML file there) records, or None (none there, or not
    readable)."""
    import yaml  # Hydra's own dependency

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where PyYAML has it: a sweep reads hundreds
    try:
        stored = yaml.load((run_dir / name).read_text(), Loader=loader)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return stored if isinstance(stored, dict) else None


def _describe(run_dir: Path, stored: dict[str, Any] | None, held: list[str]) -> str:
    """The run a directory holds, in a few words: its status, seed and network, and its files."""
    parts = [f"status {run_status(run_dir) or 'unknown'}"]
    if stored is not None:
        model = stored.get("model") if isinstance(stored.get("model"), dict) else {}
        parts.append(f"seed {stored.get('seed')}, hidden {model.get('hidden')}, {model.get('activation')}")
    return ", ".join(parts) + "; files " + ", ".join(held)


def _discard(run_dir: Path, held: list[str]) -> None:
    """resume=discard: remove the files of the run `run_dir` holds (train.log is emptied), with one log line."""
    import shutil

    for name in held:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    log_file = run_dir / "train.log"
    if log_file.is_file():
        with log_file.open("r+") as file:  # Hydra's handler appends to it: its next line starts the file again
            file.truncate(0)
    _fsync_directory(run_dir)
    log.info(
        "resume=discard: removed the run that %s held (%s); this run starts there afresh",
        run_dir.resolve(),
        ", ".join(held),
    )


def write_metrics(run_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    """metrics.csv, one row per epoch's training, per validation and for the test, from the run's history
    (MLPSystem.history, which every checkpoint holds): a resumed run writes what one that ran through writes."""
    if _rank_zero():
        columns = sorted(dict.fromkeys(key for row in rows for key in row), key=_column_order)
        write_csv(run_dir / "metrics.csv", [{column: row.get(column) for column in columns} for row in rows])


def _column_order(column: str) -> int:
    """epoch, step, train/*, val/*, test/*, the learning rate, grad_norm/*: each group in its order of logging."""
    prefixes = ("epoch", "step", "train/", "val/", "test/", "lr-", "grad_norm/")
    return next((rank for rank, prefix in enumerate(prefixes) if column.startswith(prefix)), len(prefixes))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded without running code: torch.load(weights_only=True) admits tensors and
    plain containers, all that mlptrain's checkpoints hold. Raises CheckpointError (one paragraph) for anything
    else: a missing, truncated or damaged file, another program's file, or a pickle that would run code."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # each of the cases above raises something else: all the same to the user
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if isinstance(error, torch.serialization.pickle.UnpicklingError) and "weights_only" in str(error):
            reason = (
                "it holds Python objects beyond tensors and plain containers, which mlptrain's checkpoints never "
                "do, and loading those could run code of the file's choosing, so it was not loaded"
            )
        raise unloadable(path, reason) from error
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= checkpoint.keys():
        raise unloadable(path, "holds no model state and hyperparameters", loads=True)
    return checkpoint


def unloadable(path: str | Path, reason: str, loads: bool = False) -> CheckpointError:
    """The one paragraph for a checkpoint that cannot be used; `reason`, a few words, also names it in log lines."""
    problem = (
        f"is not an mlptrain checkpoint (it loads, but {reason})"
        if loads
        else f"could not be loaded as an mlptrain checkpoint ({reason})"
    )
    return CheckpointError(
        f"ckpt_path={path} {problem}. Point it at a .ckpt written by train.py, e.g. "
        "outputs/<date>/<time>/checkpoints/best.ckpt.",
        reason,
    )


def _progress(checkpoint: dict[str, Any]) -> tuple[int, int]:
    """How far training had got: the epoch, then the updates made (mid-epoch checkpoints have more)."""
    return int(checkpoint.get("epoch", 0)), int(checkpoint.get("updates_done", checkpoint.get("global_step", 0)))


def resume_path(run_dir: Path, repair: bool = True) -> str | None:
    """resume=auto: the checkpoint of the run directory with the most training that loads, or None (start afresh).

    Candidates: checkpoints/last.ckpt (each epoch's end, or where a SIGTERM or SLURM's time-limit signal stopped
    training), checkpoints/best.ckpt, and the hpc_ckpt_N.ckpt an earlier mlptrain let Lightning write there. One
    that does not load is renamed with `.damaged` added and skipped, with one log line; if none loads,
    CheckpointError. `repair`: whether this process renames and copies files (the one that holds the directory;
    DDP's other processes only choose)."""
    candidates = [*run_dir.glob("hpc_ckpt_*.ckpt"), run_dir / "checkpoints" / "last.ckpt"]
    candidates += [run_dir / "checkpoints" / "best.ckpt"]
    loaded: list[tuple[tuple[int, int], float, Path]] = []
    damaged: list[str] = []
    from mlptrain.frameworks import LOOPS_KEY

    for path in (path for path in candidates if path.is_file()):
        try:
            checkpoint = read_checkpoint(path)
            if LOOPS_KEY not in checkpoint or "optimizer_states" not in checkpoint:
                raise unloadable(path, "holds weights only, not the state training resumes from", loads=True)
        except CheckpointError as error:
            if not repair:
                continue
            aside = path.with_name(path.name + DAMAGED)
            os.replace(path, aside)
            log.warning(
                "resume=auto: %s does not load (%s), so it is skipped and kept as %s", path, error.reason, aside
            )
            damaged.append(str(aside))
            continue
        loaded.append((_progress(checkpoint), path.stat().st_mtime, path))
    if loaded:
        progress, _, newest = max(loaded)
        last = run_dir / "checkpoints" / "last.ckpt"
        progress_of_last = next((done for done, _, path in loaded if path == last), None)
        if repair and newest != last and (progress_of_last is None or progress_of_last < progress):
            # last.ckpt always holds the newest state: a kill while it was being written left an older one (or
            # none), and a run with nothing left to train would never write it again.
            write_durably(last, lambda file: file.write(newest.read_bytes()))
            log.info("resume=auto: %s is the newest state, so last.ckpt is now a copy of it", newest.name)
        log.info("resume=auto: resuming from %s (epoch %d, %d updates made)", newest.resolve(), *progress)
        return str(newest)
    if damaged:
        raise CheckpointError(
            f"resume=auto found checkpoints in {run_dir.resolve()}, but none of them loads: each was set aside "
            f"({', '.join(damaged)}). Training cannot continue from them; start the run afresh in a new "
            "directory, or give ckpt_path= a checkpoint of this run you have kept elsewhere."
        )
    log.info("resume=auto: no checkpoint in %s yet, so training starts from the beginning", run_dir.resolve())
    return None


def in_use(run_dir: Path) -> bool:
    """Whether a live process holds run_dir (its run.lock): a run in progress, another worker's, say."""
    try:
        file = (run_dir / LOCK_FILE).open("r")
    except OSError:
        return False
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        return False


class RunLock:
    """One process at a time holds a run directory: run.lock names the holder's host and pid.

    The lock is the kernel's (flock), so it ends with its process, however that dies: a lock file left by a
    process that has died is taken over, with one log line. The file is never removed, only emptied on
    release: two processes always lock the same file. The processes of one DDP run count as one holder:
    rank 0 takes the lock, and the others, which Lightning or SLURM started for the same run, do not."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self.file: IO[str] | None = None

    def acquire(self) -> None:
        file = self.path.open("a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise ConfigError(
                f"The run directory {self.path.parent.resolve()} is in use by {holder} (it holds "
                f"{self.path.name}), so this process did not start: two processes in one directory would mix "
                "their checkpoints and records. Wait for that run to end (a requeued job whose previous instance "
                "is still stopping, or a second terminal), or give this run another directory (hydra.run.dir=...)."
            ) from None
        file.seek(0)
        previous = file.read().strip()
        if previous:
            log.info("%s: took over the lock of %s, which ended without releasing it", self.path, previous)
        file.seek(0)
        file.truncate()
        file.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
        file.flush()
        self.file = file
        self._remove_temporary_files()

    def _remove_temporary_files(self) -> None:
        """Writes a killed holder left unfinished (no file in place is ever one of them)."""
        for folder in (self.path.parent, self.path.parent / "checkpoints"):
            for path in folder.glob(f".*{_TEMPORARY}*"):
                path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.file is not None:
            self.file.truncate(0)
            self.file.close()  # closing releases the flock
            self.file = None
