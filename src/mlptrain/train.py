"""train(cfg): build the data, the model and the Lightning Trainer from the config, fit, test, write the run."""

import importlib.metadata
import importlib.util
import logging
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mlptrain import population
from mlptrain.callbacks import CheckpointOnStop, Checkpoints, RecordRun, WeightTrajectory
from mlptrain.config import check
from mlptrain.data import MNISTDataModule
from mlptrain.errors import ConfigError, MlptrainError, RunInterrupted
from mlptrain.population import MemberSteps
from mlptrain.report import write_run_report
from mlptrain.rundir import keep_metrics, library_versions, resume_path, write_summary
from mlptrain.step import Path as TrainingPath
from mlptrain.step import choose_path
from mlptrain.system import MLPSystem, load_checkpoint

log = logging.getLogger(__name__)
_SEEDING = threading.Lock()


def _container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _progress_bar(setting: str | bool) -> bool:
    if setting == "auto":
        return sys.stderr.isatty()  # a bar redrawn in a log file is thousands of lines of noise
    return bool(setting)


def _make_trainer(
    cfg: DictConfig, run_dir: Path, extra_callbacks: Sequence[Callback] = (), steps_per_call: int = 1
) -> tuple[L.Trainer, Checkpoints]:
    checkpoints = Checkpoints.into(run_dir / "checkpoints")
    show_bar = _progress_bar(cfg.progress_bar)
    callbacks: list[Callback] = [
        *checkpoints,
        LearningRateMonitor(logging_interval="epoch"),
        RecordRun(_container(cfg)),
        CheckpointOnStop(checkpoints.last),
        *extra_callbacks,
    ]
    if show_bar:
        callbacks.append(RichProgressBar())
    loggers: list[Logger] = [CSVLogger(run_dir, name="", version="")]  # -> <run dir>/metrics.csv
    if cfg.logger.tensorboard:
        if not any(importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")):
            raise ConfigError(
                "logger=tensorboard writes TensorBoard event files, but the tensorboard package is not installed: "
                'pip install -e ".[tensorboard]" (or pip install tensorboard), or use logger=csv.'
            )
        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False))
    settings = _container(cfg.trainer)
    if cfg.data.loader == "tensor":  # the batches apply it, in mini-batches (TensorBatches.limit)
        settings["limit_train_batches"] = None
    if steps_per_call > 1:  # FastSteps clips inside its updates (MLPSystem gets the setting)
        settings["gradient_clip_val"] = None
    try:
        trainer = L.Trainer(
            **settings,
            default_root_dir=run_dir,
            logger=loggers,
            callbacks=callbacks,
            enable_progress_bar=show_bar,
            log_every_n_steps=1,  # only per-epoch values are logged; this just silences a warning on tiny runs
        )
    except (TypeError, ValueError, MisconfigurationException) as error:
        raise ConfigError(
            f"The trainer config is not valid: {error}. Check the trainer.* keys (conf/trainer/)."
        ) from error
    return trainer, checkpoints


def _check_processes(cfg: DictConfig) -> None:
    """Hydra sweeps and Lightning's own process launcher cannot be combined: refuse that before it starts."""
    devices = cfg.trainer.get("devices", 1)
    one = devices in (1, "1", "auto") or (OmegaConf.is_list(devices) and len(devices) == 1)
    several = not one or cfg.trainer.get("num_nodes", 1) > 1
    launched = SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
    if several and not launched and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError(
            f"trainer.devices={devices} inside a -m sweep would make Lightning start each job's processes again "
            "with the sweep's command line. Run several-device jobs one at a time (no -m), or sweep them with "
            "hydra/launcher=slurm, where SLURM starts one task per device (tasks_per_node = trainer.devices)."
        )


def _device_name(trainer: L.Trainer) -> str:
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _build_system(cfg: DictConfig, path: TrainingPath) -> MLPSystem:
    return MLPSystem(
        model=_container(cfg.model),
        loss=_container(cfg.loss),
        optimizer=_container(cfg.optimizer),
        scheduler=_container(cfg.scheduler),
        check_finite_every_n_steps=cfg.check_finite_every_n_steps,
        log_grad_norms=cfg.log_grad_norms,
        steps_per_call=path.steps_per_call,
        compile=path.compile,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        gradient_clip_algorithm=cfg.trainer.gradient_clip_algorithm,
    )


def train(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> float | None:
    """Run the experiment that `cfg` (conf/train.yaml, composed) describes; return the best val/acc.

    Writes into cfg.output_dir: config.yaml (resolved), metrics.csv, checkpoints/{best,last}.ckpt
    and summary.json. `callbacks` are added to the Trainer's (scripts/compare.py records epochs with one).
    Raises MlptrainError subclasses for problems the user can fix.
    """
    check(cfg)
    run_dir = Path(cfg.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output_dir={run_dir} is a file, not a directory: give a directory, or leave it to Hydra.")
    if cfg.ckpt_path is not None and not Path(cfg.ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} is not a file. Give the path of a .ckpt file, or ckpt_path=null.")
    _check_processes(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = choose_path(cfg) if cfg.train else None
    ckpt_path = resume_path(cfg.resume, cfg.ckpt_path, run_dir) if cfg.train else cfg.ckpt_path
    writer = rank_zero_only.rank == 0  # with several processes, one writes the run's files
    metrics_csv = run_dir / "metrics.csv"
    previous_metrics = metrics_csv.read_text() if ckpt_path and metrics_csv.is_file() else None
    if writer:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    member = population.current()
    with _SEEDING:  # a population's members (threads) each seed the generator and draw their weights in turn
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        system = _build_system(cfg, path) if path else load_checkpoint(cfg.ckpt_path)[0]
    if str(cfg.trainer.precision) in ("64-true", "64"):
        # Lightning loads a resumed checkpoint's weights before it converts the model to float64: into float32
        # weights, which would round them (1e-7) and make the resumed run differ from one that ran through.
        system.double()
    steps_per_call = path.steps_per_call if path else 1
    datamodule = MNISTDataModule(
        **_container(cfg.data),
        steps_per_call=steps_per_call,
        limit_train_batches=cfg.trainer.limit_train_batches,
        gather=member is None,  # a population gathers its members' mini-batches together
    )
    if member is not None:
        system.make_steps = partial(MemberSteps, *member, datamodule.train_inputs)
        member[0].wait_for_the_others(member[1])
    if path and writer:
        log.info("Training path: %s", path.why if member is None else member[0].describe(path.steps_per_call))
    trajectory = WeightTrajectory() if cfg.report.landscape else None
    if trajectory is not None and not cfg.train:  # the path kept in the checkpoint's training
        trajectory.load_state_dict(
            torch.load(cfg.ckpt_path, weights_only=False).get("callbacks", {}).get("WeightTrajectory", {})
        )
    extra = [*callbacks, trajectory] if trajectory is not None else callbacks
    trainer, checkpoints = _make_trainer(cfg, run_dir, extra, steps_per_call)
    if previous_metrics:
        keep_metrics(trainer, previous_metrics)

    summary: dict[str, Any] = {
        "status": "running",
        "run_dir": str(run_dir.resolve()),
        "seed": cfg.seed,
        "parameters": sum(p.numel() for p in system.model.parameters()),
        "device": _device_name(trainer),
        "processes": trainer.world_size,
        "versions": library_versions(),
    }
    start = time.perf_counter()
    try:
        if cfg.train:
            try:
                with warnings.catch_warnings():
                    if cfg.data.loader == "tensor":  # its place in the epoch is in the checkpoint: nothing is lost
                        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
                    trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
            except RuntimeError as error:
                if "state_dict" not in str(error):
                    raise
                raise ConfigError(
                    f"The checkpoint {ckpt_path} holds a model of another shape than this config builds "
                    f"({error}). Resume with the model.* settings the checkpoint was trained with."
                ) from error
            if trainer.interrupted:
                raise KeyboardInterrupt
        summary["checkpoints"] = checkpoints.paths()  # before test() restores the callback from a file
        summary["global_steps"] = system.updates_done  # and the module's count, from the tested checkpoint
        tested = checkpoints.best.best_model_path or ckpt_path
        results = trainer.test(system, datamodule=datamodule, ckpt_path=tested, verbose=False)[0]
    except MlptrainError as error:
        write_summary(run_dir, summary, start, trainer, checkpoints, status="failed", error=str(error))
        kept = [path for path in checkpoints.paths().values() if path]
        if kept:
            raise type(error)(f"{error} Checkpoints written before it are kept: {', '.join(kept)}.") from error
        raise
    except (KeyboardInterrupt, SystemExit) as stop:  # Lightning turns Ctrl-C and SIGTERM into SystemExit
        write_summary(run_dir, summary, start, trainer, checkpoints, status="interrupted")
        last = checkpoints.paths()["last"]
        resume = (
            f"to continue where it stopped, in the same directory, run the same command with `resume=auto "
            f"hydra.run.dir={run_dir.resolve()}` added (or `ckpt_path={last}` for a new directory)"
            if last
            else "no checkpoint had been written yet"
        )
        raise RunInterrupted(
            f"Training was interrupted during epoch {trainer.current_epoch}. What was written is kept in "
            f"{run_dir.resolve()}; {resume}."
        ) from stop
    summary.update(test_acc=results["test/acc"], test_loss=results["test/loss"], tested_checkpoint=tested)
    write_summary(run_dir, summary, start, trainer, checkpoints, status="completed")
    if cfg.report.enabled and writer:
        # The model's own hyperparameters: in test-only mode they come from the checkpoint, not from cfg.
        config = {
            **_container(cfg),
            **{key: dict(system.hparams[key]) for key in ("model", "loss", "optimizer", "scheduler")},
        }
        path = trajectory.path() if trajectory is not None and trajectory.points else None
        write_run_report(run_dir, summary, config, system, datamodule, _container(cfg.report), path)
        log.info("Report with pictures: %s", (run_dir / "report.md").resolve())
    if writer:
        log.info(
            "Test accuracy %.4f, test loss %.4f (checkpoint %s)", results["test/acc"], results["test/loss"], tested
        )
        log.info("Run directory: %s", run_dir.resolve())
    best = checkpoints.best.best_model_score
    return float(best) if best is not None else None
