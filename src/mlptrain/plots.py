"""Pictures of runs, drawn with matplotlib's Agg backend (no display needed)."""

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use(): the backend is chosen before pyplot loads
from matplotlib.ticker import MaxNLocator


def plot_test_accuracy(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Test accuracy per epoch, one line per system (rows as mlptrain.compare writes them to epochs.csv)."""
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    styles = ["-", "--", ":", "-."]
    for i, system in enumerate(dict.fromkeys(row["system"] for row in rows)):
        mine = [row for row in rows if row["system"] == system]
        # Systems that agree draw on top of each other: later ones thinner and dashed, so all stay visible.
        axes.plot(
            [r["epoch"] + 1 for r in mine],
            [100 * r["test_acc"] for r in mine],
            linestyle=styles[i % len(styles)],
            linewidth=max(3.0 - 0.6 * i, 1.0),
            marker="o",
            markersize=max(6 - i, 2),
            label=system,
        )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("Test accuracy per epoch")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _epoch_table(metrics_csv: Path) -> dict[int, dict[str, float]]:
    """metrics.csv has one row per logging call; fold them into one row per epoch."""
    table: dict[int, dict[str, float]] = {}
    with metrics_csv.open() as file:
        for row in csv.DictReader(file):
            if row.get("epoch"):
                values = {k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")}
                table.setdefault(int(row["epoch"]), {}).update(values)
    return table


def plot_curves(metrics_csv: Path, path: Path) -> bool:
    """Training and validation loss and accuracy per epoch; False (nothing drawn) where no epoch was trained."""
    table = _epoch_table(metrics_csv)
    epochs = sorted(e for e, values in table.items() if "train/loss" in values)
    if not epochs:
        return False
    figure, (loss_axes, acc_axes) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for split, style in (("train", "-"), ("val", "--")):
        mine = [e for e in epochs if f"{split}/loss" in table[e]]
        xs = [e + 1 for e in mine]
        loss_axes.plot(xs, [table[e][f"{split}/loss"] for e in mine], style, marker="o", ms=3, label=split)
        acc_axes.plot(xs, [100 * table[e][f"{split}/acc"] for e in mine], style, marker="o", ms=3, label=split)
    for axes, name in ((loss_axes, "loss"), (acc_axes, "accuracy (%)")):
        axes.set_xlabel("epoch")
        axes.set_ylabel(name)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    loss_axes.set_title("Loss per epoch")
    acc_axes.set_title("Accuracy per epoch")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def plot_grad_norms(metrics_csv: Path, path: Path) -> bool:
    """Per-layer gradient norms per epoch (logged with log_grad_norms=true); False where none were logged."""
    table = _epoch_table(metrics_csv)
    names = sorted({k for values in table.values() for k in values if k.startswith("grad_norm/")})
    if not names:
        return False
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    epochs = sorted(table)
    for name in names:
        xs = [e for e in epochs if name in table[e]]
        axes.plot([e + 1 for e in xs], [table[e][name] for e in xs], marker="o", ms=3, label=name.split("/", 1)[1])
    axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("mean gradient norm over the epoch's steps")
    axes.set_title("Gradient norm per layer (layer 0 is nearest the input)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def confusion_matrix(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """(10, 10) counts: row = true digit, column = predicted digit."""
    return np.bincount(labels * 10 + preds, minlength=100).reshape(10, 10)


def plot_confusion(labels: np.ndarray, preds: np.ndarray, path: Path) -> np.ndarray:
    """The test-set confusion matrix with each digit's accuracy; returns the matrix."""
    matrix = confusion_matrix(labels, preds)
    per_class = matrix.diagonal() / matrix.sum(1).clip(min=1)
    figure, axes = plt.subplots(figsize=(7.5, 6.5), dpi=120)
    image = axes.imshow(np.log1p(matrix), cmap="Blues")
    for i in range(10):
        for j in range(10):
            if matrix[i, j]:
                color = "white" if matrix[i, j] > matrix.max() / 3 else "black"
                axes.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8, color=color)
    axes.set_xticks(range(10))
    axes.set_yticks(range(10), [f"{d}  ({100 * a:.1f}%)" for d, a in enumerate(per_class)])
    axes.set_xlabel("predicted digit")
    axes.set_ylabel("true digit  (its accuracy)")
    total = matrix.trace() / matrix.sum()
    axes.set_title(f"Test set: {matrix.sum()} images, {100 * total:.2f}% correct")
    figure.colorbar(image, ax=axes, label="log(1 + count)", shrink=0.8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return matrix


def plot_weights(weights: np.ndarray, path: Path, tiles: int = 64) -> int:
    """Each first-layer unit's 784 weights as a 28×28 tile: what the unit "looks for". Returns tiles drawn."""
    count = min(tiles, len(weights))
    columns = min(count, 8)
    rows = -(-count // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.45 * rows), dpi=120, squeeze=False)
    for index, axes in enumerate(grid.flat):
        axes.axis("off")
        if index < count:
            tile = weights[index].reshape(28, 28)
            bound = np.abs(tile).max() or 1.0
            axes.imshow(tile, cmap="RdBu_r", vmin=-bound, vmax=bound)  # red positive, blue negative, white 0
            axes.set_title(f"unit {index}", fontsize=7)
    figure.suptitle(f"First-layer weights, {count} of {len(weights)} units (red +, blue −)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return count


def plot_mistakes(images: np.ndarray, labels: np.ndarray, probs: np.ndarray, path: Path, count: int = 25) -> list[int]:
    """The test images the model got wrong with the highest confidence; returns their indices."""
    preds = probs.argmax(1)
    wrong = np.flatnonzero(preds != labels)
    worst = wrong[np.argsort(-probs[wrong, preds[wrong]], kind="stable")][:count].tolist()
    columns = 5
    rows = max(1, -(-len(worst) // columns))
    figure, grid = plt.subplots(rows, columns, figsize=(1.7 * columns, 1.95 * rows), dpi=120, squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for axes, index in zip(grid.flat, worst):
        axes.imshow(images[index], cmap="gray_r")
        axes.set_title(
            f"#{index}: {labels[index]} → {preds[index]}\n({100 * probs[index, preds[index]]:.0f}%)", fontsize=8
        )
    figure.suptitle(f"Most confident mistakes ({len(wrong)} wrong in all): true → predicted", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return worst


def plot_activations(path: Path, logistic_slope: float = 4.0, leaky_relu_slope: float = 0.1) -> list[str]:
    """Every elementwise activation of the registry and the derivative autograd uses for it, one panel each."""
    import torch  # only this picture needs it

    from mlptrain.activations import HIDDEN_ACTIVATIONS, make_activation

    names = list(HIDDEN_ACTIVATIONS)
    columns = 4
    rows = -(-len(names) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), dpi=120, squeeze=False)
    x = torch.linspace(-4, 4, 801, dtype=torch.float64, requires_grad=True)
    for axes, name in zip(grid.flat, names):
        activation = make_activation(name, logistic_slope=logistic_slope, leaky_relu_slope=leaky_relu_slope)
        if name == "maxout":  # a max over k learned pieces, not a function of one number: draw pieces x and -x/2
            y = activation(torch.stack([x, -0.5 * x], -1).flatten())
        else:
            y = activation(x)
        (slope,) = torch.autograd.grad(y.sum(), x)
        xs = x.detach().numpy()
        axes.plot(xs, y.detach().numpy(), label="σ(x)")
        axes.plot(xs, slope.numpy(), "--", label="σ'(x) as trained")
        title = {
            "logistic": f"logistic, a = {logistic_slope}",
            "leaky_relu": f"leaky_relu, slope {leaky_relu_slope}",
            "maxout": "maxout of pieces x and −x/2",
        }
        note = "  (straight-through)" if name == "step" else ""
        axes.set_title(title.get(name, name) + note, fontsize=9)
        axes.axhline(0, color="grey", linewidth=0.5)
        axes.axvline(0, color="grey", linewidth=0.5)
        axes.set_ylim(-1.6, 4.1)
        axes.grid(alpha=0.3)
    for axes in list(grid.flat)[len(names) :]:
        axes.axis("off")
    grid.flat[0].legend(fontsize=8, loc="upper left")
    figure.suptitle("Hidden-layer activations (solid) and the derivative backpropagation uses (dashed)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return names


def plot_val_acc_per_job(metrics_files: Sequence[Path], labels: Sequence[str], path: Path) -> None:
    """Validation accuracy per epoch, one line per job of a sweep."""
    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    for metrics_csv, label in zip(metrics_files, labels):
        table = _epoch_table(metrics_csv) if metrics_csv.is_file() else {}
        epochs = [e for e in sorted(table) if "val/acc" in table[e]]
        axes.plot([e + 1 for e in epochs], [100 * table[e]["val/acc"] for e in epochs], marker="o", ms=3, label=label)
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy (%)")
    axes.set_title("Validation accuracy per epoch, per job")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
