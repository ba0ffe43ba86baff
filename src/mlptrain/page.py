"""A trained network taken out of the trainer: the page (draw a digit and watch the network light up) and model.onnx.

The page is one self-contained `index.html` (page.html with the network's weights and a few test images
inside), whose JavaScript computes what the model computes: the same layers, activations, output activation
and input normalisation, mirrored from the model's own modules by MIRRORS.
"""

import base64
import json
import logging
from collections.abc import Callable
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import get_class
from torch import nn

from mlptrain.activations import HIDDEN_ACTIVATIONS, Logistic, Maxout, Step
from mlptrain.errors import ConfigError
from mlptrain.mnist import MEAN, STD
from mlptrain.predict import Trained, load_trained, probabilities, test_set

log = logging.getLogger(__name__)

TOLERANCE = 1e-5  # the largest difference allowed between onnxruntime's probabilities and the model's

# Each hidden activation module the page can compute, by exact class -> its name and parameters in page.html's
# ACTIVATIONS. The registry's modules are all here (a test checks); other torch.nn classes a `_target_` may
# name are here where their maths is a line of JavaScript.
MIRRORS: dict[type, Callable[[Any], dict[str, Any]]] = {
    nn.Identity: lambda m: {"name": "identity"},
    Step: lambda m: {"name": "step"},
    nn.Sigmoid: lambda m: {"name": "logistic", "slope": 1.0},
    Logistic: lambda m: {"name": "logistic", "slope": float(m.slope)},
    nn.Tanh: lambda m: {"name": "tanh"},
    nn.ReLU: lambda m: {"name": "relu"},
    nn.LeakyReLU: lambda m: {"name": "leaky_relu", "slope": float(m.negative_slope)},
    nn.ELU: lambda m: {"name": "elu", "alpha": float(m.alpha)},
    nn.SELU: lambda m: {"name": "selu"},
    nn.Softsign: lambda m: {"name": "softsign"},
    nn.Softplus: lambda m: {"name": "softplus", "beta": float(m.beta), "threshold": float(m.threshold)},
    nn.SiLU: lambda m: {"name": "silu"},
    nn.GELU: lambda m: {"name": "gelu", "approximate": m.approximate},
    nn.Hardtanh: lambda m: {"name": "hardtanh", "min": float(m.min_val), "max": float(m.max_val)},
    nn.ReLU6: lambda m: {"name": "hardtanh", "min": 0.0, "max": 6.0},
    Maxout: lambda m: {"name": "maxout", "pieces": int(m.pieces)},
}
PAGE_TEMPLATE = "page.html"


def mirrored_targets() -> str:
    """The torch.nn classes a `_target_` activation may name and the page still compute, for messages."""
    return ", ".join(sorted(f"torch.nn.{c.__name__}" for c in MIRRORS if c.__module__.startswith("torch")))


def mirrors(target: str) -> bool:
    """Whether the page can compute the activation class a `_target_` names."""
    try:
        return get_class(target) in MIRRORS
    except Exception:  # not importable: the config's own rule on model.activation says so
        return True


def mirror(activation: nn.Module) -> dict[str, Any]:
    """The page's name and parameters for a hidden activation module; ConfigError for one it cannot compute."""
    make = MIRRORS.get(type(activation))
    if make is None:
        raise ConfigError(
            f"The page cannot compute this model's activation, {type(activation).__module__}."
            f"{type(activation).__name__}: its JavaScript mirrors the registry's activations "
            f"({', '.join(HIDDEN_ACTIVATIONS)}) and, for a `_target_`, {mirrored_targets()}. format=onnx exports "
            "any activation torch can trace; or add this one to mlptrain.page.MIRRORS and page.html's ACTIVATIONS."
        )
    return make(activation)


def _array(values: torch.Tensor | np.ndarray, dtype: str) -> str:
    """Little-endian bytes as base64: what page.html's `decode` reads into a typed array."""
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return base64.b64encode(array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()).decode("ascii")


def examples_to_show(labels: np.ndarray, probs: np.ndarray, count: int) -> list[tuple[int, str]]:
    """The first `count` test images, then the model's `count` most confident mistakes: (index, caption)."""
    answers = probs.argmax(1)
    shown = [(i, f"test image #{i}, a {labels[i]}") for i in range(min(count, len(labels)))]
    wrong = np.flatnonzero(answers != labels)
    for i in wrong[np.argsort(-probs[wrong, answers[wrong]], kind="stable")][:count]:
        caption = (
            f"test image #{i}, a {labels[i]}: a confident mistake, taken for {answers[i]} ({probs[i, answers[i]]:.1%})"
        )
        shown.append((int(i), caption))
    return shown


def page_spec(
    trained: Trained,
    config: dict[str, Any],
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    examples: int,
    source: str,
) -> dict[str, Any]:
    """What index.html is given: the network's weights, how it computes, what it is, and test images.

    `images` (N, 28, 28) uint8 and `labels` (N,) are the test set, `probs` (N, 10) the model's probabilities
    on them (for the test accuracy and the mistakes)."""
    model, hparams = trained.model, trained.hparams
    activation = mirror(model.activations[0]) if len(model.activations) else {"name": "identity"}
    dtype = "float64" if model.layers[0].weight.dtype == torch.float64 else "float32"
    normalize = config.get("data", {}).get("normalize", "standard")
    loss = {k: v for k, v in dict(hparams["loss"]).items() if v is not None}
    hidden = [layer.out_features // activation.get("pieces", 1) for layer in model.layers[:-1]]
    described = hparams["model"].get("activation")
    return {
        "dtype": dtype,
        "layers": [
            {
                "rows": layer.out_features,
                "cols": layer.in_features,
                "weight": _array(layer.weight, dtype),
                "bias": _array(layer.bias, dtype),
            }
            for layer in model.layers
        ],
        "activation": activation,
        "output_activation": hparams["model"].get("output_activation", "none"),
        "normalize": {"mean": MEAN, "std": STD} if normalize == "standard" else None,
        "model": {
            "widths": [784, *hidden, 10],
            "activation": described if isinstance(described, str) else str(dict(described)["_target_"]),
            "activation_parameters": {k: v for k, v in activation.items() if k != "name"},
            "loss": loss,
            "normalize": normalize,
            "test_accuracy": float((probs.argmax(1) == labels).mean()),
            "test_images": len(labels),
            "source": source,
        },
        "examples": [
            {"pixels": _array(images[i], "uint8"), "label": int(labels[i]), "caption": caption}
            for i, caption in examples_to_show(labels, probs, examples)
        ],
    }


def write_page(
    trained: Trained,
    config: dict[str, Any],
    folder: Path,
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    examples: int = 6,
    source: str = "",
) -> Path:
    """folder/index.html: the page, with everything it needs inside (it opens from disk, offline)."""
    spec = page_spec(trained, config, images, labels, probs, examples, source)
    template = resources.files("mlptrain").joinpath(PAGE_TEMPLATE).read_text(encoding="utf-8")
    # JSON inside a <script>: "</" would end the script early.
    text = template.replace("/*SPEC*/null", json.dumps(spec, separators=(",", ":")).replace("</", "<\\/"), 1)
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / "index.html"
    page.write_text(text, encoding="utf-8")
    return page


def serve(folder: Path, port: int) -> None:
    """Serve `folder` on http://127.0.0.1:port (0: any free port) until Ctrl-C, for browsers that will not open
    a page's local files."""
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(SimpleHTTPRequestHandler, directory=str(folder)))
    print(f"serving http://127.0.0.1:{server.server_address[1]}/index.html (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


class Classifier(nn.Module):
    """What model.onnx computes: MNIST pixels (N, 28, 28), 0 to 255, -> the network's output (N, 10) and a
    probability per digit (N, 10), normalised as the model was trained."""

    def __init__(self, trained: Trained, normalize: str) -> None:
        super().__init__()
        self.model = trained.model
        self.output_activation = trained.hparams["model"].get("output_activation", "none")
        self.standard = normalize == "standard"

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = pixels.flatten(1) / 255.0
        if self.standard:
            x = (x - MEAN) / STD
        output = self.model(x)
        return output, probabilities(output, self.output_activation)


def write_onnx(trained: Trained, normalize: str, path: Path, images: np.ndarray) -> tuple[float, float]:
    """path: the model as ONNX (float32, any batch size), checked with onnxruntime on `images` (N, 28, 28) uint8.

    Returns the largest difference between onnxruntime's probabilities and the model's, and onnxruntime's
    answers' agreement with the model's. ConfigError where the export extra is not installed."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ConfigError(
            f'format=onnx needs onnx, onnxscript and onnxruntime ({error}): pip install -e ".[export]".'
        ) from None
    classifier = Classifier(trained, normalize).float().eval()
    pixels = torch.from_numpy(images).float()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        classifier,
        (pixels[:2],),
        str(path),
        dynamo=True,
        input_names=["pixels"],
        output_names=["output", "probabilities"],
        dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, probs = session.run(None, {"pixels": pixels.numpy()})
    with torch.no_grad():
        expected = classifier(pixels)[1].numpy()
    return float(np.abs(probs - expected).max()), float((probs.argmax(1) == expected.argmax(1)).mean())


def page_of(ckpt: Path, folder: Path, examples: int = 6) -> Path:
    """folder/index.html: the page of the checkpoint `ckpt`, with its first test images and its most confident
    mistakes (`examples` of each)."""
    trained = load_trained(ckpt)
    data = trained.config.get("data", {})
    test_images, test_labels = test_set(data.get("dir"))
    probs = trained.probabilities_of(test_images, data.get("normalize", "standard")).float().numpy()
    images, labels = test_images.numpy(), test_labels.numpy()
    return write_page(trained, trained.config, folder, images, labels, probs, examples, source=str(ckpt))


def export(args: Any) -> Path | None:
    """What `mlptrain page` (scripts/export.py) is asked for (config.ExportConfig), written and said where; the
    page's folder (None for ONNX)."""
    ckpt = Path(args.ckpt_path)
    run_dir = ckpt.resolve().parent.parent if ckpt.resolve().parent.name == "checkpoints" else ckpt.resolve().parent
    if args.format == "onnx":
        trained = load_trained(ckpt)
        data = trained.config.get("data", {})
        images = test_set(data.get("dir"))[0].numpy()
        path = Path(args.out) if args.out else run_dir / "model.onnx"
        difference, agreement = write_onnx(trained, data.get("normalize", "standard"), path, images)
        if difference > TOLERANCE:
            raise ConfigError(
                f"{path} was written, but onnxruntime's probabilities differ from the model's by up to "
                f"{difference:.2e} on the test set, more than {TOLERANCE:g}: do not use it. Please report this, "
                "with the checkpoint and the versions of torch, onnx and onnxruntime."
            )
        print(f"model.onnx: {path}")
        print(
            f"checked with onnxruntime on the {len(images):,} test images: probabilities within {difference:.1e} "
            f"of the model's, the same answer for {agreement:.2%}"
        )
        return None
    folder = Path(args.out) if args.out else run_dir / "page"
    page = page_of(ckpt, folder, args.examples)
    print(f"page: {page}")
    print(f"open it in a browser: file://{page.resolve()}")
    return folder
