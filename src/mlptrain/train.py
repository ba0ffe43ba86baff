"""train(cfg): build the data, the model and the Lightning Trainer from the config, fit, test, write the run."""

import importlib.metadata
import importlib.util
import logging
import sys
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mlptrain.callbacks import CheckpointOnStop, Tracking, trigger
from mlptrain.config import check, plain
from mlptrain.data import MNISTDataModule
from mlptrain.errors import ConfigError, MlptrainError, RunDirError, RunInterrupted
from mlptrain.member_checkpoints import MemberCheckpointIO
from mlptrain.report import write_run_report
from mlptrain.rundir import (
    RunLock,
    claim,
    completed_summary,
    flat,
    read_checkpoint,
    requeued_by_slurm,
    resume_path,
    write_completed,
    write_failed,
    write_summary,
    write_text_durably,
    yaml_text,
)
from mlptrain.signals import TrainingTakesSignals
from mlptrain.stacking import NETWORK_GROUPS
from mlptrain.system import MLPSystem, hyperparameters, load_checkpoint
from mlptrain.training_path import TrainingPath, choose_path, several_processes

log = logging.getLogger(__name__)


def progress_bar(setting: str | bool) -> bool:
    if setting == "auto":
        return sys.stderr.isatty()  # a bar redrawn in a log file is thousands of lines of noise
    return bool(setting)


def trainer_for(system: MLPSystem, cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()) -> L.Trainer:
    """The Trainer of `system`, a run or a population (`cfg`: its first member's config), whose checkpoints are
    each member's (MemberCheckpointIO): one ModelCheckpoint asks for them at each epoch's end (into a run's
    checkpoints/last.ckpt; a population's, into a hidden name its members' files are cut from), and a SIGTERM
    writes them where training stopped. A run's values go to Lightning's loggers (logger=tensorboard), a
    population member's to its own (MLPSystem.tensorboards)."""
    run_dir = system.run_dirs[0]
    if system.in_population:
        folder = run_dir.parent
        last = trigger(folder / ".population", f".population-{run_dir.name}")
    else:
        folder, last = run_dir, trigger(run_dir / "checkpoints", "last")
    show_bar = progress_bar(cfg.progress_bar)
    callbacks: list[Callback] = [last, TrainingTakesSignals(), CheckpointOnStop(last), *extra_callbacks]
    if show_bar:
        callbacks.append(RichProgressBar())
    loggers: list[Logger] = []  # metrics.csv is written from each member's history, with its checkpoints
    if cfg.logger.tensorboard and not system.in_population:
        loggers.append(tensorboard_logger(run_dir))
    return make_trainer(
        trainer_settings(cfg, manual=not system.automatic_optimization),
        default_root_dir=folder,
        logger=loggers,
        callbacks=callbacks,
        plugins=[MemberCheckpointIO(system)],
        enable_progress_bar=show_bar,
        enable_model_summary=not system.in_population,
        log_every_n_steps=1,  # only per-epoch values are logged; this just silences a warning on tiny runs
    )


def make_trainer(settings: dict[str, Any], **arguments: Any) -> L.Trainer:
    """Lightning's Trainer from the trainer.* keys (`trainer_settings`) and the run's own arguments; settings it
    refuses are one ConfigError, for a run and a population alike."""
    try:
        return L.Trainer(**settings, **arguments)
    except (TypeError, ValueError, MisconfigurationException) as error:
        raise ConfigError(
            f"The trainer config is not valid: {error}. Check the trainer.* keys (conf/trainer/)."
        ) from error


def tensorboard_logger(run_dir: Path) -> TensorBoardLogger:
    """logger=tensorboard's: the run's event files in run_dir/tensorboard (a population's members: each its own)."""
    if not any(importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")):
        raise ConfigError(
            "logger=tensorboard writes TensorBoard event files, but the tensorboard package is not installed: "
            'pip install -e ".[tensorboard]" (or pip install tensorboard), or use logger=csv.'
        )
    return TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False)


def trainer_settings(cfg: DictConfig, manual: bool) -> dict[str, Any]:
    """The trainer.* keys as Lightning's Trainer takes them; manual: the updates are step.Engine's (a population's,
    or a run's several mini-batches a training step), not Lightning's optimizer.step()."""
    settings = plain(cfg.trainer)
    if cfg.data.loader == "tensor":  # the batches apply it, in mini-batches (TensorBatches.limit)
        settings["limit_train_batches"] = None
    if manual:  # the updates clip and accumulate inside (step.Engine)
        settings["gradient_clip_val"] = None
        settings["accumulate_grad_batches"] = 1
    return settings


def _check_processes(cfg: DictConfig) -> None:
    """Hydra sweeps and Lightning's own process launcher cannot be combined: refuse that before it starts."""
    devices = cfg.trainer.get("devices", 1)
    several = several_processes(cfg.trainer)
    launched = SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
    if several and not launched and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError(
            f"trainer.devices={devices} inside a -m sweep would make Lightning start each job's processes again "
            "with the sweep's command line. Run several-device jobs one at a time (no -m), or sweep them with "
            "hydra/launcher=slurm, where SLURM starts one task per device (tasks_per_node = trainer.devices). A "
            "population (hydra/launcher=population) trains on one device: hydra/launcher=population_slurm spreads "
            "populations over SLURM jobs, one device each."
        )


def _build_system(cfg: DictConfig, path: TrainingPath) -> MLPSystem:
    return MLPSystem(**hyperparameters(cfg, path))


def train(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> float | None:
    """Run the experiment that `cfg` (conf/train.yaml, composed) describes; return the best val/acc.

    Writes into cfg.output_dir: config.yaml (resolved), metrics.csv, checkpoints/{best,last}.ckpt
    and summary.json, holding the directory (run.lock) while it does. `callbacks` are added to the Trainer's
    (scripts/compare.py records epochs with one). Raises MlptrainError subclasses for problems the user can fix.
    """
    check(cfg)
    run_dir = Path(cfg.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output_dir={run_dir} is a file, not a directory: give a directory, or leave it to Hydra.")
    check_ckpt_path(cfg)
    _check_processes(cfg)
    try:
        return _in_run_dir(cfg, run_dir, callbacks)
    except OSError as error:
        failed = Path(error.filename).resolve() if error.filename is not None else None
        if failed is None or (failed != run_dir.resolve() and run_dir.resolve() not in failed.parents):
            raise  # not the run directory's: reading the data, say, which says so itself
        raise RunDirError(
            f"The run cannot write into its directory {run_dir} ({error.strerror}: {error.filename}). Files "
            "already there are as they were: every file is replaced whole or not at all. Free space or give it "
            "write access, and run the same command with resume=auto to go on, or give it another directory "
            "(hydra.run.dir=...)."
        ) from error


def check_ckpt_path(cfg: DictConfig) -> None:
    """A ckpt_path that is not a file, or a checkpoint that does not load (or would run code), refused before
    anything is written: one ConfigError or CheckpointError paragraph, for a run and a population's member."""
    if cfg.ckpt_path is not None and not Path(cfg.ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} is not a file. Give the path of a .ckpt file, or ckpt_path=null.")
    if cfg.ckpt_path is not None and cfg.train:
        read_checkpoint(cfg.ckpt_path)


def hold(cfg: DictConfig, run_dir: Path) -> RunLock:
    """run_dir made, held by this process (RunLock) and claimed for the run `cfg` describes (rundir.claim: a
    directory holds one run, this one or one it resumes), a run's and a population member's alike. What refuses
    it (another process holds it, it holds another run) is a RunDirError, and the directory is not held."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        claim(run_dir, plain(cfg))
    except BaseException:
        lock.release()
        raise
    return lock


def _in_run_dir(cfg: DictConfig, run_dir: Path, callbacks: Sequence[Callback]) -> float | None:
    """train(cfg) once its config is known to be good: in run_dir, held by this process."""
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = rank_zero_only.rank == 0  # with several processes, one holds the directory and writes its files
    lock = hold(cfg, run_dir) if writer else None
    try:
        done = already_complete(cfg, run_dir, _sweep(cfg), writer=writer)
        if done is not None:
            return done.get("best_val_acc")
        return _run(cfg, run_dir, writer, callbacks)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: DictConfig, run_dir: Path, writer: bool, callbacks: Sequence[Callback]) -> float | None:
    """train(cfg)'s work, in a directory this process holds."""
    path = choose_path(cfg) if cfg.train else None
    own, ckpt_path = start_of(cfg, repair=writer)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    system = _build_system(cfg, path) if path else load_checkpoint(cfg.ckpt_path)[0]
    system.writing_into([cfg])  # a population of one: its files are its member's (member_checkpoints)
    if cfg.train and ckpt_path is not None:
        system.resumed = [read_checkpoint(ckpt_path)]
    if writer:
        if path:
            recorded = OmegaConf.to_yaml(cfg, resolve=True)
        else:
            config, differ = evaluated(plain(cfg), system.hparams, cfg.ckpt_path)
            recorded = yaml_text(config)
            if differ:
                log.info("%s", differ)
        write_text_durably(run_dir / "config.yaml", recorded)
    if str(cfg.trainer.precision) in ("64-true", "64"):
        # Lightning loads a resumed checkpoint's weights before it converts the model to float64: into float32
        # weights, which would round them (1e-7) and make the resumed run differ from one that ran through.
        system.double()
    steps_per_call = path.steps_per_call if path else 1
    datamodule = MNISTDataModule(
        **plain(cfg.data),
        steps_per_call=steps_per_call,
        limit_train_batches=cfg.trainer.limit_train_batches,
    )
    if path and writer:
        log.info("Training path: %s", path.why)
    if system.trajectories is not None and not cfg.train:  # the path kept in the checkpoint's training
        trajectory = system.trajectories[0]
        trajectory.load_state_dict(read_checkpoint(cfg.ckpt_path).get("callbacks", {}).get(trajectory.state_key, {}))
    extra = list(callbacks)
    if cfg.logger.mlflow.enabled and writer:  # started before training: a required store that refuses stops it here
        held = system.resumed[0] if own else None  # read once: its own checkpoint, not another run's ckpt_path
        system.trackers = [_tracker(cfg, run_dir, held, path.why if path else None)]
        extra.append(Tracking(system.trackers))
    return fit_and_test(system, trainer_for(system, cfg, extra), datamodule, [ckpt_path])[run_dir]


def fit_and_test(
    system: MLPSystem, trainer: L.Trainer, datamodule: MNISTDataModule, starts: Sequence[str | None]
) -> dict[Path, float | None]:
    """The lifecycle once the members' directories are held and their Trainer built, written once for a run (a
    population of one) and a population: fit, from `starts` where the members resume (each its checkpoint: its
    own, or a ckpt_path; MLPSystem.resumed holds them read), keeping each member's best; test each at its best;
    write each member's records, report and summary, and its MLflow run. Returns each member's best val/acc
    (None where it failed). What stops a member is written in its files and log: a population's others go on,
    and a run raises it (its paragraph, exit 1), or RunInterrupted with the command that goes on."""
    system.started = time.perf_counter()
    nothing: dict[Path, float | None] = {run_dir: None for run_dir in system.run_dirs}
    try:
        try:
            if system.cfgs[0].train:
                fit(trainer, system, datamodule, starts[0] if system.resumed is not None else None)
                system.check_finite()
            system.finish_tensorboards("success")
            tested = {m: system.checkpoints[m].best.best_model_path or starts[m] for m in system.active()}
            tested_updates = system.at_best(tested)  # each member's best.ckpt's weights, put in place
            trainer.test(system, datamodule=datamodule, verbose=False)
        except MlptrainError as error:  # what every member shares (the Trainer's settings, say), or a run's NaN
            system.finish_tensorboards("failed")
            for m in system.active():
                message = write_failed(system.run_dirs[m], system.histories[m], system.summary_of(m), str(error))
                if not system.in_population:
                    if message == str(error):
                        raise
                    raise type(error)(message) from error
                system.note(m, message, "ERROR")
            log.error("%s", error)
            return nothing
        except (KeyboardInterrupt, SystemExit) as stop:  # Lightning turns Ctrl-C and SIGTERM into SystemExit
            system.finish_tensorboards("interrupted")
            last = next((path for m in system.active() if (path := system.checkpoints[m].paths()["last"])), None)
            folder = Path(trainer.default_root_dir)  # a run's directory, or a population's sweep folder
            message = interrupted(folder, trainer.current_epoch, last, sweep=system.in_population)
            for m in system.active():
                write_summary(system.run_dirs[m], {**system.summary_of(m), "status": "interrupted"})
                if system.in_population:
                    system.note(m, str(message), "ERROR")
            if not system.in_population:
                raise message from stop
            log.error("%s", message)
            return nothing
        system.finish_tensorboards("success")
        results = dict(nothing)
        for m in system.active():
            results[system.run_dirs[m]] = _write_tested(system, m, trainer, datamodule, tested[m], tested_updates[m])
        return results
    finally:
        finish_tracking(system)  # from the files just written: each member's MLflow run equals them


def _write_tested(
    system: MLPSystem, m: int, trainer: L.Trainer, datamodule: MNISTDataModule, tested: str | None, updates: int
) -> float | None:
    """Member m's files once it is tested at `tested` (after `updates` updates): metrics.csv with the test's row,
    its report, summary.json, its MLflow run; its best val/acc."""
    run_dir, cfg = system.run_dirs[m], system.cfgs[m]
    summary = system.summary_of(m, tested_checkpoint=tested)
    report = None
    if cfg.report.enabled and trainer.is_global_zero:
        # The network's own hyperparameters: in test-only mode they come from the checkpoint, not from cfg.
        config = {**system.plain[m], **{key: dict(system.hparams_of[m][key]) for key in NETWORK_GROUPS}}
        trajectory = system.trajectories[m] if system.trajectories is not None else None
        weights_path = trajectory.path() if trajectory is not None and trajectory.points else None
        trained = system.trained(m)  # as tested: at its best
        report = partial(
            write_run_report, run_dir, summary, config, trained, datamodule, plain(cfg.report), weights_path
        )
    tested_row = {"epoch": trainer.current_epoch, "step": updates}
    tested_row.update({key: system.test_results[key][m] for key in ("test/loss", "test/acc")})
    tracker = system.trackers[m] if system.trackers else None
    # Its MLflow run is not waited for: MLflow has its files while the next member's report is drawn.
    write_completed(run_dir, system.histories[m], tested_row, summary, report, tracker, partial(system.note, m), False)
    return summary["best_val_acc"]


def finish_tracking(system: MLPSystem) -> None:
    """Each member's MLflow run filled in from its files, and ended, by the store's thread; done on return."""
    for tracker in system.trackers or ():
        tracker.finish(wait=False)
    if system.trackers:
        system.trackers[0].store.wait()


def start_of(cfg: DictConfig, repair: bool = True) -> tuple[str | None, str | None]:
    """Where the run `cfg` describes (or a population's member) starts: (its own directory's newest checkpoint
    where it resumes, or None; that, else its ckpt_path, another run's whose weights start afresh here, else None).
    `repair`: resume_path's (whether this process renames damaged files)."""
    own = resume_path(Path(cfg.output_dir), repair=repair) if resumes(cfg) else None
    return own, own or (str(cfg.ckpt_path) if cfg.ckpt_path is not None else None)


def resumes(cfg: DictConfig) -> bool:
    """Whether the run `cfg` describes goes on from its directory's newest checkpoint, a run's and a population
    member's alike: with resume=auto, or as a job SLURM started again (after a preemption or its time-limit signal,
    both of which wrote last.ckpt), whose command is the first start's."""
    return bool(cfg.train) and (cfg.resume == "auto" or requeued_by_slurm())


def already_complete(
    cfg: DictConfig, run_dir: Path, sweep: Path | None, store: Any = None, writer: bool = True
) -> dict[str, Any] | None:
    """With resume=auto, the summary of the run this config describes where run_dir holds it completed (None
    otherwise): what a logger=mlflow tracker that was away missed is logged now (`sweep`: the sweep's folder, its
    parent run; `store`: a population's shared one), and the log says there is nothing to do."""
    if not resumes(cfg):
        return None
    done = completed_summary(run_dir, plain(cfg))
    if done is None:
        return None
    if cfg.logger.mlflow.enabled and writer:
        from mlptrain.tracking import tracked

        found = resume_path(run_dir, repair=False)
        tracked(plain(cfg), run_dir, read_checkpoint(found) if found else None, None, sweep, store).finish()
    log.info(
        "resume=auto: the run in %s is complete (test accuracy %.4f); nothing to do. Its summary: %s",
        run_dir.resolve(), done["test_acc"], (run_dir / "summary.json").resolve(),
    )  # fmt: skip
    return done


def _tracker(cfg: DictConfig, run_dir: Path, resumed: dict[str, Any] | None, why: str | None) -> Any:
    """logger=mlflow's Tracker, its MLflow run started (a child of its sweep's, in a sweep), or continued where
    `resumed` (a checkpoint of this run directory, read) names one."""
    from mlptrain.tracking import tracked

    return tracked(plain(cfg), run_dir, resumed, why, _sweep(cfg))


def _sweep(cfg: DictConfig) -> Path | None:
    """logger=mlflow: the folder of the sweep (-m) the run is a job of, whose MLflow run is its parent; else None."""
    if not cfg.logger.mlflow.enabled:
        return None
    from mlptrain.tracking import current_sweep

    return current_sweep()


def evaluated(config: dict[str, Any], held: Mapping[str, Any], ckpt_path: str) -> tuple[dict[str, Any], str | None]:
    """train=false's config.yaml: the config, with the model.*, loss.*, optimizer.* and scheduler.* of the network
    it evaluates (`held`: the checkpoint's hyperparameters; the command line's are not used), a run's and a
    population member's; and the log line that names those that differed, or None."""
    config = dict(config)
    given = flat({group: config[group] for group in NETWORK_GROUPS})
    config.update({group: dict(held[group]) for group in NETWORK_GROUPS})
    kept = flat({group: config[group] for group in NETWORK_GROUPS})
    differ = sorted(key for key in given.keys() | kept.keys() if given.get(key) != kept.get(key))
    if not differ:
        return config, None
    return config, (
        f"train=false evaluates the network {ckpt_path} holds, as it was built and trained: config.yaml records its "
        f"settings, not this command's, which differ in {', '.join(differ)}"
    )


def fit(trainer: L.Trainer, module: L.LightningModule, datamodule: MNISTDataModule, ckpt_path: str | None) -> None:
    """trainer.fit, and what a user can fix of what goes wrong there as one ConfigError: a checkpoint of another
    model's shape, trainer settings Lightning refuses. KeyboardInterrupt where Lightning stopped on a signal."""
    try:
        with warnings.catch_warnings():
            if datamodule.loader == "tensor":  # its place in the epoch is in the checkpoint: nothing is lost
                warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except RuntimeError as error:
        if "state_dict" not in str(error):
            raise
        raise ConfigError(
            f"The checkpoint {ckpt_path} holds a model of another shape than this config builds "
            f"({error}). Resume with the model.* settings the checkpoint was trained with."
        ) from error
    except (ValueError, MisconfigurationException) as error:
        if "/lightning/" not in traceback.extract_tb(error.__traceback__)[-1].filename:
            raise  # not Lightning checking its settings: a bug, with its traceback
        raise ConfigError(
            f"Lightning refused the trainer settings: {str(error).strip()} Check the trainer.* keys "
            "(conf/trainer/, and those given as +trainer.NAME=VALUE)."
        ) from error
    if trainer.interrupted:
        raise KeyboardInterrupt


def interrupted(folder: Path, epoch: int, last: str | None, sweep: bool = False) -> RunInterrupted:
    """What a run stopped by Ctrl-C or SIGTERM says: where it stopped, and the command that goes on. A population
    says it of its sweep's folder (sweep=True), whose members' last.ckpt files hold where each stopped."""
    where = f"{'hydra.sweep.dir' if sweep else 'hydra.run.dir'}={folder.resolve()}"
    if not last:
        resume = f"no checkpoint had been written yet: the same command with `resume=auto {where}` added starts it "
        resume += "again there"
    elif sweep:
        resume = f"to continue where each member stopped, run the same command with `resume=auto {where}` added"
    else:
        resume = (
            f"to continue where it stopped, in the same directory, run the same command with `resume=auto {where}` "
            f"added (or `ckpt_path={last}` for a new directory)"
        )
    return RunInterrupted(f"{stopped_where(folder, epoch)}; {resume}.", epoch)


def stopped_where(folder: Path, epoch: int | None) -> str:
    """Where an interrupted run stopped, as its message (interrupted) begins: a notebook's says its own way on."""
    return f"Training was interrupted during epoch {epoch}. What was written is kept in {folder.resolve()}"
