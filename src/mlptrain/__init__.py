"""mlptrain: a reference trainer for multi-layer perceptrons on MNIST.

Importing the package registers the config's schemas with Hydra (mlptrain.config) and nothing more: torch and
Lightning load with the module that uses them (scientific-python's SPEC 1, by a module __getattr__), so that
`--help`, a config error, predict and the page start without Lightning. In a notebook: `mlptrain.run(...)`,
`mlptrain.sweep(...)` and `mlptrain.load(path)` (mlptrain.runs). The trainer of a composed config is
`from mlptrain.train import train`: `mlptrain.train` is that module, whose name a lazily loaded function could
not share."""

import importlib
from typing import Any

from mlptrain import config  # noqa: F401  (registers the schemas, before any command composes a config)

_WHERE = {
    "MLP": "mlptrain.model",
    "MLPSystem": "mlptrain.system",
    "MNISTDataModule": "mlptrain.data",
    # the notebook API: mlptrain.run("model.activation=tanh", trainer__max_epochs=3) -> Run (mlptrain.runs)
    "run": "mlptrain.runs",
    "sweep": "mlptrain.runs",
    "load": "mlptrain.runs",
    "Run": "mlptrain.runs",
    "Sweep": "mlptrain.runs",
    "ConfigError": "mlptrain.errors",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = ["MLP", "ConfigError", "MLPSystem", "MNISTDataModule", "Run", "Sweep", "load", "run", "sweep"]
