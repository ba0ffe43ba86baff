"""Classify a digit with a trained checkpoint: a user's own image, or one of the test set."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import datasets

from mlptrain.anatomy import nudges
from mlptrain.data import EMBEDDED_DIR, to_inputs
from mlptrain.errors import ConfigError
from mlptrain.report import network_example
from mlptrain.system import MLPSystem

# How MNIST's digits were made (LeCun et al.): each digit's bounding box scaled to fit a 20×20 box, keeping
# its aspect ratio, then placed in the 28×28 field with its centre of mass at the centre.
BOX = 20
INK = 0.1  # a pixel belongs to the digit's bounding box where its ink is above this fraction of full


def image_pixels(path: str | Path) -> np.ndarray:
    """A picture of one digit as MNIST shows digits: (28, 28) uint8, light strokes on a dark background,
    prepared by digit_pixels."""
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
    data.dir) or the embedded copy."""
    test = datasets.MNIST(Path(data_dir) if data_dir else EMBEDDED_DIR, train=False)
    return test.data, test.targets


def test_image(index: int, data_dir: str | None = None) -> tuple[np.ndarray, int]:
    """Pixels and label of test image `index` (0 to 9999)."""
    images, labels = test_set(data_dir)
    return images[index].numpy(), int(labels[index])


def probabilities(system: MLPSystem, pixels: np.ndarray, normalize: str = "standard") -> np.ndarray:
    """(10,) probability per digit for (28, 28) uint8 pixels, normalised as the model was trained."""
    return system.probabilities_of(torch.from_numpy(pixels)[None], normalize)[0].float().numpy()


def draw_network(system: MLPSystem, pixels: np.ndarray, normalize: str, name: str, path: Path) -> None:
    """network.png for one image (28, 28) uint8: its activations layer by layer."""
    from mlptrain import plots

    plots.plot_network([network_example(system, pixels, normalize, name)], path)


def draw_nudges(system: MLPSystem, pixels: np.ndarray, label: int, normalize: str, path: Path) -> None:
    """nudges.png for one image (28, 28) uint8 of digit `label`: its cost's gradient, by autograd."""
    from mlptrain import plots

    x = to_inputs(torch.from_numpy(pixels)[None].to(system.device), normalize)[0]
    plots.plot_nudges(nudges(system.model, system.loss_fn, x, label), pixels, label, path)
