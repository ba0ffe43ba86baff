"""train(cfg): build the data, the model and the Lightning Trainer from the config, fit, test, write the run."""

import importlib.metadata
import importlib.util
import json
import logging
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torchvision import datasets

from mlptrain.config import check
from mlptrain.data import MNISTDataModule, to_inputs
from mlptrain.errors import ConfigError, MlptrainError, RunInterrupted
from mlptrain.step import choose_path
from mlptrain.system import MLPSystem

log = logging.getLogger(__name__)


def library_versions() -> dict[str, str]:
    """Versions that decide what a run computes, stored with every summary and checkpoint."""
    versions = {"python": platform.python_version(), "cuda": str(torch.version.cuda)}
    for package in ("mlptrain", "torch", "lightning", "torchmetrics", "torchvision", "hydra-core", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


class _RecordRun(Callback):
    """Stores the resolved config and library versions in every checkpoint, so each file describes its run,
    and the random number generators' states, so that dropout draws on after a resume as it would have."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["config"] = self.config
        checkpoint["library_versions"] = library_versions()
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states", {})
        if "torch" in states:
            torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.device_count() == len(states["cuda"]):
            torch.cuda.set_rng_state_all(states["cuda"])


class _CheckpointOnStop(Callback):
    """Writes last.ckpt where a SIGTERM stopped training: a cluster's preemption or time limit, or `kill`.

    Lightning stops on SIGTERM only after the training step in progress has finished, so this is a
    clean point mid-epoch, and resume=auto continues from it with the results unchanged. Ctrl-C can
    land in the middle of a step and keeps the last epoch's checkpoint instead.
    """

    def __init__(self, checkpoint: ModelCheckpoint) -> None:
        self.checkpoint = checkpoint

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or not trainer.training:
            return
        if int(pl_module.nonfinite_step) >= 0:  # type: ignore[arg-type]
            return  # weights after a NaN are never checkpointed
        path = Path(self.checkpoint.dirpath) / f"{self.checkpoint.CHECKPOINT_NAME_LAST}{self.checkpoint.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        self.checkpoint.last_model_path = str(path)


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


def quiet_console(tensor_loader: bool) -> None:
    """Silence, narrowly (by logger or module, and message) and in this one place, what is not ours to say."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_LIGHTNING_NOISE)  # a filter already there is not added twice
    if not torch.cuda.is_available():
        logging.getLogger("torch.utils.cpp_extension").addFilter(_NO_CUDA_NOISE)
    # Lightning 2.6 calls an API that torch 2.10+ deprecates; nothing a user can change.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    # The run directory already holds Hydra's files, which CSVLogger would warn about as "not empty".
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    # Each epoch value is a torchmetrics compute(), which already gathers every process's counts.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\(.*sync_dist=True\)`")
    if tensor_loader:  # its place in the epoch is in the checkpoint (MNISTDataModule.state_dict)
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")


def _container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _progress_bar(setting: str | bool) -> bool:
    if setting == "auto":
        return sys.stderr.isatty()  # a bar redrawn in a log file is thousands of lines of noise
    return bool(setting)


def _make_trainer(
    cfg: DictConfig, run_dir: Path, extra_callbacks: Sequence[Callback] = (), steps_per_call: int = 1
) -> tuple[L.Trainer, ModelCheckpoint]:
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor="val/acc",
        mode="max",
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
    )
    show_bar = _progress_bar(cfg.progress_bar)
    callbacks: list[Callback] = [
        checkpoint,
        LearningRateMonitor(logging_interval="epoch"),
        _RecordRun(_container(cfg)),
        _CheckpointOnStop(checkpoint),
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
    return trainer, checkpoint


def _resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint training starts from: ckpt_path, or with resume=auto the newest in the run directory."""
    if cfg.resume is None:
        return cfg.ckpt_path
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


def _keep_metrics(trainer: L.Trainer, previous: str) -> None:
    """Put back the rows of metrics.csv that CSVLogger deletes when a resumed run reuses its directory."""
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger) and rank_zero_only.rank == 0:
            writer = logger.experiment  # made now: this is where the old file is deleted
            Path(writer.metrics_file_path).write_text(previous)
            writer.metrics_keys = sorted(previous.splitlines()[0].split(","))


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


def _load_for_test(ckpt_path: str) -> MLPSystem:
    try:
        return MLPSystem.load_from_checkpoint(ckpt_path, map_location="cpu")
    except Exception as error:
        raise ConfigError(
            f"ckpt_path={ckpt_path} could not be loaded as an mlptrain checkpoint ({error}). Point it at a "
            ".ckpt written by mlptrain, e.g. outputs/<date>/<time>/checkpoints/best.ckpt."
        ) from error


def _device_name(trainer: L.Trainer) -> str:
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


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
    ckpt_path = _resume_path(cfg, run_dir) if cfg.train else cfg.ckpt_path
    writer = rank_zero_only.rank == 0  # with several processes, one writes the run's files
    metrics_csv = run_dir / "metrics.csv"
    previous_metrics = metrics_csv.read_text() if ckpt_path and metrics_csv.is_file() else None
    if writer:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    steps_per_call = path.steps_per_call if path else 1
    datamodule = MNISTDataModule(
        **_container(cfg.data),
        steps_per_call=steps_per_call,
        limit_train_batches=cfg.trainer.get("limit_train_batches"),
    )
    if path:
        if writer:
            log.info("Training path: %s", path.why)
        system = MLPSystem(
            model=_container(cfg.model),
            loss=_container(cfg.loss),
            optimizer=_container(cfg.optimizer),
            scheduler=_container(cfg.scheduler),
            check_finite_every_n_steps=cfg.check_finite_every_n_steps,
            log_grad_norms=cfg.log_grad_norms,
            steps_per_call=path.steps_per_call,
            compile=path.compile,
            gradient_clip_val=cfg.trainer.get("gradient_clip_val"),
            gradient_clip_algorithm=cfg.trainer.get("gradient_clip_algorithm") or "norm",
        )
    else:
        system = _load_for_test(cfg.ckpt_path)
    quiet_console(tensor_loader=cfg.data.loader == "tensor")
    trainer, checkpoint = _make_trainer(cfg, run_dir, callbacks, steps_per_call)
    if previous_metrics:
        _keep_metrics(trainer, previous_metrics)

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
        summary["checkpoints"] = _checkpoint_paths(checkpoint)  # before test() restores the callback from a file
        summary["global_steps"] = system.updates_done  # and the module's count, from the tested checkpoint
        tested = checkpoint.best_model_path or ckpt_path
        results = trainer.test(system, datamodule=datamodule, ckpt_path=tested, verbose=False)[0]
    except MlptrainError as error:
        _write_summary(run_dir, summary, start, trainer, checkpoint, status="failed", error=str(error))
        kept = [path for path in (checkpoint.best_model_path, checkpoint.last_model_path) if path]
        if kept:
            raise type(error)(f"{error} Checkpoints written before it are kept: {', '.join(kept)}.") from error
        raise
    except (KeyboardInterrupt, SystemExit) as stop:  # Lightning turns Ctrl-C and SIGTERM into SystemExit
        _write_summary(run_dir, summary, start, trainer, checkpoint, status="interrupted")
        last = checkpoint.last_model_path
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
    _write_summary(run_dir, summary, start, trainer, checkpoint, status="completed")
    if cfg.report.enabled and writer:
        _write_report(cfg, run_dir, summary, trainer, system, datamodule)
        log.info("Report with pictures: %s", (run_dir / "report.md").resolve())
    if writer:
        log.info(
            "Test accuracy %.4f, test loss %.4f (checkpoint %s)", results["test/acc"], results["test/loss"], tested
        )
        log.info("Run directory: %s", run_dir.resolve())
    best = checkpoint.best_model_score
    return float(best) if best is not None else None


def _write_report(
    cfg: DictConfig,
    run_dir: Path,
    summary: dict[str, Any],
    trainer: L.Trainer,
    system: MLPSystem,
    data: MNISTDataModule,
) -> None:
    from mlptrain.plots import write_report  # matplotlib is imported only when pictures are drawn

    raw = datasets.MNIST(data.root, train=False)  # pixels as they were, for the pictures
    # On this process alone, with the tested weights (test() loaded them): under DDP each rank saw a shard.
    weight = system.model.layers[0].weight
    inputs = to_inputs(raw.data, data.normalize).to(weight.device, weight.dtype)
    system.eval()
    with torch.no_grad():
        probs = torch.cat([system.probabilities(system(x)) for x in inputs.split(data.eval_batch_size)])
    probs = probs.float().cpu().numpy()
    # The model's own hyperparameters: in test-only mode they come from the checkpoint, not from cfg.
    config = {
        **_container(cfg),
        **{key: dict(system.hparams[key]) for key in ("model", "loss", "optimizer", "scheduler")},
    }
    write_report(
        run_dir,
        summary,
        config,
        labels=raw.targets.numpy(),
        probs=probs,
        images=raw.data.numpy(),
        first_layer=system.model.layers[0].weight.detach().float().cpu().numpy(),
        weight_tiles=cfg.report.weight_tiles,
        mistakes=cfg.report.mistakes,
    )


def _checkpoint_paths(checkpoint: ModelCheckpoint) -> dict[str, str | None]:
    return {"best": checkpoint.best_model_path or None, "last": checkpoint.last_model_path or None}


def _write_summary(
    run_dir: Path, summary: dict[str, Any], start: float, trainer: L.Trainer, checkpoint: ModelCheckpoint, **fields: Any
) -> None:
    best = checkpoint.best_model_score
    summary.update(
        fields,
        best_val_acc=float(best) if best is not None else None,
        epochs=trainer.current_epoch,
        wall_time_s=round(time.perf_counter() - start, 3),
    )
    summary.setdefault("checkpoints", _checkpoint_paths(checkpoint))
    # Optimizer updates (Lightning's global_step counts training steps, of several updates each on the fast path)
    summary.setdefault("global_steps", getattr(trainer.lightning_module, "updates_done", trainer.global_step))
    if rank_zero_only.rank == 0:  # one summary per run, whatever the number of processes
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def main(cfg: DictConfig, task: Callable[[DictConfig], Any] = train) -> Any:
    """A command line's body: run `task` (train, or compare), and turn a user's mistake into one paragraph
    and exit status 1."""
    try:
        return task(cfg)
    except MlptrainError as error:
        log.error("%s", error)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return None  # one failed job of a sweep must not stop the others; its summary.json says why
        sys.exit(1)
