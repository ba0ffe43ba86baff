"""Pictures of runs, drawn with matplotlib's Agg backend (no display needed)."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

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
