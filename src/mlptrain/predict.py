"""Classify a digit with a trained checkpoint: a user's own image, or one of the test set."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import datasets

from mlptrain.data import EMBEDDED_DIR
from mlptrain.errors import ConfigError
from mlptrain.system import MLPSystem


def image_pixels(path: str | Path) -> np.ndarray:
    """A picture of one digit as MNIST shows digits: (28, 28) uint8, light strokes on a dark background.

    Converted to grey, resized to 28×28 if it is another size, and inverted when its background is
    light (a dark digit on white paper).
    """
    try:
        image = Image.open(path).convert("L")
    except (OSError, UnidentifiedImageError) as error:
        raise ConfigError(f"image={path} could not be read as a picture ({error}).") from error
    if image.size != (28, 28):
        image = image.resize((28, 28), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.uint8)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return 255 - pixels if border.mean() > 127 else pixels


def test_image(index: int, data_dir: str | None = None) -> tuple[np.ndarray, int]:
    """Pixels and label of test image `index` (0 to 9999)."""
    test = datasets.MNIST(Path(data_dir) if data_dir else EMBEDDED_DIR, train=False)
    return test.data[index].numpy(), int(test.targets[index])


def probabilities(system: MLPSystem, pixels: np.ndarray, normalize: str = "standard") -> np.ndarray:
    """(10,) probability per digit for (28, 28) uint8 pixels, normalised as the model was trained."""
    return system.probabilities_of(torch.from_numpy(pixels)[None], normalize)[0].float().numpy()
