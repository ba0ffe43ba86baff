"""Inference from a trained checkpoint, without the LightningModule that trained it: the plain `model.MLP` and
the checkpoint's state (`Trained`, `load_trained`). Classifies a user's own image or one of the test set, and
draws what the network does with it. Imports neither Lightning nor torchvision."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlptrain.errors import ConfigError
from mlptrain.losses import make_loss
from mlptrain.mnist import data_dir as mnist_dir
from mlptrain.mnist import read_split, to_inputs
from mlptrain.model import MLP
from mlptrain.rundir import read_checkpoint, unloadable


def probabilities(output: torch.Tensor, output_activation: str) -> torch.Tensor:
    """Outputs as probabilities: softmax of logits; softmax outputs as they are; sigmoid outputs normalised."""
    if output_activation == "none":
        return output.softmax(-1)
    return output / output.sum(-1, keepdim=True).clamp_min(1e-12)


@dataclass
class Trained:
    """A trained network as inference needs it: the plain MLP, its cost, and the hyperparameters its checkpoint
    holds (`model`, `loss`, `optimizer`, ...: MLPSystem's arguments), with the run's config."""

    model: MLP
    loss_fn: Any  # losses.make_loss's: (output, labels) -> the mini-batch's cost
    hparams: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.model.layers[0].weight.device

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        return probabilities(output, self.hparams["model"].get("output_activation", "none"))

    @torch.no_grad()
    def probabilities_of(self, images: torch.Tensor, normalize: str, batch_size: int = 1000) -> torch.Tensor:
        """Images (N, 28, 28) uint8, as on file -> a probability per digit (N, 10), in eval mode. Inputs are
        made by mnist.to_inputs, as in training (`normalize` as the model was trained)."""
        was_training = self.model.training
        self.model.eval()
        dtype = self.model.layers[0].weight.dtype
        inputs = to_inputs(images.to(self.device), normalize)
        probs = torch.cat([self.probabilities(self.model(x.to(dtype))) for x in inputs.split(batch_size)])
        self.model.train(was_training)
        return probs


def load_trained(path: str | Path) -> Trained:
    """A checkpoint written by train.py, on the CPU: read once with rundir.read_checkpoint (no code in the file
    runs); CheckpointError if it is not one, or holds a network this version cannot build."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    try:
        model = MLP(**hparams["model"])
        weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        model.load_state_dict(weights)
        loss_fn = make_loss(**hparams["loss"])
    except Exception as error:  # hyperparameters or weights this version cannot build: all the same to the user
        raise unloadable(path, f"{type(error).__name__}: {error}") from error
    return Trained(model.eval(), loss_fn, dict(hparams), checkpoint.get("config", {}))


# How MNIST's digits were made (LeCun et al.): each digit's bounding box scaled to fit a 20×20 box, keeping
# its aspect ratio, then placed in the 28×28 field with its centre of mass at the centre.
BOX = 20
INK = 0.1  # a pixel belongs to the digit's bounding box where its ink is above this fraction of full


def image_pixels(path: str | Path) -> np.ndarray:
    """A picture of one digit as MNIST shows digits: (28, 28) uint8, light strokes on a dark background,
    prepared by digit_pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path).convert("L")
    except (OSError, UnidentifiedImageError) as error:
        raise ConfigError(f"image={path} could not be read as a picture ({error}).") from error
    return np.floor(digit_pixels(np.asarray(image, dtype=np.float64)) + 0.5).astype(np.uint8)


def digit_pixels(grey: np.ndarray) -> np.ndarray:
    """Any picture of one digit, grey levels (H, W) from 0 to 255 -> (28, 28) float64 from 0 to 255 as MNIST's.

    Inverted when its border is light (dark ink on white paper); the ink's bounding box (pixels above INK)
    cut out and scaled, by the area each new pixel covers, so that its longer side is BOX pixels; then
    shifted by whole pixels to put its centre of mass at pixel (14, 14). The page's JavaScript
    (page.html, `digitPixels`) does the same, operation for operation: rounding is floor(x + 0.5) in both.
    """
    ink = grey / 255.0
    border = np.concatenate([ink[0], ink[-1], ink[:, 0], ink[:, -1]])
    if border.mean() > 0.5:
        ink = 1.0 - ink
    rows, cols = np.flatnonzero((ink > INK).any(1)), np.flatnonzero((ink > INK).any(0))
    field = np.zeros((28, 28))
    if rows.size == 0:
        return field  # nothing drawn
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = crop.shape
    scale = BOX / max(height, width)
    new_height, new_width = max(1, int(np.floor(height * scale + 0.5))), max(1, int(np.floor(width * scale + 0.5)))
    patch = _area_weights(new_height, height) @ crop @ _area_weights(new_width, width).T
    total = patch.sum()
    if total <= 0:
        return field
    # Row and column 14, not 13.5: MNIST's own. With 14, 81% of its first 1,000 test images come back exactly
    # (tests/test_page.py); with 13.5, 19%.
    centre_y = float(patch.sum(1) @ np.arange(new_height)) / total
    centre_x = float(patch.sum(0) @ np.arange(new_width)) / total
    top = min(max(int(np.floor(14.0 - centre_y + 0.5)), 0), 28 - new_height)
    left = min(max(int(np.floor(14.0 - centre_x + 0.5)), 0), 28 - new_width)
    field[top : top + new_height, left : left + new_width] = patch
    return field * 255.0


def _area_weights(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in): how much of each old pixel each new pixel covers, divided by the new pixel's size,
    so that a row of weights sums to 1 (averaging when shrinking, repeating when enlarging)."""
    size = n_in / n_out  # a new pixel's extent, in old pixels
    low = np.arange(n_out)[:, None] * size
    high = low + size
    old = np.arange(n_in)[None, :]
    return np.maximum(0.0, np.minimum(high, old + 1.0) - np.maximum(low, old)) / size


def test_set(data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The MNIST test set as on file: images (10000, 28, 28) uint8 and labels (10000,), from `data_dir` (a run's
    data.dir), or where data.dir=null finds it (mnist.default_dir)."""
    return read_split(mnist_dir(data_dir), train=False)


def test_image(index: int, data_dir: str | None = None) -> tuple[np.ndarray, int]:
    """Pixels and label of test image `index` (0 to 9999)."""
    images, labels = test_set(data_dir)
    return images[index].numpy(), int(labels[index])


def digit_probabilities(trained: Trained, pixels: np.ndarray, normalize: str = "standard") -> np.ndarray:
    """(10,) probability per digit for (28, 28) uint8 pixels, normalised as the model was trained."""
    return trained.probabilities_of(torch.from_numpy(pixels)[None], normalize)[0].float().numpy()


def network_example(trained: Trained, image: np.ndarray, normalize: str, title: str) -> dict[str, Any]:
    """What plots.plot_network draws for one image (28, 28) uint8: its activations, the weights between
    layers and each digit's probability, as the model was trained (its input normalisation)."""
    from mlptrain.anatomy import layer_activations

    pixels = torch.as_tensor(np.asarray(image))
    probs = trained.probabilities_of(pixels[None], normalize)[0]
    x = to_inputs(pixels[None].to(trained.device), normalize)[0]
    activations, weights = layer_activations(trained.model, x)
    answer = int(probs.argmax())
    return {
        "activations": [a.float().cpu().numpy() for a in activations],
        "weights": [w.detach().float().cpu().numpy() for w in weights],
        "probs": probs.float().cpu().numpy(),
        "image": np.asarray(image),
        "title": f"{title}: answered {answer} ({100 * float(probs[answer]):.1f}%)",
    }


def draw_network(trained: Trained, pixels: np.ndarray, normalize: str, name: str, path: Path) -> None:
    """network.png for one image (28, 28) uint8: its activations layer by layer."""
    from mlptrain import plots

    plots.plot_network([network_example(trained, pixels, normalize, name)], path)


def draw_nudges(trained: Trained, pixels: np.ndarray, label: int, normalize: str, path: Path) -> None:
    """nudges.png for one image (28, 28) uint8 of digit `label`: its cost's gradient, by autograd."""
    from mlptrain import plots
    from mlptrain.anatomy import nudges

    x = to_inputs(torch.from_numpy(pixels)[None].to(trained.device), normalize)[0]
    plots.plot_nudges(nudges(trained.model, trained.loss_fn, x, label), pixels, label, path)
