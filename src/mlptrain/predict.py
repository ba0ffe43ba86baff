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
    pixels = np.array(image, dtype=np.uint8)  # a copy torch may write to
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return 255 - pixels if border.mean() > 127 else pixels


def test_image(index: int, data_dir: str | None = None) -> tuple[np.ndarray, int]:
    """Pixels and label of test image `index` (0 to 9999)."""
    test = datasets.MNIST(Path(data_dir) if data_dir else EMBEDDED_DIR, train=False)
    return test.data[index].numpy(), int(test.targets[index])


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
