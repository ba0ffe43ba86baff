"""Pictures of runs, drawn with matplotlib's object API (Figure), never pyplot: no display is needed, and no
backend is chosen for the process, so a notebook's own inline plots stay as they were."""

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mlptrain.rundir import write_durably


def subplots(*grid: int, figsize: tuple[float, float], dpi: int = 120, **options: Any) -> tuple[Figure, Any]:
    """pyplot.subplots without pyplot: a Figure of its own, which savefig draws with the backend of the file's
    format (Agg for PNG)."""
    figure = Figure(figsize=figsize, dpi=dpi)
    return figure, figure.subplots(*grid, **options)


def plot_test_accuracy(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Test accuracy per epoch, one line per system (rows as mlptrain.compare writes them to epochs.csv)."""
    figure, axes = subplots(figsize=(7, 4.5), dpi=120)
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
    figure, (loss_axes, acc_axes) = subplots(1, 2, figsize=(10, 4), dpi=120)
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
    return True


def plot_grad_norms(metrics_csv: Path, path: Path) -> bool:
    """Per-layer gradient norms per epoch (logged with log_grad_norms=true); False where none were logged."""
    table = _epoch_table(metrics_csv)
    names = sorted({k for values in table.values() for k in values if k.startswith("grad_norm/")})
    if not names:
        return False
    figure, axes = subplots(figsize=(7, 4.5), dpi=120)
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
    return True


def confusion_matrix(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """(10, 10) counts: row = true digit, column = predicted digit."""
    return np.bincount(labels * 10 + preds, minlength=100).reshape(10, 10)


def plot_confusion(labels: np.ndarray, preds: np.ndarray, path: Path) -> np.ndarray:
    """The test-set confusion matrix with each digit's accuracy; returns the matrix."""
    matrix = confusion_matrix(labels, preds)
    per_class = matrix.diagonal() / matrix.sum(1).clip(min=1)
    figure, axes = subplots(figsize=(7.5, 6.5), dpi=120)
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
    return matrix


def _tiles_figure(
    tiles: np.ndarray, titles: Sequence[str], columns: int, size: tuple[float, float], cmap: str, title: str
) -> Any:
    """One figure of 28×28 tiles (N, 28, 28), each already scaled to the colour map's range [-1, 1], in rows of
    `columns` with a title above each: one image on one Axes (64 Axes of one image each take seconds to lay out)."""
    gap, head = 4, 9  # pixels between tiles, and above each for its title
    rows = max(1, -(-len(tiles) // columns))
    mosaic = np.full((rows * (28 + head), columns * (28 + gap) - gap), np.nan)  # NaN: left white
    figure = Figure(figsize=size, dpi=120)
    axes = figure.add_axes((0.01, 0.01, 0.98, 0.93))
    for index, (tile, text) in enumerate(zip(tiles, titles)):
        top, left = head + (index // columns) * (28 + head), (index % columns) * (28 + gap)
        mosaic[top : top + 28, left : left + 28] = tile
        axes.text(left + 13.5, top - 1.5, text, ha="center", va="bottom", fontsize=7, linespacing=1.0)
    axes.imshow(mosaic, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest", aspect="equal")
    axes.axis("off")
    figure.suptitle(title, fontsize=9, y=0.985)
    return figure


def weights_figure(weights: np.ndarray, tiles: int = 64) -> Any:
    """Each first-layer unit's 784 weights (of `weights` (units, 784)) as a 28×28 tile: what the unit "looks for".
    Each tile has its own scale, ± its largest weight: red positive, blue negative, white 0."""
    count = min(tiles, len(weights))
    columns = min(count, 8)
    rows = -(-count // columns)
    shown = weights[:count].reshape(count, 28, 28)
    bounds = np.abs(shown).max(axis=(1, 2), keepdims=True)
    return _tiles_figure(
        shown / np.where(bounds > 0, bounds, 1.0),
        [f"unit {index}" for index in range(count)],
        columns,
        (1.3 * columns, 1.45 * rows),
        "RdBu_r",
        f"First-layer weights, {count} of {len(weights)} units (red +, blue −)",
    )


def plot_weights(weights: np.ndarray, path: Path, tiles: int = 64) -> int:
    """weights.png: weights_figure. Returns the tiles drawn."""
    figure = weights_figure(weights, tiles)
    figure.savefig(path)
    return min(tiles, len(weights))


def plot_mistakes(images: np.ndarray, labels: np.ndarray, probs: np.ndarray, path: Path, count: int = 25) -> list[int]:
    """The test images the model got wrong with the highest confidence; returns their indices."""
    preds = probs.argmax(1)
    wrong = np.flatnonzero(preds != labels)
    worst = wrong[np.argsort(-probs[wrong, preds[wrong]], kind="stable")][:count].tolist()
    columns = 5
    rows = max(1, -(-len(worst) // columns))
    shown = images[worst].astype(np.float64).reshape(len(worst), 28, 28)
    low, high = shown.min(axis=(1, 2), keepdims=True), shown.max(axis=(1, 2), keepdims=True)
    figure = _tiles_figure(
        2 * (shown - low) / np.where(high > low, high - low, 1.0) - 1,  # each image from its darkest to its lightest
        [f"#{i}: {labels[i]} → {preds[i]}\n({100 * probs[i, preds[i]]:.0f}%)" for i in worst],
        columns,
        (1.7 * columns, 1.95 * rows),
        "gray_r",
        f"Most confident mistakes ({len(wrong)} wrong in all): true → predicted",
    )
    figure.savefig(path)
    return worst


def plot_activations(path: Path, logistic_slope: float = 4.0, leaky_relu_slope: float = 0.1) -> list[str]:
    """Every elementwise activation of the registry and the derivative autograd uses for it, one panel each."""
    import torch  # only this picture needs it

    from mlptrain.activations import HIDDEN_ACTIVATIONS, make_activation

    names = list(HIDDEN_ACTIVATIONS)
    columns = 4
    rows = -(-len(names) // columns)
    figure, grid = subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), dpi=120, squeeze=False)
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
    return names


def plot_val_acc_per_job(metrics_files: Sequence[Path], labels: Sequence[str], path: Path) -> None:
    """Validation accuracy per epoch, one line per job of a sweep."""
    figure, axes = subplots(figsize=(8, 5), dpi=120)
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
    # Replaced whole (rundir.write_durably): several workers of one Optuna search may end, and draw it, at once.
    write_durably(path, lambda file: figure.savefig(file, format="png"))


def _brightness(values: np.ndarray) -> np.ndarray:
    """Activations as grey levels in [0, 1]: 0 is black for non-negative layers; with negative values
    (tanh, softsign) 0 is mid-grey, so −1 is as dark as +1 is bright."""
    top = float(np.abs(values).max()) or 1.0
    return values / top if values.min() >= 0 else 0.5 + 0.5 * values / top


def plot_network(examples: Sequence[dict[str, Any]], path: Path, units: int = 16, edge_units: int = 3) -> None:
    """The network lighting up, one row per example: the image as the input layer, each hidden layer's
    neurons with brightness = activation, the output neurons with each digit's probability.

    Each example is a dict of `activations` and `weights` (anatomy.layer_activations), `probs` (10,),
    `image` (28, 28) and `title`. Layers wider than `units` show their `units` most active neurons. Into
    the `edge_units` most active neurons of each layer, the 8 inputs with the largest |weight × activation|
    are drawn as edges, red where they push the neuron up, blue where they push it down.
    """
    from mlptrain.anatomy import strongest

    figure, rows = subplots(len(examples), 1, figsize=(11, 4.6 * len(examples)), dpi=120, squeeze=False)
    for axes, example in zip(rows[:, 0], examples):
        activations = [np.asarray(a, dtype=np.float64) for a in example["activations"]]
        weights = [np.asarray(w, dtype=np.float64) for w in example["weights"]]
        probs = np.asarray(example["probs"], dtype=np.float64)
        axes.set_facecolor("#101018")
        # Where each layer's drawn neurons are: the input's are its pixels, inside the image.
        pixel = np.arange(784)
        positions = [np.stack([-0.4 + (pixel % 28 + 0.5) / 28 * 0.8, 0.9 - (pixel // 28 + 0.5) / 28 * 0.8], 1)]
        shown = [pixel]
        for column, a in enumerate(activations[1:], start=1):
            keep = np.arange(len(a)) if column == len(activations) - 1 else strongest(a, units)
            ys = np.linspace(0.95, 0.05, len(keep)) if len(keep) > 1 else np.array([0.5])
            shown.append(keep)
            positions.append(np.stack([np.full(len(keep), float(column)), ys], 1))
        axes.imshow(example["image"], cmap="gray", extent=(-0.4, 0.4, 0.1, 0.9), vmin=0, vmax=255, zorder=1)
        # Edges into the most active neurons of each layer, from the drawn neurons of the layer before.
        for layer, weight in enumerate(weights):
            into = activations[layer + 1] if layer + 1 < len(activations) - 1 else probs
            contribution = weight * activations[layer][None, :]  # (n_out, n_in): what each input gave each unit
            drawn = {int(u): i for i, u in enumerate(shown[layer + 1])}
            targets = [int(u) for u in np.argsort(-np.abs(into), kind="stable") if int(u) in drawn][:edge_units]
            sources = shown[layer]
            scale = np.abs(contribution[np.ix_(targets, sources)]).max() or 1.0
            for target in targets:
                values = contribution[target, sources]
                for s in np.argsort(-np.abs(values), kind="stable")[:8]:
                    start, end = positions[layer][s], positions[layer + 1][drawn[target]]
                    strength = abs(values[s]) / scale
                    axes.plot(
                        [start[0], end[0]],
                        [start[1], end[1]],
                        color="#ff5a4e" if values[s] > 0 else "#4ea3ff",
                        alpha=0.25 + 0.75 * strength,
                        linewidth=0.4 + 2.2 * strength,
                        zorder=2,
                    )
        # The neurons, brightness = activation; the output's brightness is each digit's probability.
        last = len(activations) - 1
        for column in range(1, last + 1):
            values = probs if column == last else activations[column][shown[column]]
            grey = np.clip(values, 0, 1) if column == last else _brightness(values)
            xy = positions[column]
            axes.scatter(xy[:, 0], xy[:, 1], s=150, c=np.repeat(grey[:, None], 3, 1), edgecolors="#8a8a9a", zorder=3)
            width = len(activations[column])
            if column == last:
                label = "output: P(digit)"
                answer = int(probs.argmax())
                for digit, (x, y) in enumerate(xy):
                    weight = "bold" if digit == answer else "normal"
                    text = f"{digit}  {100 * probs[digit]:5.1f}%"
                    axes.text(x + 0.09, y, text, color="white", va="center", fontsize=8, fontweight=weight)
                axes.scatter(*xy[answer], s=330, facecolors="none", edgecolors="#ffd54a", linewidths=2, zorder=4)
            elif len(shown[column]) < width:
                label = f"hidden {column}: the {len(shown[column])}\nmost active of {width}"
            else:
                label = f"hidden {column}: {width} neurons"
            lo, hi = float(activations[column].min()), float(activations[column].max())
            if column < last:
                label += f"\na from {lo:.2f} to {hi:.2f}"
            axes.text(column, 1.02, label, color="black", ha="center", va="bottom", fontsize=8)
        axes.text(0, 1.02, "input: 784 pixels", color="black", ha="center", va="bottom", fontsize=8)
        axes.set_xlim(-0.55, last + 0.55)
        axes.set_ylim(0.0, 1.0)
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_title(example["title"], fontsize=10, pad=40)
    figure.suptitle(
        "Activations layer by layer: bright = active (mid-grey = 0 where activations can be negative).\n"
        "Edges: into the most active neurons, the 8 largest weight × activation, red pushing up, blue down",
        fontsize=8.5,
    )
    figure.tight_layout()
    figure.savefig(path)


def plot_nudges(nudges: Any, image: np.ndarray, label: int, path: Path, tiles: int = 16) -> list[int]:
    """Backpropagation for one example (an anatomy.Nudges): what the cost wants of each output, of the first
    layer's weights (one 28×28 tile per hidden unit, the `tiles` with the largest changes) and of every
    bias. Returns the units whose tiles are drawn."""
    output = nudges.output.double().cpu().numpy()
    wanted = nudges.output_change.double().cpu().numpy()
    first = nudges.weight_changes[0].double().cpu().numpy()
    biases = [b.double().cpu().numpy() for b in nudges.bias_changes]
    units = np.sort(np.argsort(-np.linalg.norm(first, axis=1), kind="stable")[:tiles]).tolist()

    figure = Figure(figsize=(12, 8.5), dpi=120)
    top, bottom = figure.subfigures(2, 1, height_ratios=[1, 1.1])
    panels = top.subplots(1, 3, width_ratios=[0.7, 1.4, 1.6])
    panels[0].imshow(image, cmap="gray_r")
    panels[0].set_title(f"the example: a {label}\ncost {nudges.loss:.4f}", fontsize=9)
    panels[0].axis("off")
    digits = np.arange(10)
    panels[1].bar(digits - 0.2, output, width=0.4, color="#9a9a9a", label="output now")
    colours = ["#d62728" if w > 0 else "#1f77b4" for w in wanted]
    panels[1].bar(digits + 0.2, wanted, width=0.4, color=colours, label="desired change −∂C/∂output")
    panels[1].axhline(0, color="black", linewidth=0.6)
    panels[1].set_xticks(digits)
    panels[1].set_xlabel("output neuron (digit)")
    panels[1].set_title(f"Output layer: up for the {label}, down for the others", fontsize=9)
    panels[1].legend(fontsize=7)
    for layer, change in enumerate(biases):
        offset = layer * 1.0
        xs = np.linspace(0, 0.9, len(change)) + offset
        panels[2].bar(
            xs, change, width=0.9 / max(len(change), 1), color=["#d62728" if c > 0 else "#1f77b4" for c in change]
        )
    names = [f"hidden {i + 1}" for i in range(len(biases) - 1)] + ["output"]
    panels[2].set_xticks([i + 0.45 for i in range(len(biases))], names, fontsize=8)
    panels[2].axhline(0, color="black", linewidth=0.6)
    panels[2].set_title("Bias changes −∂C/∂b, layer by layer (red up, blue down)", fontsize=9)

    columns = min(len(units), 8)
    rows = -(-len(units) // columns)
    grid = bottom.subplots(rows, columns, squeeze=False)
    bound = np.abs(first[units]).max() or 1.0
    for axes in grid.flat:
        axes.axis("off")
    for axes, unit in zip(grid.flat, units):
        axes.imshow(first[unit].reshape(28, 28), cmap="RdBu_r", vmin=-bound, vmax=bound)
        axes.set_title(f"unit {unit}: Δb {biases[0][unit] + 0.0:+.2g}", fontsize=7)  # + 0.0: no "-0"
    bottom.suptitle(
        f"First-layer weight changes −∂C/∂W, the {len(units)} units of {len(first)} with the largest (one colour "
        "scale): each tile is the image times the unit's error, so weights from bright pixels get the big nudges",
        fontsize=9,
    )
    figure.savefig(path)
    return units


def plot_landscape(
    surface: np.ndarray,
    alphas: Sequence[float],
    betas: Sequence[float],
    path_xy: np.ndarray,
    how: str,
    explained: tuple[float, float] | None,
    examples: int,
    path: Path,
) -> None:
    """The training loss over a plane through the weights (len(betas), len(alphas)) as contours, and the
    path the weights took (T, 2) projected onto it, from its start (circle) to its end (star)."""
    figure, axes = subplots(figsize=(7.5, 6), dpi=120)
    low, high = float(surface.min()), float(surface.max())
    levels = np.geomspace(max(low, 1e-6), high, 25) if high > 10 * max(low, 1e-6) else np.linspace(low, high, 25)
    filled = axes.contourf(
        alphas,
        betas,
        surface,
        levels=levels,
        cmap="viridis",
        extend="both",
        norm=LogNorm() if levels[0] * 10 < levels[-1] else None,
    )
    axes.contour(alphas, betas, surface, levels=levels[::3], colors="white", linewidths=0.4, alpha=0.6)
    figure.colorbar(
        filled, ax=axes, ticks=levels[::4], format="%.3g", label=f"training loss on {examples:,} fixed training images"
    )
    axes.plot(
        path_xy[:, 0],
        path_xy[:, 1],
        color="#ff7043",
        marker=".",
        markersize=3,
        linewidth=1.2,
        label="path of the weights",
    )
    axes.scatter(*path_xy[0], s=90, marker="o", color="white", edgecolors="black", zorder=3, label="start")
    axes.scatter(*path_xy[-1], s=220, marker="*", color="#ffd54a", edgecolors="black", zorder=3, label="end")
    if explained is not None:
        axes.set_xlabel(f"direction 1 ({100 * explained[0]:.1f}% of the path's variance)")
        axes.set_ylabel(f"direction 2 ({100 * explained[1]:.1f}%)")
    else:
        axes.set_xlabel("direction 1")
        axes.set_ylabel("direction 2")
    axes.set_title(f"The cost surface around the final weights\nDirections: {how}", fontsize=9)
    axes.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    figure.savefig(path)
