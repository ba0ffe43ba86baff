"""report.md: a finished run's figures and pictures on one page (mlptrain.plots draws the pictures)."""

from pathlib import Path
from typing import Any

import numpy as np

from mlptrain.data import MNISTDataModule
from mlptrain.system import MLPSystem

PICTURES = (
    ("curves.png", "Loss and accuracy per epoch"),
    ("grad_norms.png", "Gradient norm per layer"),
    ("confusion.png", "Confusion matrix of the test set"),
    ("weights.png", "What the first hidden layer's units look for"),
    ("mistakes.png", "The most confident mistakes"),
)


def write_run_report(
    run_dir: Path,
    summary: dict[str, Any],
    config: dict[str, Any],
    system: MLPSystem,
    data: MNISTDataModule,
    weight_tiles: int = 64,
    mistakes: int = 25,
) -> list[str]:
    """Every picture of a finished run, and report.md, a page showing them; returns the files written.

    The test set's probabilities come from `system` with the weights it holds (the tested ones), computed on
    this process alone: under DDP each rank's metrics saw a shard. `config` is the run's, with the model's own
    hyperparameters (from the checkpoint, in test-only mode).
    """
    from mlptrain import plots  # matplotlib is imported only when pictures are drawn

    images, labels = data.test_pixels()
    probs = system.probabilities_of(images, data.normalize, data.eval_batch_size).float().cpu().numpy()
    labels, images = labels.numpy(), images.numpy()
    written = []
    if plots.plot_curves(run_dir / "metrics.csv", run_dir / "curves.png"):
        written.append("curves.png")
    if plots.plot_grad_norms(run_dir / "metrics.csv", run_dir / "grad_norms.png"):
        written.append("grad_norms.png")
    matrix = plots.plot_confusion(labels, probs.argmax(1), run_dir / "confusion.png")
    np.savetxt(run_dir / "confusion.csv", matrix, fmt="%d", delimiter=",")
    plots.plot_weights(
        system.model.layers[0].weight.detach().float().cpu().numpy(), run_dir / "weights.png", weight_tiles
    )
    plots.plot_mistakes(images, labels, probs, run_dir / "mistakes.png", mistakes)
    written += ["confusion.png", "confusion.csv", "weights.png", "mistakes.png", "report.md"]
    _write_page(run_dir, summary, config, written)
    return written


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
    for file, title in PICTURES:
        if file in written:
            lines += [f"## {title}", "", f"![{title}]({file})", ""]
    (run_dir / "report.md").write_text("\n".join(lines))
