"""The path policy: how a run makes its updates, decided from its config, with the reason in one log line.

    choose_path(cfg) -> TrainingPath(steps_per_call, compile, why)

`steps_per_call: auto` gives each Lightning training step AUTO_STEPS_PER_CALL mini-batches, whose updates
mlptrain.step makes itself, unless something needs Lightning's own loop (`_plain_reason`, `_optimizer_reason`);
`compile: auto` compiles them where the run makes at least COMPILE_MIN_UPDATES updates and has no dropout.
Imports torch only where a question needs it (the optimizer's class, the number of GPUs)."""

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from mlptrain.errors import ConfigError

AUTO_STEPS_PER_CALL = 50  # mini-batches per Lightning training step when steps_per_call=auto
# compile=auto compiles runs of at least this many updates: compiling costs 25-40 s on a 2-core CPU the first
# time (a few seconds with inductor's cache warm) and saves 0.3-1.4 ms an update (docs/benchmarks.md), so shorter
# runs would lose time by it.
COMPILE_MIN_UPDATES = 20_000
FULL_PRECISION = ("32-true", "32", "64-true", "64")  # trainer.precision without autocast


@dataclass(frozen=True)
class TrainingPath:
    """How train(cfg) runs the updates: mini-batches per Lightning training step, compiled or not, and why."""

    steps_per_call: int
    compile: bool
    why: str


def several_processes(trainer: DictConfig) -> bool:
    """Whether Lightning runs this trainer config as several processes (DDP): more than one device or node.
    devices=auto is several where Lightning would take several GPUs (accelerator auto or gpu), one elsewhere."""
    devices = trainer.get("devices", 1)
    if devices == "auto":
        import torch

        gpu = str(trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda")
        one = not (gpu and torch.cuda.device_count() > 1)
    else:
        one = devices in (1, "1") or (OmegaConf.is_list(devices) and len(devices) == 1)
    return not one or trainer.get("num_nodes", 1) > 1


def _loader_reason(cfg: DictConfig) -> str | None:
    return "data.loader=dataloader serves one mini-batch at a time" if cfg.data.loader != "tensor" else None


def _mixed_reason(cfg: DictConfig, member: bool = False) -> str | None:
    """Why mixed precision takes one mini-batch a training step: Lightning's loop autocasts each (and scales a
    16-bit run's loss); a member's step is made under that autocast. None for 32 and 64 bits."""
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision in FULL_PRECISION:
        return None
    if member:
        return f"trainer.precision={precision}, under the autocast Lightning puts around each training step"
    return f"trainer.precision={precision} needs Lightning's mixed-precision loop (loss scaling)"


def _loop_needed(cfg: DictConfig) -> str | None:
    """Why a run needs Lightning's own loop, one mini-batch a training step, whatever counts its steps, or None."""
    return _loader_reason(cfg) or lightning_only(cfg) or _mixed_reason(cfg)


def _counted(cfg: DictConfig) -> str | None:
    """The first trainer key set that counts Lightning's training steps (so each must be one mini-batch), or None."""
    trainer = cfg.trainer
    counted = {
        "max_steps": trainer.get("max_steps", -1) not in (-1, None),
        "val_check_interval": trainer.get("val_check_interval") not in (None, 1.0),
        "accumulate_grad_batches": trainer.get("accumulate_grad_batches", 1) != 1,
    }
    return next((key for key, is_set in counted.items() if is_set), None)


def _plain_reason(cfg: DictConfig) -> str | None:
    """Why this config must run in Lightning's own loop (one mini-batch per training step), or None."""
    key = _counted(cfg)
    return _loop_needed(cfg) or (_counts(key) if key else None)


def _counts(key: str) -> str:
    return f"trainer.{key} counts Lightning's training steps, which would each hold several mini-batches"


def lightning_only(cfg: DictConfig) -> str | None:
    """Why only Lightning's own loop can train this config, and a population's engine cannot (its members then
    train on their own, saying why), or None: _plain_reason's, but for what the engine does as that loop does,
    one mini-batch a training step (a DataLoader's, max_steps, val_check_interval, accumulate_grad_batches)."""
    if several_processes(cfg.trainer):
        return "with several processes Lightning's loop synchronises the gradients"
    scaled = str(cfg.trainer.get("precision", "32-true")) != "bf16-mixed"  # 16-mixed: a run's loss scaler
    return _mixed_reason(cfg) if scaled else None


def _optimizer_reason(cfg: DictConfig) -> str | None:
    from mlptrain.step import optimizer_class, unsupported_reason

    kind = optimizer_class(cfg.optimizer["_target_"])
    if kind is None:  # mlptrain.config refuses it; this only keeps choose_path total
        return "the optimizer class could not be imported"
    return unsupported_reason(kind, cfg.optimizer)


def updates_per_run(cfg: DictConfig) -> int:
    """Optimizer updates that the configured run makes: epochs x mini-batches per epoch (limits applied)."""
    data, trainer = cfg.data, cfg.trainer
    if not all(isinstance(n, int) and n > 0 for n in (data.batch_size, data.val_size, data.train_size or 1)):
        return 0  # MNISTDataModule says what is wrong with them
    examples = data.train_size or 60_000 - data.val_size
    batches = -(-examples // data.batch_size)
    limit = trainer.get("limit_train_batches")
    if isinstance(limit, float):
        batches = int(batches * limit)
    elif isinstance(limit, int):
        batches = min(batches, limit)
    epochs = trainer.get("max_epochs") or 1000  # None or -1: until stopped
    return batches * (epochs if epochs > 0 else 1000)


def choose_path(cfg: DictConfig) -> TrainingPath:
    """steps_per_call and compile as the config sets them, `auto` resolved. Raises ConfigError for a choice
    that cannot hold; an optimizer without a functional update falls back to Lightning's loop with a reason."""
    wanted, compiling = cfg.steps_per_call, cfg.compile  # of the kinds mlptrain.config allows
    plain, optimizer = _plain_reason(cfg), _optimizer_reason(cfg)
    if wanted == 1 or (wanted == "auto" and (plain or optimizer)) or (wanted != "auto" and optimizer and not plain):
        why = "steps_per_call=1" if wanted == 1 else (plain or optimizer)
        if compiling is True:
            raise ConfigError(
                f"compile=true compiles the updates of several mini-batches per training step, but this run makes "
                f"one per step ({why}). Set compile=auto or false, or change what keeps it in Lightning's loop."
            )
        return TrainingPath(1, False, f"Lightning's loop, one mini-batch per training step: {why}")
    if plain:
        raise ConfigError(
            f"steps_per_call={wanted} cannot be used here: {plain}. Set steps_per_call=auto (it then picks 1) or 1."
        )
    steps = AUTO_STEPS_PER_CALL if wanted == "auto" else wanted
    updates = updates_per_run(cfg)
    cycled = cfg.scheduler.name == "onecycle" and cfg.scheduler.get("cycle_momentum", False)
    if cycled and cfg.optimizer["_target_"] == "torch.optim.SGD":
        if compiling is True:
            raise ConfigError(
                "compile=true does not compile SGD with a momentum that scheduler.cycle_momentum=true changes every "
                "step: set compile=auto or false, or scheduler.cycle_momentum=false."
            )
        return TrainingPath(
            steps, False, f"{steps} mini-batches per training step, not compiled: SGD's momentum is cycled"
        )
    if compiling == "auto":
        dropout = cfg.model.get("dropout", 0.0)
        compiling = updates >= COMPILE_MIN_UPDATES and not dropout
        why = (
            f"{updates:,} updates, at least {COMPILE_MIN_UPDATES:,} pay for compiling"
            if compiling
            else "dropout: compiled code would draw other random masks than the plain path"
            if dropout and updates >= COMPILE_MIN_UPDATES
            else f"{updates:,} updates, fewer than the {COMPILE_MIN_UPDATES:,} that pay for compiling"
        )
    else:
        why = f"compile={str(compiling).lower()}"
    return TrainingPath(
        steps,
        bool(compiling),
        f"{steps} mini-batches per training step, {'compiled' if compiling else 'not compiled'} ({why})",
    )


def member_path(cfg: DictConfig) -> TrainingPath:
    """A population member's path: choose_path's, except where a run would take Lightning's loop for what the
    population's engine does as well (steps_per_call=1, data.loader=dataloader, bf16-mixed (under the autocast
    Lightning puts around each training step), and trainer.max_steps,
    val_check_interval or accumulate_grad_batches, which count training steps of one mini-batch; a torch.optim
    class without a functional update here, whose updates are each the optimizer's own step()): the engine then
    makes the updates Lightning's loop makes (step.Engine), not compiled. Where only Lightning's loop will do
    (lightning_only), choose_path's: the member trains alone."""
    path = choose_path(cfg)
    if path.steps_per_call > 1 or lightning_only(cfg):
        return path
    own = _optimizer_reason(cfg)
    own_step = f": {own}, so each update is its own step()" if own else ""
    key, loader = _counted(cfg), _loader_reason(cfg) or _mixed_reason(cfg, member=True)
    if cfg.steps_per_call == 1 or key or loader:
        why = "steps_per_call=1" if cfg.steps_per_call == 1 else loader or f"trainer.{key} counts training steps"
        return TrainingPath(1, False, f"1 mini-batch per training step ({why}), not compiled{own_step}")
    steps = AUTO_STEPS_PER_CALL if cfg.steps_per_call == "auto" else cfg.steps_per_call
    return TrainingPath(steps, False, f"{steps} mini-batches per training step, not compiled{own_step}")
