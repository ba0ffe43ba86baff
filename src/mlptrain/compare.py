"""compare(cfg): the autograd trainer and baselines on one split, from one set of weights, in one batch order.

A baseline is any object with this protocol (the NumPy MLP, the centroid classifier below, or yours):

    fit_epoch(x, y, batch_indices) -> mean training loss or None   # one pass, batches in the given order
    predict(x) -> labels (N,)
    loss(x, y) -> float                        # optional: mean loss, for the loss columns
    gradients(x, y) -> [(dW, db), ...]         # optional: for the gradient-parity table
    load_weights([(W, b), ...]) -> None        # optional: start from the trainer's initial weights

x is (N, 784) float32 as the trainer sees it (same normalisation), y (N,) int64, W in PyTorch's (out, in)
layout. A baseline config with `trainer_overrides` instead runs the trainer itself with those changes
(logistic regression is the trainer with no hidden layer).
"""

import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mlptrain.config import check, plain
from mlptrain.data import MNISTDataModule
from mlptrain.errors import ConfigError, MlptrainError
from mlptrain.losses import make_loss
from mlptrain.model import MLP
from mlptrain.rundir import write_csv
from mlptrain.train import train

log = logging.getLogger(__name__)

Array = np.ndarray
TRAINER = "mlptrain"


def _accuracy(pred: Array, y: Array) -> float:
    return float((np.asarray(pred) == y).mean())


class _RecordEpochs(L.Callback):
    """For the trainer: its initial weights, and per epoch the training time and val/test figures."""

    def __init__(self, name: str, splits: Mapping[str, tuple[Array, Array]]) -> None:
        self.name, self.splits = name, splits
        self.rows: list[dict[str, Any]] = []
        self.initial: list[tuple[Array, Array]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.initial = [
            (layer.weight.detach().cpu().numpy().copy(), layer.bias.detach().cpu().numpy().copy())
            for layer in pl_module.model.layers
        ]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before the module logs and resets its training loss, so the epoch's value is still there; after
        # its validation, which stops the module's epoch timer.
        row = {
            "system": self.name,
            "epoch": trainer.current_epoch,
            "epoch_seconds": pl_module.epoch_seconds[-1],
            "train_loss": pl_module.epoch_train_loss(),
        }
        with torch.no_grad():
            for split, (x, y) in self.splits.items():
                output = pl_module.model(torch.from_numpy(x).to(pl_module.device))
                labels = torch.from_numpy(y).to(pl_module.device)
                row[f"{split}_loss"] = float(pl_module.loss_fn(output, labels))
                row[f"{split}_acc"] = float((output.argmax(-1) == labels).float().mean())
        self.rows.append(row)


def _build(name: str, spec: DictConfig) -> Any:
    try:
        return instantiate(spec)
    except Exception as error:
        cause = error.__cause__ or error  # Hydra wraps what the constructor raised
        if isinstance(cause, MlptrainError):
            raise cause from None
        raise ConfigError(
            f"baselines.{name} could not be built ({cause}). Check conf/baselines/{name}.yaml."
        ) from error


def _run_trainer(cfg: DictConfig, name: str, run_dir: Path, splits: Mapping[str, tuple[Array, Array]]) -> _RecordEpochs:
    recorder = _RecordEpochs(name, splits)
    cfg = OmegaConf.merge(cfg, {"output_dir": str(run_dir / name)})
    train(cfg, callbacks=[recorder])
    return recorder


def _run_baseline(
    baseline: Any, name: str, cfg: DictConfig, data: MNISTDataModule, splits: Mapping[str, tuple[Array, Array]]
) -> list[dict[str, Any]]:
    x, y = data.arrays("train")
    rows = []
    for epoch in range(cfg.trainer.max_epochs):
        batches = data.epoch_batches(epoch)
        started = time.perf_counter()
        train_loss = baseline.fit_epoch(x, y, batches)
        row = {"system": name, "epoch": epoch, "epoch_seconds": time.perf_counter() - started, "train_loss": train_loss}
        for split, (xs, ys) in splits.items():
            row[f"{split}_loss"] = baseline.loss(xs, ys) if hasattr(baseline, "loss") else None
            row[f"{split}_acc"] = _accuracy(baseline.predict(xs), ys)
        rows.append(row)
        log.info(
            "%s epoch %d: val/acc %.4f test/acc %.4f (%.2f s)",
            name,
            epoch,
            row["val_acc"],
            row["test_acc"],
            row["epoch_seconds"],
        )
    return rows


def gradient_parity(
    cfg: DictConfig, initial: Sequence[tuple[Array, Array]], baseline: Any, x: Array, y: Array
) -> list[dict[str, Any]]:
    """Autograd's gradients of the first batch, in float64, against the baseline's own: per parameter."""
    model_cfg = plain(cfg.model)
    model = MLP(**model_cfg).double()
    with torch.no_grad():
        for layer, (weight, bias) in zip(model.layers, initial):
            layer.weight.copy_(torch.from_numpy(weight))
            layer.bias.copy_(torch.from_numpy(bias))
    loss_fn = make_loss(**plain(cfg.loss))
    loss_fn(model(torch.from_numpy(x).double()), torch.from_numpy(y)).backward()
    rows = []
    for i, (layer, (dw, db)) in enumerate(zip(model.layers, baseline.gradients(x.astype(np.float64), y))):
        for param, mine in ((layer.weight, dw), (layer.bias, db)):
            reference = param.grad.numpy()
            difference = np.abs(np.asarray(mine, dtype=np.float64) - reference)
            rows.append(
                {
                    "parameter": f"layers.{i}.{'weight' if param is layer.weight else 'bias'}",
                    "shape": "x".join(map(str, reference.shape)),
                    "max_abs_diff": float(difference.max()),
                    "max_rel_diff": float(difference.max() / max(np.abs(reference).max(), 1e-300)),
                }
            )
    return rows


def compare(cfg: DictConfig) -> list[dict[str, Any]]:
    """Train the trainer and every baseline in cfg.baselines; write the tables and the plot; return the epoch rows."""
    from mlptrain.plots import plot_test_accuracy  # matplotlib is only needed here

    check(cfg)  # before any training: a comparison that would not compare like with like is refused
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, verbose=False)
    data = MNISTDataModule(
        **{**plain(cfg.data), "loader": "tensor"},
        limit_train_batches=cfg.trainer.limit_train_batches,
    )
    splits = {"val": data.arrays("val"), "test": data.arrays("test")}

    # Built before any training, so that a baseline refusing this config stops the run at once.
    baselines = {
        name: spec if "trainer_overrides" in spec else _build(name, spec) for name, spec in cfg.baselines.items()
    }
    trainer = _run_trainer(cfg, TRAINER, run_dir, splits)
    rows, parity = list(trainer.rows), []
    (x, y), first = data.arrays("train"), data.epoch_batches(0)[0]
    first_batch = (x[first], y[first])
    for name, baseline in baselines.items():
        if isinstance(baseline, DictConfig):
            rows += _run_trainer(OmegaConf.merge(cfg, baseline.trainer_overrides), name, run_dir, splits).rows
            continue
        if hasattr(baseline, "load_weights"):
            baseline.load_weights(trainer.initial)
        if hasattr(baseline, "gradients"):
            parity += [{"system": name, **row} for row in gradient_parity(cfg, trainer.initial, baseline, *first_batch)]
        rows += _run_baseline(baseline, name, cfg, data, splits)

    write_csv(run_dir / "epochs.csv", rows)
    if parity:
        write_csv(run_dir / "gradient_parity.csv", parity)
    (run_dir / "comparison.md").write_text(comparison_markdown(cfg, rows, parity))
    plot_test_accuracy(rows, run_dir / "test_accuracy.png")
    log.info("Comparison written to %s", run_dir.resolve())
    return rows


def _figure(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def comparison_markdown(cfg: DictConfig, rows: list[dict[str, Any]], parity: list[dict[str, Any]]) -> str:
    """The last epoch of each system side by side, its training time against the trainer's, and gradient parity."""
    systems = list(dict.fromkeys(row["system"] for row in rows))
    seconds = {s: statistics.median(r["epoch_seconds"] for r in rows if r["system"] == s) for s in systems}
    lines = [
        f"Model {cfg.model.hidden} {cfg.model.activation} / {cfg.model.output_activation}, loss {cfg.loss.name}, "
        f"optimizer {cfg.optimizer._target_} lr {cfg.optimizer.lr}, batch {cfg.data.batch_size}, "
        f"{cfg.trainer.max_epochs} epochs, seed {cfg.seed}.",
        "",
        "| system | epochs | val acc | test acc | test loss | s/epoch (median) | × trainer's s/epoch "
        "| training s (total) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system in systems:
        mine = [r for r in rows if r["system"] == system]
        last = mine[-1]
        lines.append(
            f"| {system} | {last['epoch'] + 1} | {_figure(last['val_acc'])} | {_figure(last['test_acc'])} | "
            f"{_figure(last['test_loss'])} | {seconds[system]:.3f} | {seconds[system] / seconds[TRAINER]:.2f} | "
            f"{sum(r['epoch_seconds'] for r in mine):.1f} |"
        )
    if parity:
        lines += [
            "",
            "Gradient parity on the first mini-batch, from the trainer's initial weights, float64, against autograd:",
            "",
            "| system | parameter | shape | max abs diff | max rel diff |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {p['system']} | {p['parameter']} | {p['shape']} | {p['max_abs_diff']:.2e} | {p['max_rel_diff']:.2e} |"
            for p in parity
        ]
    return "\n".join(lines) + "\n"
