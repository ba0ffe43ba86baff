"""mlptrain: a reference trainer for multi-layer perceptrons on MNIST."""

from mlptrain.data import MNISTDataModule
from mlptrain.model import MLP
from mlptrain.system import MLPSystem
from mlptrain.train import train

__all__ = ["MLP", "MLPSystem", "MNISTDataModule", "train"]
