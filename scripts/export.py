"""Take a trained network out of the trainer: a page to draw digits on and watch it decide, or an ONNX file.

    python scripts/export.py ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt
    python scripts/export.py ckpt_path=.../best.ckpt serve=true          # and serve it on http://127.0.0.1:8000
    python scripts/export.py ckpt_path=.../best.ckpt format=onnx         # pip install -e ".[export]"

format=page writes <run dir>/page/index.html (or out=FOLDER): one self-contained file that opens from disk with no
network or server. serve=true also serves that folder on localhost (port=8000, 0 for any free port) until Ctrl-C,
for browsers that refuse local files. format=onnx writes <run dir>/model.onnx (or out=FILE): MNIST pixels
(N, 28, 28) from 0 to 255 -> the network's output and a probability per digit, checked with onnxruntime against
the model on the 10,000 test images.
"""

from pathlib import Path

from mlptrain.cli import exit_without_collecting
from mlptrain.config import EXPORT_RULES, ExportConfig, parse_arguments
from mlptrain.errors import ConfigError, run_script
from mlptrain.page import serve, write_onnx, write_page
from mlptrain.predict import load_trained, test_set

TOLERANCE = 1e-5  # the largest difference allowed between onnxruntime's probabilities and the model's


def run(arguments: list[str]) -> None:
    args = parse_arguments(arguments, ExportConfig, EXPORT_RULES)
    try:
        folder = export(args)
    except OSError as error:  # the checkpoint and the data say so themselves, as MlptrainErrors: this is the output
        what = "ONNX file" if args.format == "onnx" else "page"
        raise ConfigError(
            f"The {what} could not be written: {error.strerror} ({error.filename or args.out}). Nothing else was "
            "changed. Give out= a place you can write to, or leave out= out to write into the checkpoint's run "
            "directory."
        ) from error
    if args.serve and folder is not None:
        serve(folder, args.port)


def export(args: ExportConfig) -> Path | None:
    """Write what `args` asks for and say where; the page's folder (None for ONNX)."""
    ckpt = Path(args.ckpt_path)
    trained = load_trained(ckpt)
    config = trained.config
    run_dir = ckpt.resolve().parent.parent if ckpt.resolve().parent.name == "checkpoints" else ckpt.resolve().parent
    data = config.get("data", {})
    test_images, test_labels = test_set(data.get("dir"))
    images, labels = test_images.numpy(), test_labels.numpy()
    normalize = data.get("normalize", "standard")
    if args.format == "onnx":
        path = Path(args.out) if args.out else run_dir / "model.onnx"
        difference, agreement = write_onnx(trained, normalize, path, images)
        if difference > TOLERANCE:
            raise ConfigError(
                f"{path} was written, but onnxruntime's probabilities differ from the model's by up to "
                f"{difference:.2e} on the test set, more than {TOLERANCE:g}: do not use it. Please report this, "
                "with the checkpoint and the versions of torch, onnx and onnxruntime."
            )
        print(f"model.onnx: {path}")
        print(
            f"checked with onnxruntime on the {len(labels):,} test images: probabilities within {difference:.1e} "
            f"of the model's, the same answer for {agreement:.2%}"
        )
        return None
    probs = trained.probabilities_of(test_images, normalize).float().numpy()
    folder = Path(args.out) if args.out else run_dir / "page"
    page = write_page(trained, config, folder, images, labels, probs, args.examples, source=str(ckpt))
    print(f"page: {page}")
    print(f"open it in a browser: file://{page.resolve()}")
    return folder


if __name__ == "__main__":
    exit_without_collecting()
    run_script(run)
