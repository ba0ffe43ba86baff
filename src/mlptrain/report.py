"""report.md: a finished run's figures and pictures on one page (mlptrain.plots draws the pictures)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mlptrain.anatomy import grid_around, loss_surface, pca_directions, random_directions
from mlptrain.predict import Trained, network_example

if TYPE_CHECKING:  # a training run's: report.md is written as training ends
    from mlptrain.data import MNISTDataModule

log = logging.getLogger(__name__)

PICTURES = (
    ("curves.png", "Loss and accuracy per epoch"),
    ("grad_norms.png", "Gradient norm per layer"),
    ("confusion.png", "Confusion matrix of the test set"),
    ("weights.png", "What the first hidden layer's units look for"),
    ("mistakes.png", "The most confident mistakes"),
    ("network.png", "The network lighting up: activations layer by layer"),
    ("landscape.png", "The path down the cost surface"),
)
LANDSCAPE_EXAMPLES = 1000  # the first training images of the split: the cost landscape.png draws


def write_run_report(
    run_dir: Path,
    summary: dict[str, Any],
    config: dict[str, Any],
    trained: Trained,
    data: MNISTDataModule,
    settings: Mapping[str, Any],
    trajectory: torch.Tensor | None = None,
) -> list[str]:
    """Every picture of a finished run, and report.md, a page showing them; returns the files written.

    The test set's probabilities come from `trained` (predict.Trained: the plain MLP with the tested weights, and
    its cost; no LightningModule), computed on this process alone: under DDP each rank's metrics saw a shard.
    `config` is the run's, with the model's own hyperparameters (from the checkpoint, in test-only mode).
    `settings`: the config's report group.
    `trajectory`: the weights along training (T, P) (callbacks.WeightTrajectory), for landscape.png.
    """
    from mlptrain import plots  # matplotlib is imported only when pictures are drawn

    images, labels = data.test_pixels()
    probs = trained.probabilities_of(images, data.normalize, data.eval_batch_size).float().cpu().numpy()
    labels, images = labels.numpy(), images.numpy()
    written = []
    if plots.plot_curves(run_dir / "metrics.csv", run_dir / "curves.png"):
        written.append("curves.png")
    if plots.plot_grad_norms(run_dir / "metrics.csv", run_dir / "grad_norms.png"):
        written.append("grad_norms.png")
    matrix = plots.plot_confusion(labels, probs.argmax(1), run_dir / "confusion.png")
    np.savetxt(run_dir / "confusion.csv", matrix, fmt="%d", delimiter=",")
    plots.plot_weights(
        trained.model.layers[0].weight.detach().float().cpu().numpy(), run_dir / "weights.png", settings["weight_tiles"]
    )
    plots.plot_mistakes(images, labels, probs, run_dir / "mistakes.png", settings["mistakes"])
    written += ["confusion.png", "confusion.csv", "weights.png", "mistakes.png"]
    if settings["network_images"]:
        examples = [
            network_example(trained, images[i], data.normalize, f"test image #{i}, a {labels[i]}")
            for i in range(settings["network_images"])
        ]
        plots.plot_network(examples, run_dir / "network.png")
        written.append("network.png")
    if settings["landscape"]:
        if trajectory is None or len(trajectory) < 3:
            log.info("landscape.png not drawn: fewer than 3 points of the weights' path were kept")
        else:
            draw_landscape(trained, data, trajectory, settings["landscape"], run_dir / "landscape.png")
            written.append("landscape.png")
    if settings["page"]:
        from mlptrain.page import write_page

        write_page(trained, config, run_dir / "page", images, labels, probs, source=f"run {run_dir}")
        written.append("page/index.html")
    written.append("report.md")
    _write_page(run_dir, summary, config, written)
    return written


def draw_landscape(trained: Trained, data: MNISTDataModule, trajectory: torch.Tensor, how: str, file: Path) -> None:
    """landscape.png: the training loss on the first LANDSCAPE_EXAMPLES training images over a plane through
    the path's last point, `how` = pca (the path's principal directions) or random, with the path on it."""
    from mlptrain import plots

    x, y = data.arrays("train")
    weight = trained.model.layers[0].weight
    x = torch.from_numpy(x[:LANDSCAPE_EXAMPLES]).to(weight.device, weight.dtype)
    y = torch.from_numpy(y[:LANDSCAPE_EXAMPLES]).to(weight.device)
    points = trajectory.to(weight.dtype)
    plane = pca_directions(points) if how == "pca" else random_directions(trained.model, points[-1])
    coordinates = plane.coordinates(points)
    alphas, betas = grid_around(coordinates, at_least=0.0 if how == "pca" else 1.0)
    surface = loss_surface(trained.model, trained.loss_fn, x, y, plane, alphas, betas)
    plots.plot_landscape(
        surface.numpy(), alphas, betas, coordinates.cpu().numpy(), plane.how, plane.explained, len(y), file
    )


def _write_page(run_dir: Path, summary: dict[str, Any], config: dict[str, Any], written: list[str]) -> None:
    model, data = config["model"], config["data"]
    figures = [
        ("test accuracy", f"{100 * summary['test_acc']:.2f}%"),
        ("test loss", f"{summary['test_loss']:.4f}"),
        (
            "best validation accuracy",
            "" if summary.get("best_val_acc") is None else f"{100 * summary['best_val_acc']:.2f}%",
        ),
        ("epochs / steps", f"{summary['epochs']} / {summary['global_steps']}"),
        ("wall time", f"{summary['wall_time_s']:.1f} s on {summary['device']}"),
        ("parameters", f"{summary['parameters']:,}"),
        ("seed", str(summary["seed"])),
    ]
    setup = [
        ("network", f"784-{'-'.join(map(str, model['hidden'] + [10]))}"),
        ("activation / output", f"{model['activation']} / {model['output_activation']}"),
        ("init, dropout", f"{model['init']}, {model['dropout']}"),
        ("loss", ", ".join(f"{k} {v}" for k, v in config["loss"].items() if v is not None)),
        ("optimizer", ", ".join(f"{k} {v}" for k, v in config["optimizer"].items() if k != "_partial_")),
        ("scheduler", ", ".join(f"{k} {v}" for k, v in config["scheduler"].items())),
        ("data", f"batch {data['batch_size']}, {data['normalize']} inputs, {data['val_size']} validation images"),
    ]
    lines = [f"# Run {run_dir.name}", "", "| result | |", "|---|---|", *[f"| {k} | {v} |" for k, v in figures]]
    lines += ["", "| setup | |", "|---|---|", *[f"| {k} | {v} |" for k, v in setup]]
    lines += ["", "The full resolved config is in `config.yaml`; versions in `summary.json`.", ""]
    if "page/index.html" in written:
        lines += [
            "## Draw a digit",
            "",
            "[page/index.html](page/index.html): draw a digit and watch this network light up and decide "
            "(opens in any browser, offline).",
            "",
        ]
    for file, title in PICTURES:
        if file in written:
            lines += [f"## {title}", "", f"![{title}]({file})", ""]
    (run_dir / "report.md").write_text("\n".join(lines))
