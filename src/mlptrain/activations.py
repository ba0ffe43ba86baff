"""Activation functions by name: the one registry that the model and the config share."""

from collections.abc import Callable, Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from mlptrain.errors import ConfigError


class _HeavisideStraightThrough(torch.autograd.Function):
    """Forward: the step, 1 where x > 0 else 0. Backward: the identity (straight-through).

    The step's true derivative is 0 almost everywhere, so gradient descent could never move
    the weights below it; the straight-through estimator passes the gradient on as if the
    unit were linear. Written as a Function rather than `x + (step(x) - x).detach()` because
    that trick is not exact in floating point (1e8 + (1 - 1e8) == 0 in float32).
    """

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return (x > 0).to(x.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        """Nothing to keep; a separate setup_context lets torch.func (torch.compile's traced step) take it."""

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


class Step(nn.Module):
    """Heaviside step (the perceptron's rule), trained with a straight-through gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _HeavisideStraightThrough.apply(x)


class Logistic(nn.Module):
    """The logistic function with slope a: 1 / (1 + exp(-a x)); a = 1 is the sigmoid, a → ∞ the step."""

    def __init__(self, slope: float = 1.0) -> None:
        super().__init__()
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.slope * x)

    def extra_repr(self) -> str:
        return f"slope={self.slope}"


class Maxout(nn.Module):
    """Maxout: each unit outputs the largest of its k linear pieces.

    The layer before it has k × width outputs; pieces of one unit are adjacent:
    (B, width * k) -> (B, width, k) -> max over k -> (B, width).
    """

    def __init__(self, pieces: int = 2) -> None:
        super().__init__()
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, self.pieces)).amax(-1)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


# Each factory gets the model config's activation parameters and takes what it needs.
HIDDEN_ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "identity": lambda **_: nn.Identity(),
    "step": lambda **_: Step(),
    "sigmoid": lambda **_: nn.Sigmoid(),
    "logistic": lambda logistic_slope, **_: Logistic(logistic_slope),
    "tanh": lambda **_: nn.Tanh(),
    "relu": lambda **_: nn.ReLU(),
    "leaky_relu": lambda leaky_relu_slope, **_: nn.LeakyReLU(leaky_relu_slope),
    "elu": lambda **_: nn.ELU(),
    "softsign": lambda **_: nn.Softsign(),
    "softplus": lambda **_: nn.Softplus(),
    "silu": lambda **_: nn.SiLU(),
    "gelu": lambda **_: nn.GELU(),
    "maxout": lambda maxout_pieces, **_: Maxout(maxout_pieces),
}

OUTPUT_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "none": nn.Identity,
    "sigmoid": nn.Sigmoid,
    "softmax": lambda: nn.Softmax(dim=-1),
}


def make_activation(
    spec: str | Mapping[str, Any],
    *,
    logistic_slope: float = 1.0,
    leaky_relu_slope: float = 0.01,
    maxout_pieces: int = 2,
) -> nn.Module:
    """A fresh hidden-layer activation module from its config value.

    `spec` is a registry name, or a mapping with `_target_` naming any `torch.nn.Module`
    class (e.g. `{_target_: torch.nn.Hardtanh, min_val: -2}`).
    """
    if isinstance(spec, Mapping):  # which names and mappings are allowed: mlptrain.config's rules
        try:
            module = instantiate(spec)
        except Exception as error:
            raise ConfigError(
                f"model.activation could not be built from {dict(spec)}: {error}. Check that "
                "`_target_` is an importable class path and its arguments are right."
            ) from error
        if not isinstance(module, nn.Module):
            raise ConfigError(
                f"model.activation `_target_: {spec['_target_']}` made a {type(module).__name__}, "
                "not a torch.nn.Module."
            )
        return module
    return HIDDEN_ACTIVATIONS[spec](
        logistic_slope=logistic_slope,
        leaky_relu_slope=leaky_relu_slope,
        maxout_pieces=maxout_pieces,
    )


def make_output_activation(name: str) -> nn.Module:
    """The output layer's activation: `none` leaves the logits as they are."""
    return OUTPUT_ACTIVATIONS[name]()
