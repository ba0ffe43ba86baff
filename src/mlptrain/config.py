"""The config's schema, in one place: every key's type, and every rule on its value.

Types are dataclasses registered in Hydra's ConfigStore; the YAML files in conf/ are presets over them
(each names its schema first in its defaults list) and hold the defaults and the comments. A value of
the wrong type is refused while Hydra composes the config, naming the key, the value and the type.

Ranges, choices and rules between keys are the table RULES below, checked by `check(cfg)` before a run
reads data or writes a file. tests/test_schema.py breaks every key and every rule from these two.

Importing this module imports neither torch nor Lightning (`python train.py --help` composes the config with
these schemas and needs nothing more): RULES is built on first use, and imports the registries it lists then.
"""

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mlptrain.errors import ConfigError
from mlptrain.mnist import N_TEST_FILE, N_TRAIN_FILE, NORMALIZATIONS

LOADERS = ("tensor", "dataloader")  # data.loader: how mlptrain.data.MNISTDataModule serves mini-batches
SCHEDULERS = ("none", "cosine", "step", "onecycle")  # scheduler.name: what mlptrain.system.make_scheduler makes

# ---------------------------------------------------------------------------------------------------------
# Types. MISSING everywhere: the defaults live in conf/, next to their comments. `Any` marks keys that take
# more than one type (auto or a number, a name or a mapping); RULES says which values they take.


@dataclass
class ModelConfig:
    hidden: list[int] = MISSING
    activation: Any = MISSING
    logistic_slope: float = MISSING
    leaky_relu_slope: float = MISSING
    maxout_pieces: int = MISSING
    output_activation: str = MISSING
    init: str = MISSING
    dropout: float = MISSING


@dataclass
class DataConfig:
    dir: str | None = MISSING
    download: bool = MISSING
    val_size: int = MISSING
    train_size: int | None = MISSING
    split_seed: int = MISSING
    shuffle_seed: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    normalize: str = MISSING
    loader: str = MISSING
    num_workers: int = MISSING


@dataclass
class LossConfig:
    name: str = MISSING
    # Only mse has reductions; the others average over the mini-batch. Kept here so that a recipe such as
    # experiment=nielsen (which sets the quadratic cost's) still composes with loss=binary_cross_entropy.
    reduction: str | None = None


@dataclass
class MSEConfig(LossConfig):
    reduction: str = MISSING


@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    implementation: str = MISSING


@dataclass
class SGDConfig(OptimizerConfig):
    momentum: float = MISSING
    nesterov: bool = MISSING


@dataclass
class AdamConfig(OptimizerConfig):
    betas: list[float] = MISSING


@dataclass
class SchedulerConfig:
    name: str = MISSING


@dataclass
class CosineConfig(SchedulerConfig):
    min_lr: float = MISSING


@dataclass
class StepConfig(SchedulerConfig):
    step_size: int = MISSING
    gamma: float = MISSING


@dataclass
class OneCycleConfig(SchedulerConfig):
    pct_start: float = MISSING
    cycle_momentum: bool = MISSING


@dataclass
class TrainerConfig:
    """Lightning Trainer arguments. Others can be added with +trainer.NAME=VALUE; Lightning checks those."""

    accelerator: str = MISSING
    strategy: str = MISSING
    devices: Any = MISSING
    num_nodes: int = MISSING
    max_epochs: int = MISSING
    precision: str = MISSING
    gradient_clip_val: float | None = MISSING
    gradient_clip_algorithm: str = MISSING
    deterministic: bool = MISSING
    limit_train_batches: Any = MISSING  # an int counts batches, a float is a fraction: no one numeric type
    limit_val_batches: Any = MISSING
    limit_test_batches: Any = MISSING
    num_sanity_val_steps: int = MISSING


@dataclass
class MlflowConfig:  # conf/logger/mlflow.yaml says what each key does; off in the other logger presets
    enabled: bool = False
    tracking_uri: str | None = None
    experiment: str = "mlptrain"
    required: bool = False
    log_checkpoints: bool = False


@dataclass
class LoggerConfig:
    tensorboard: bool = MISSING
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


@dataclass
class ReportConfig:
    enabled: bool = MISSING
    weight_tiles: int = MISSING
    mistakes: int = MISSING
    network_images: int = MISSING
    landscape: str | None = MISSING
    page: bool = MISSING


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    loss: LossConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = MISSING
    train: bool = MISSING
    ckpt_path: str | None = MISSING
    resume: str | None = MISSING
    progress_bar: Any = MISSING
    matmul_precision: str = MISSING
    check_finite_every_n_steps: int = MISSING
    steps_per_call: Any = MISSING
    compile: Any = MISSING
    log_grad_norms: bool = MISSING
    report: ReportConfig = field(default_factory=ReportConfig)
    output_dir: str = MISSING


@dataclass
class CompareConfig(TrainConfig):
    baselines: dict[str, Any] = field(default_factory=dict)


@dataclass
class PredictConfig:
    """scripts/predict.py's arguments (no Hydra there: it writes nothing, so it needs no run directory)."""

    ckpt_path: str = MISSING  # a checkpoint written by train.py
    image: str | None = None  # a picture of one digit
    index: int | None = None  # or an image of the MNIST test set
    label: int | None = None  # the image's true digit, for nudges= with image= (index= knows its own)
    network: str | None = None  # write network.png here: the activations layer by layer for this image
    nudges: str | None = None  # write nudges.png here: what backpropagation wants changed for this image


@dataclass
class ExportConfig:
    """scripts/export.py's arguments."""

    ckpt_path: str = MISSING  # a checkpoint written by train.py
    format: str = "page"  # page: index.html, draw a digit and watch the network decide | onnx: model.onnx
    out: str | None = None  # where to write: default <run dir>/page/ (page) or <run dir>/model.onnx (onnx)
    examples: int = 6  # the page's test images to step through: the first N, then the N most confident mistakes
    serve: bool = False  # then serve the page on http://127.0.0.1:<port> until Ctrl-C, for browsers refusing files
    port: int = 8000  # serve's port (0: any free one)


# Where each schema is registered: conf/train.yaml and conf/compare.yaml name theirs in their defaults,
# and each preset in a group names the schema of its group (e.g. conf/optimizer/sgd.yaml: sgd_schema).
SCHEMAS: dict[str, type] = {
    "train_schema": TrainConfig,
    "compare_schema": CompareConfig,
    "model/mlp_schema": ModelConfig,
    "data/mnist_schema": DataConfig,
    "loss/loss_schema": LossConfig,
    "loss/mse_schema": MSEConfig,
    "optimizer/optimizer_schema": OptimizerConfig,
    "optimizer/sgd_schema": SGDConfig,
    "optimizer/adam_schema": AdamConfig,
    "scheduler/scheduler_schema": SchedulerConfig,
    "scheduler/cosine_schema": CosineConfig,
    "scheduler/step_schema": StepConfig,
    "scheduler/onecycle_schema": OneCycleConfig,
    "trainer/trainer_schema": TrainerConfig,
    "logger/logger_schema": LoggerConfig,
}


def register() -> None:
    """Put the schemas into Hydra's ConfigStore; done on import, before any command composes a config."""
    store = ConfigStore.instance()
    for path, node in SCHEMAS.items():
        group, _, name = path.rpartition("/")
        # package: conf/loss/binary_cross_entropy.yaml is global (it also sets the model's output layer),
        # and its schema must still land on `loss`.
        store.store(name=name, node=node, group=group or None, package=group or None)


register()

# ---------------------------------------------------------------------------------------------------------
# Rules: every range, choice and rule between keys. A rule reads the composed config and returns what is
# wrong, or None; `examples` are overrides that break it, which tests/test_schema.py tries one by one.

_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    key: str  # the key its message names first
    broken: Callable[[DictConfig], str | None]
    examples: tuple[tuple[str, ...], ...]  # each a list of command-line overrides that breaks the rule


def plain(cfg: Any) -> Any:
    """A config node resolved, as plain dicts and lists: what files, checkpoints and constructors are given."""
    return OmegaConf.to_container(cfg, resolve=True)


def _get(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=_ABSENT)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _fix(key: str) -> str:
    group = key.split(".")[0]
    where = f"conf/{group}/" if "." in key and group != "report" else "conf/train.yaml"
    return f"Change it on the command line or in {where}."


def _range(low: float | None, high: float | None, above: bool, below: bool) -> tuple[Callable[[Any], bool], str]:
    """A test for numbers in [low, high] (above/below open the ends), and how a message says it."""

    def inside(value: Any) -> bool:
        return (
            _is_number(value)
            and (low is None or (value > low if above else value >= low))
            and (high is None or (value < high if below else value <= high))
        )

    lows = "" if low is None else f"{'>' if above else '>='} {_number(low)}"
    highs = "" if high is None else f"{'<' if below else '<='} {_number(high)}"
    return inside, " and ".join(part for part in (lows, highs) if part)


def between(
    key: str,
    low: float | None = None,
    high: float | None = None,
    *,
    above: bool = False,
    below: bool = False,
    hint: str | None = None,
) -> Rule:
    """key in [low, high]; above/below make the ends open. Applies where the key exists (its option is chosen)."""
    inside, wanted = _range(low, high, above, below)

    def broken(cfg: DictConfig) -> str | None:
        value = _get(cfg, key)
        if value is _ABSENT or value is None or inside(value):
            return None
        return f"{key}={value!r} is out of range: it must be {wanted}. {_fix(key) if hint is None else hint}"

    examples = []
    if low is not None:
        examples.append((f"{key}={_number(low if above else low - 1)}",))
    if high is not None:
        examples.append((f"{key}={_number(high if below else high + 1)}",))
    return Rule(key, broken, tuple(examples))


def each_between(key: str, low: float, high: float | None = None, *, below: bool = False) -> Rule:
    """Every number of a list in [low, high] (or [low, high) with below)."""
    inside, wanted = _range(low, high, False, below)

    def broken(cfg: DictConfig) -> str | None:
        values = _get(cfg, key)
        if values is _ABSENT or all(inside(value) for value in values):
            return None
        return f"{key}={values} is out of range: each value must be {wanted}. {_fix(key)}"

    return Rule(key, broken, ((f"{key}=[{_number(low - 1)}]",),))


def one_of(key: str, choices: Any, why: str = "") -> Rule:
    """key is one of `choices` (a sequence, or a mapping whose keys are the choices)."""
    allowed = list(choices)

    def broken(cfg: DictConfig) -> str | None:
        value = _get(cfg, key)
        if value is _ABSENT or any(value == choice and type(value) is type(choice) for choice in allowed):
            return None
        names = ", ".join("null" if c is None else str(c).lower() if isinstance(c, bool) else str(c) for c in allowed)
        return f"{key}={value!r} is not one of its choices: use one of {names}{why}."

    return Rule(key, broken, ((f"{key}=no_such_choice",),))


def rule(key: str, broken: Callable[[DictConfig], str | None], *examples: tuple[str, ...]) -> Rule:
    """A rule between keys, or on a key that takes more than one type."""
    return Rule(key, broken, examples)


_STEPS_PER_CALL = rule(
    "steps_per_call",
    lambda cfg: (
        not (cfg.steps_per_call == "auto" or (_is_int(cfg.steps_per_call) and cfg.steps_per_call >= 1))
        and f"steps_per_call={cfg.steps_per_call!r} is not allowed: use auto or a positive integer."
    ),
    ("steps_per_call=0",),
    ("steps_per_call=fast",),
)
_COMPILE = one_of("compile", ["auto", True, False])


def _refused_path(cfg: DictConfig) -> str | None:
    """steps_per_call and compile against the rest of the run: training_path.choose_path decides, and refuses."""
    if not cfg.train or _STEPS_PER_CALL.broken(cfg) or _COMPILE.broken(cfg):  # those have their own message
        return None
    from mlptrain.training_path import choose_path

    try:
        choose_path(cfg)
    except ConfigError as error:
        return str(error)
    return None


def _devices(cfg: DictConfig) -> str | None:
    devices = _get(cfg, "trainer.devices")
    if devices == "auto" or (_is_int(devices) and (devices >= 1 or devices == -1)):
        return None
    if isinstance(devices, list) and devices and all(_is_int(d) and d >= 0 for d in devices):
        return None
    return (
        f"trainer.devices={devices!r} is not a device count: use a positive integer, -1 (all), auto, or a list "
        "of device indices such as [0, 1]."
    )


def _limit(key: str) -> Rule:
    def broken(cfg: DictConfig) -> str | None:
        value = _get(cfg, key)
        if value is None or (_is_int(value) and value >= 0) or (isinstance(value, float) and 0 <= value <= 1):
            return None
        return (
            f"{key}={value!r} is neither a count nor a fraction: use null (all), an integer >= 0 (that many "
            "batches) or a float in [0, 1] (that fraction of them)."
        )

    return rule(key, broken, (f"{key}=-1",), (f"{key}=1.5",), (f"{key}=abc",))


def _numpy(cfg: DictConfig) -> str | None:
    """What the NumPy baseline (mlptrain.baselines.numpy_mlp) does not mirror, refused before anything trains."""
    from mlptrain.baselines.numpy_mlp import MIRRORED as NUMPY_OPTIMIZERS

    baselines = cfg.get("baselines") or {}
    if "numpy" not in baselines:
        return None
    model, optimizer = _get(cfg, "model"), _get(cfg, "optimizer")
    target = optimizer.get("_target_")
    how = {"_target_", "_partial_", "implementation"}  # not the maths: which class, and torch's implementation of it
    unmirrored = sorted(set(optimizer) - NUMPY_OPTIMIZERS.get(target, set()) - how)
    problems = [
        cfg.scheduler.name != "none"
        and f"it trains at a constant learning rate but scheduler={cfg.scheduler.name}: add scheduler=none",
        model["dropout"] and "it has no dropout: set model.dropout=0",
        isinstance(model["activation"], Mapping)
        and "it cannot run a `_target_` activation: set model.activation to one of the registry's names",
        target not in NUMPY_OPTIMIZERS
        and f"it has SGD, Adam and AdamW written by hand, not optimizer._target_={target}: use one of those",
        target in NUMPY_OPTIMIZERS
        and unmirrored
        and f"its {target.rsplit('.', 1)[1]} does not implement optimizer.{', optimizer.'.join(unmirrored)}: remove it",
    ]
    wrong = [problem for problem in problems if problem]
    if not wrong:
        return None
    return f"The NumPy baseline (baselines.numpy) cannot compare like with like here: {'; '.join(wrong)}."


def _loss_and_output(cfg: DictConfig) -> str | None:
    name, output = cfg.loss.name, cfg.model.output_activation
    if name == "cross_entropy" and output != "none":
        return (
            f"loss=cross_entropy takes logits and applies its own log-softmax, so it needs "
            f"model.output_activation=none (got {output!r}). Set model.output_activation=none, or use loss=mse "
            f"with a {output} output."
        )
    if name == "binary_cross_entropy" and output != "sigmoid":
        return (
            f"loss=binary_cross_entropy compares each output with 0 or 1, so it needs "
            f"model.output_activation=sigmoid (got {output!r})."
        )
    return None


def _activation(cfg: DictConfig) -> str | None:
    from mlptrain.activations import HIDDEN_ACTIVATIONS

    spec = _get(cfg, "model.activation")
    if (isinstance(spec, str) and spec in HIDDEN_ACTIVATIONS) or (isinstance(spec, Mapping) and "_target_" in spec):
        return None
    return (
        f"model.activation={spec!r} is not a known activation: use one of {', '.join(HIDDEN_ACTIVATIONS)}, or a "
        "mapping whose `_target_` names a torch.nn.Module class, e.g. model.activation='{_target_: torch.nn.Hardtanh}'."
    )


SEED_MAX = 2**32 - 1  # numpy's and Lightning's seeds are 32-bit; Lightning replaces one outside with 0


def _credentials_in(uri: str | None) -> bool:
    from urllib.parse import urlsplit

    return bool(uri) and "@" in urlsplit(uri).netloc


@functools.cache
def _train_rules() -> tuple[Rule, ...]:
    """RULES: made once, on first use, with the registries whose names they list."""
    from mlptrain.activations import OUTPUT_ACTIVATIONS
    from mlptrain.losses import LOSSES, MSE_REDUCTIONS
    from mlptrain.model import INITS
    from mlptrain.page import mirrored_targets, mirrors
    from mlptrain.step import IMPLEMENTATIONS, MIXED_PRECISION, optimizer_class

    return (
        between("seed", 0, SEED_MAX),
        one_of(
            "resume",
            [None, "auto", "discard"],
            ": auto continues from the newest checkpoint in the run directory; discard removes the run the directory "
            "holds and starts afresh there",
        ),
        rule(
            "resume",
            lambda cfg: (
                cfg.resume == "auto"
                and cfg.ckpt_path is not None
                and "Give resume=auto or ckpt_path, not both: resume=auto finds the checkpoint itself."
            ),
            ("resume=auto", "ckpt_path=conf/train.yaml"),
        ),
        rule(
            "train",
            lambda cfg: (
                not cfg.train
                and cfg.ckpt_path is None
                and "train=false evaluates a checkpoint on the test set: also give ckpt_path=path/to/best.ckpt."
            ),
            ("train=false",),
        ),
        one_of("progress_bar", ["auto", True, False]),
        one_of("matmul_precision", ["highest", "high", "medium"]),
        between("check_finite_every_n_steps", 1),
        _STEPS_PER_CALL,
        _COMPILE,
        rule("compile", _refused_path, ("compile=true", "steps_per_call=1")),
        rule("steps_per_call", _refused_path, ("steps_per_call=5", "data.loader=dataloader")),
        between("report.weight_tiles", 1),
        between("report.mistakes", 1),
        between("report.network_images", 0, 10),
        one_of("report.landscape", (None, "pca", "random")),
        rule(
            "logger.mlflow.tracking_uri",
            lambda cfg: (
                _credentials_in(cfg.logger.mlflow.tracking_uri)
                and "logger.mlflow.tracking_uri holds a user name or password, which config.yaml, the log and the "
                "report would then show: give the URI without them, and the credentials in MLflow's own environment "
                "variables, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)."
            ),
            ("logger=mlflow", "logger.mlflow.tracking_uri='http://me:secret@localhost:5000'"),
        ),
        rule(
            "logger.mlflow.experiment",
            lambda cfg: (
                not str(cfg.logger.mlflow.experiment).strip()
                and "logger.mlflow.experiment is empty: give the name of the MLflow experiment the runs go to, "
                "e.g. logger.mlflow.experiment=mlptrain (it is made where it does not exist)."
            ),
            ("logger=mlflow", "logger.mlflow.experiment=''"),
        ),
        rule(
            "report.landscape",
            lambda cfg: (
                cfg.report.landscape is not None
                and cfg.data.loader != "tensor"
                and "report.landscape draws the training loss on training images the tensor loader holds: "
                "set data.loader=tensor, or report.landscape=null."
            ),
            ("report.landscape=pca", "data.loader=dataloader"),
        ),
        rule(
            "report.page",
            lambda cfg: (
                cfg.report.page
                and isinstance(cfg.model.activation, Mapping)
                and not mirrors(cfg.model.activation.get("_target_", ""))
                and f"report.page=true: the page's JavaScript cannot compute model.activation's "
                f"{cfg.model.activation.get('_target_')} (it computes the registry's activations and "
                f"{mirrored_targets()}). Use one of those, or report.page=false and scripts/export.py format=onnx."
            ),
            ("report.page=true", "model.activation={_target_: torch.nn.Hardshrink}"),
        ),
        # model
        each_between("model.hidden", 1),
        rule("model.activation", _activation, ("model.activation=relux",), ("model.activation={min_val: 1}",)),
        between("model.logistic_slope", 0, above=True),
        between("model.maxout_pieces", 2),
        one_of("model.output_activation", OUTPUT_ACTIVATIONS),
        one_of("model.init", INITS),
        between("model.dropout", 0, 1, below=True),
        # data
        between("data.val_size", 1, N_TRAIN_FILE - 1),
        between("data.train_size", 1),
        rule(
            "data.train_size",
            lambda cfg: (
                (cfg.data.train_size or 0) > N_TRAIN_FILE - cfg.data.val_size
                and f"data.train_size={cfg.data.train_size} is more than the {N_TRAIN_FILE - cfg.data.val_size} "
                f"training "
                f"images left after data.val_size={cfg.data.val_size}: lower one of them, or set data.train_size=null."
            ),
            ("data.train_size=50001",),
        ),
        between("data.split_seed", 0, SEED_MAX),
        between("data.shuffle_seed", 0, SEED_MAX),
        between("data.batch_size", 1),
        between("data.eval_batch_size", 1),
        one_of("data.normalize", NORMALIZATIONS),
        one_of("data.loader", LOADERS),
        between("data.num_workers", 0),
        # loss
        one_of("loss.name", LOSSES),
        rule(
            "loss.reduction",
            lambda cfg: (
                cfg.loss.name == "mse"
                and cfg.loss.reduction not in MSE_REDUCTIONS
                and f"loss.reduction={cfg.loss.reduction!r} is not one of its choices: use one of "
                f"{', '.join(MSE_REDUCTIONS)} (half_sum is Nielsen's quadratic cost ½‖a−y‖² averaged over examples)."
            ),
            ("loss=mse", "loss.reduction=no_such_choice"),
        ),
        rule(
            "model.output_activation",
            _loss_and_output,
            ("model.output_activation=sigmoid",),
            ("loss=binary_cross_entropy", "model.output_activation=none"),
        ),
        # optimizer
        rule(
            "optimizer._target_",
            lambda cfg: (
                optimizer_class(cfg.optimizer._target_) is None
                and f"optimizer._target_={cfg.optimizer._target_} names no class that can be imported: use "
                "optimizer=sgd, "
                "adam or adamw, or the full path of a torch.optim class such as torch.optim.RMSprop."
            ),
            ("optimizer._target_=torch.optim.Nope",),
            ("optimizer._target_=no_such_module.SGD",),
        ),
        between("optimizer.lr", 0, above=True),
        one_of("optimizer.implementation", IMPLEMENTATIONS),
        rule(
            "optimizer.implementation",
            lambda cfg: (
                cfg.optimizer.implementation == "fused"
                and str(cfg.trainer.precision) in MIXED_PRECISION
                and f"optimizer.implementation=fused with trainer.precision={cfg.trainer.precision}: a fused "
                "optimizer unscales mixed precision's gradients itself, so Lightning cannot clip them. Use "
                "optimizer.implementation=auto (it picks fused only where it can be), foreach or single."
            ),
            ("optimizer.implementation=fused", "trainer.precision=16-mixed"),
        ),
        between("optimizer.weight_decay", 0),
        between("optimizer.momentum", 0),
        rule(
            "optimizer.nesterov",
            lambda cfg: (
                cfg.optimizer.get("nesterov")
                and not cfg.optimizer.get("momentum")
                and "optimizer.nesterov=true needs a momentum: set optimizer.momentum > 0 (e.g. 0.9), or "
                "nesterov=false."
            ),
            ("optimizer=sgd", "optimizer.nesterov=true", "optimizer.momentum=0"),
        ),
        each_between("optimizer.betas", 0, 1, below=True),
        rule(
            "optimizer.betas",
            lambda cfg: (
                "betas" in cfg.optimizer
                and len(cfg.optimizer.betas) != 2
                and f"optimizer.betas={list(cfg.optimizer.betas)} must be two numbers, the first and second "
                "moments' decay."
            ),
            ("optimizer=adam", "optimizer.betas=[0.9]"),
        ),
        # scheduler
        one_of("scheduler.name", SCHEDULERS),
        between("scheduler.min_lr", 0),
        between("scheduler.step_size", 1),
        between("scheduler.gamma", 0, above=True),
        between("scheduler.pct_start", 0, 1, above=True, below=True),
        # trainer
        one_of("trainer.accelerator", ["auto", "cpu", "gpu", "cuda", "mps"]),
        rule("trainer.devices", _devices, ("trainer.devices=0",), ("trainer.devices=many",)),
        between("trainer.num_nodes", 1),
        between("trainer.max_epochs", 1),
        one_of(
            "trainer.precision", ["32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "32", "64"]
        ),
        between("trainer.gradient_clip_val", 0),
        one_of("trainer.gradient_clip_algorithm", ["norm", "value"]),
        _limit("trainer.limit_train_batches"),
        _limit("trainer.limit_val_batches"),
        _limit("trainer.limit_test_batches"),
        between("trainer.num_sanity_val_steps", -1),
        # compare (scripts/compare.py)
        rule(
            "baselines",
            lambda cfg: (
                "baselines" in cfg
                and not cfg.baselines
                and "baselines is empty: name some, e.g. baselines=[numpy,centroid,logistic]."
            ),
            ("baselines=[]",),
        ),
        one_of("baselines.numpy.dtype", ["float32", "float64"]),
        rule(
            "baselines.numpy",
            _numpy,
            ("scheduler=cosine",),
            ("model.dropout=0.5",),
            ("optimizer=adam", "+optimizer.amsgrad=true"),
            ("optimizer._target_=torch.optim.RMSprop",),
        ),
    )


# Keys that no type or rule above can judge: paths, and class paths that only building can check. Each has
# a value that must fail, and where it is checked.
CHECKED_WHERE_USED: dict[str, tuple[str, str]] = {
    "ckpt_path": ("ckpt_path=conf", "train.py: it must be a file (then: an mlptrain checkpoint)"),
    "output_dir": ("output_dir=README.md", "train.py: it must be a directory, or not exist yet"),
    "data.dir": ("data.dir=conf", "data.py: it must hold MNIST/raw, the files' SHA-256 checked"),
    "trainer.strategy": ("trainer.strategy=nope", "Lightning's Trainer: it must be one Lightning knows"),
}


PREDICT_RULES: tuple[Rule, ...] = (
    rule(
        "image",
        lambda cfg: (
            (cfg.image is None) == (cfg.index is None)
            and "Give one of image=PATH (a picture of a digit) or index=N (a test-set image), not both or neither."
        ),
        ("index=3", "image=README.md"),
    ),
    between("index", 0, N_TEST_FILE - 1, hint="The test set's images are numbered from 0."),
    between("label", 0, 9, hint="A digit."),
    *(
        rule(
            key,
            lambda cfg, key=key: (
                cfg[key] is not None
                and not Path(cfg[key]).resolve().parent.is_dir()
                and f"{key}={cfg[key]} is in a folder that does not exist: make the folder, or name one that does."
            ),
            (f"{key}=no/such/folder/picture.png", "index=1"),
        )
        for key in ("network", "nudges")
    ),
    rule(
        "label",
        lambda cfg: (
            cfg.nudges is not None
            and cfg.image is not None
            and cfg.label is None
            and "nudges= needs the image's true digit to compute its cost: add label=D (0 to 9)."
        ),
        ("nudges=n.png", "image=README.md"),
    ),
)


EXPORT_RULES: tuple[Rule, ...] = (
    one_of("format", ["page", "onnx"]),
    between("examples", 0, 100, hint="Each is embedded in the page."),
    between("port", 0, 65535, hint="0 takes any free port."),
    rule(
        "serve",
        lambda cfg: cfg.serve and cfg.format != "page" and "serve=true serves the page: it needs format=page.",
        ("serve=true", "format=onnx"),
    ),
    rule(
        "out",
        lambda cfg: (
            cfg.out is not None
            and not Path(cfg.out).resolve().parent.is_dir()
            and f"out={cfg.out} is in a folder that does not exist: make the folder, or name one that does."
        ),
        ("out=no/such/folder/page",),
    ),
)


def check(cfg: DictConfig, rules: tuple[Rule, ...] | None = None) -> None:
    """Raise one ConfigError listing every rule `cfg` breaks (RULES by default); called before anything is read or
    written."""
    problems = [problem for problem in (r.broken(cfg) for r in (_train_rules() if rules is None else rules)) if problem]
    if problems:
        raise ConfigError(" ".join(dict.fromkeys(problems)))  # each said once, in the table's order


def parse_arguments(
    arguments: list[str], schema: type = PredictConfig, rules: tuple[Rule, ...] = PREDICT_RULES
) -> DictConfig:
    """A script's key=value arguments (scripts/predict.py's by default), typed by `schema`, checked by `rules`."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_cli(arguments))
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "an argument"
        raise ConfigError(
            f"{key} is not right: {str(error).splitlines()[0]}. The arguments are "
            f"{', '.join(f'{name}=...' for name in schema.__dataclass_fields__)}."
        ) from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"Give {', '.join(f'{key}=...' for key in missing)}, e.g. "
            "ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt."
        )
    check(cfg, rules)
    return cfg  # type: ignore[return-value]


def __getattr__(name: str) -> Any:
    """RULES, made on first use (the registries it lists import torch)."""
    if name == "RULES":
        return _train_rules()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
