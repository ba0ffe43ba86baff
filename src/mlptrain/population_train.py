"""train_population(configs): a population's lifecycle, as train() is a run's: each member's directory held and
claimed, resumed where it stopped, the population fitted and tested, each member's records, report and summary
written. The launcher that calls it: hydra_plugins/mlptrain_population.

    train_population(configs) -> each job's best val/acc (None where it failed)
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from mlptrain.callbacks import Tracking
from mlptrain.config import check, plain
from mlptrain.data import MNISTDataModule
from mlptrain.errors import MlptrainError
from mlptrain.rundir import (
    read_checkpoint,
    write_text_durably,
    yaml_text,
)
from mlptrain.system import MLPSystem, write_log_line
from mlptrain.train import (
    already_complete,
    check_ckpt_path,
    evaluated,
    finish_tracking,
    fit_and_test,
    hold,
    resumes,
    start_of,
    tensorboard_logger,
    trainer_for,
)
from mlptrain.training_path import TrainingPath, member_path

log = logging.getLogger(__name__)


def _member_hooks(system: MLPSystem) -> None:
    """Write each member's config.yaml and its training path, as train() does first; with train=false, the
    config of the network it evaluates, and the line naming what differed from its command's (train.evaluated)."""
    for m, (run_dir, cfg) in enumerate(zip(system.run_dirs, system.cfgs)):
        if cfg.train:
            write_text_durably(run_dir / "config.yaml", yaml_text(system.plain[m]))
            system.note(m, f"Training path: {system.describe()}")
            continue
        config, differ = evaluated(system.plain[m], system.hparams_of[m], cfg.ckpt_path)
        write_text_durably(run_dir / "config.yaml", yaml_text(config))
        for line in (differ, system.describe()):
            if line:
                system.note(m, line)


Resumed = tuple[DictConfig, dict[str, Any] | None, str | None]  # a member, its checkpoint and that file, or Nones


def _resumable(cfgs: Sequence[DictConfig]) -> list[list[Resumed]]:
    """The members to train, grouped by where they start from (resume=auto: each its newest checkpoint; else,
    or where it has none, its ckpt_path, as a run's), each with its checkpoint and its path, or None to start
    afresh."""
    groups: dict[Any, list[Resumed]] = {}
    for cfg in cfgs:
        found = start_of(cfg)[1]  # as a run's
        checkpoint = read_checkpoint(found) if found is not None else None
        where = (
            None if checkpoint is None else (checkpoint["epoch"], checkpoint["global_step"], checkpoint["updates_done"])
        )
        groups.setdefault(where, []).append((cfg, checkpoint, found))
    if len(groups) > 1:  # members stack only where they stand at one place in training
        places = "; ".join(
            f"{'from the start' if where is None else f'epoch {where[0]}, update {where[2]}'}: "
            + " ".join(Path(cfg.output_dir).name for cfg, _, _ in group)
            for where, group in groups.items()
        )
        log.info(
            "The members' checkpoints stand at %d places in training, each place a population of its own (%s).",
            len(groups),
            places,
        )
    return list(groups.values())


def train_population(
    cfgs: Sequence[DictConfig],
    log_name: str = "train.log",
    sweep_dir: Path | None = None,
    callbacks: Sequence[Callback] = (),
) -> list[float | None]:
    """Train the jobs `cfgs` (composed, output_dir set, equal but for MEMBER_KEYS) as populations; return each
    job's best val/acc, or None where it failed (its summary.json and log say why, as a run's would). sweep_dir:
    the sweep's folder, whose MLflow run is the parent of the members' (logger=mlflow). `callbacks` are added to
    each population's Trainer, as train(cfg, callbacks) adds them to a run's: they see the population's
    MLPSystem, every record with a leading member axis (its `histories`, one per member, as `cfgs` sorted)."""
    results: dict[int, float | None] = {}
    locks, todo = [], []
    store = None  # logger=mlflow: the MLflow store completed members are filled in on
    for index, cfg in enumerate(cfgs):
        run_dir = Path(cfg.output_dir)
        try:
            check(cfg)
            check_ckpt_path(cfg)
            lock = hold(cfg, run_dir)  # as train() holds a run's
        except MlptrainError as error:
            log.error("%s", error)
            results[index] = None
            continue
        locks.append(lock)
        if store is None and cfg.logger.mlflow.enabled and resumes(cfg):  # one for the members filled in
            from mlptrain.tracking import Store

            store = Store(plain(cfg.logger.mlflow))
        done = already_complete(cfg, run_dir, sweep_dir, store)
        if done is not None:
            results[index] = done.get("best_val_acc")
        else:
            todo.append(index)
    try:
        by_dir = {Path(cfgs[index].output_dir): index for index in todo}
        for group in _resumable([cfgs[index] for index in todo]) if todo else []:
            for run_dir, value in _train_group(group, log_name, sweep_dir, callbacks).items():
                results[by_dir[run_dir]] = value
    finally:
        for lock in locks:
            lock.release()
    return [results.get(index) for index in range(len(cfgs))]


def _train_group(
    group: Sequence[Resumed], log_name: str, sweep_dir: Path | None, extra: Sequence[Callback] = ()
) -> dict[Path, float | None]:
    """One population: build, fit, test and write every member's files (and their MLflow runs: children of the
    sweep's, in sweep_dir); each member's best val/acc."""
    cfgs = [cfg for cfg, _, _ in group]
    first = cfgs[0]
    if first.train:
        paths = [member_path(cfg) for cfg in cfgs]  # compiled where each member's run alone would be (dropout: not)
        path = next((path for path in paths if not path.compile), paths[0])
        held = None
    else:  # train=false: each member the network its checkpoint holds, tested there
        path = TrainingPath(1, False, "train=false: each member's checkpoint tested")
        held = [checkpoint["hyper_parameters"] for _, checkpoint, _ in group]
    try:
        system = MLPSystem.population(cfgs, path, held)
    except MlptrainError as error:  # what every member shares and cannot be built (its optimizer): as a run's
        log.error("%s", error)
        for cfg in cfgs:
            write_log_line(Path(cfg.output_dir) / log_name, str(error), "ERROR")
        return {Path(cfg.output_dir): None for cfg in cfgs}
    system.log_name = log_name
    checkpoints = {Path(cfg.output_dir): checkpoint for cfg, checkpoint, _ in group}
    resumed = [checkpoints[run_dir] for run_dir in system.run_dirs]
    system.resumed = resumed if resumed[0] is not None and first.train else None
    if not first.train:  # where each checkpoint stood (they stand at the same update: _resumable), as a run's
        system.restore_records(resumed[0], resumed)
        for trajectory, checkpoint in zip(system.trajectories or (), resumed):  # the path its training took
            trajectory.load_state_dict(checkpoint.get("callbacks", {}).get(trajectory.state_key, {}))
    if str(first.trainer.precision) in ("64-true", "64"):
        system.double()  # as train() does: weights drawn in float32, trained in float64
    datamodule = MNISTDataModule(
        **plain(first.data),
        steps_per_call=path.steps_per_call,
        limit_train_batches=first.trainer.limit_train_batches,
        gather=False,
        member_shuffle_seeds=[cfg.data.shuffle_seed for cfg in system.cfgs],
    )
    torch.set_float32_matmul_precision(first.matmul_precision)
    _member_hooks(system)
    how = "trained" if first.train else "tested"
    log.info("Population of %d members, %s together: %s", len(cfgs), how, system.describe())
    callbacks: list[Callback] = list(extra)
    try:
        if first.logger.tensorboard:  # each member its own event files, as its run alone's
            system.tensorboards = [tensorboard_logger(run_dir) for run_dir in system.run_dirs]
        if first.logger.mlflow.enabled:  # each member its MLflow run, before training (a required store refuses)
            system.trackers = _trackers(system, group, sweep_dir)
            callbacks.append(Tracking(system.trackers))
        trainer = trainer_for(system, first, callbacks)
    except MlptrainError as error:  # settings Lightning refuses: every member's, as a run's before it trains
        log.error("%s", error)
        for m in system.active():
            system.note(m, str(error), "ERROR")
        finish_tracking(system)  # FAILED: no summary.json
        return {run_dir: None for run_dir in system.run_dirs}
    starts = {Path(cfg.output_dir): found for cfg, _, found in group}
    return fit_and_test(system, trainer, datamodule, [starts[run_dir] for run_dir in system.run_dirs])


def _trackers(system: MLPSystem, group: Sequence[Resumed], sweep_dir: Path | None) -> list[Any]:
    """Each member's MLflow run (logger=mlflow), started, or continued where it resumes its own directory's
    checkpoint (not another run's ckpt_path), a child of the sweep's, on one Store: a store that fails is one
    warning for them all."""
    from mlptrain.tracking import Store, tracked

    own = {
        Path(cfg.output_dir): checkpoint
        for cfg, checkpoint, found in group
        if found is not None and Path(cfg.output_dir).resolve() in Path(found).resolve().parents
    }
    store, why = Store(system.plain[0]["logger"]["mlflow"]), system.describe()
    return [tracked(system.plain[m], run_dir, own.get(run_dir), why, sweep_dir, store)
            for m, run_dir in enumerate(system.run_dirs)]  # fmt: skip
