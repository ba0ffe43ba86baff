"""The multi-layer perceptron: a plain nn.Module, layer by layer a' = σ(W a + b)."""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mlptrain.activations import Maxout, make_activation, make_output_activation
from mlptrain.errors import ConfigError

INITS = ("default", "xavier", "kaiming", "normal")


class MLP(nn.Module):
    """784 inputs → the `hidden` widths → 10 outputs, fully connected.

    `hidden=[]` is multinomial logistic regression: one affine map from pixels to the 10 outputs.
    Dropout, when on, follows each hidden activation.
    """

    def __init__(
        self,
        hidden: Sequence[int] = (16, 16),
        activation: str | Mapping[str, Any] = "relu",
        output_activation: str = "none",
        init: str = "default",
        dropout: float = 0.0,
        logistic_slope: float = 1.0,
        leaky_relu_slope: float = 0.01,
        maxout_pieces: int = 2,
        in_features: int = 784,
        out_features: int = 10,
    ) -> None:
        super().__init__()
        hidden = list(hidden)
        if not all(isinstance(width, int) and not isinstance(width, bool) and width > 0 for width in hidden):
            raise ConfigError(
                f"model.hidden must be a list of positive integer widths, e.g. [16, 16] "
                f"(or [] for logistic regression); got {hidden}."
            )
        if init not in INITS:
            raise ConfigError(f"model.init={init!r} is not known. Use one of: {', '.join(INITS)}.")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout is a probability in [0, 1); got {dropout}.")

        self.activations = nn.ModuleList(
            make_activation(
                activation,
                logistic_slope=logistic_slope,
                leaky_relu_slope=leaky_relu_slope,
                maxout_pieces=maxout_pieces,
            )
            for _ in hidden
        )
        widths = [in_features, *hidden, out_features]
        # A maxout unit needs one linear piece per k, so its layer is k times as wide.
        pieces = [act.pieces if isinstance(act, Maxout) else 1 for act in self.activations] + [1]
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out * k) for n_in, n_out, k in zip(widths[:-1], widths[1:], pieces)
        )
        self.dropout = nn.Dropout(dropout)
        self.output_activation = make_output_activation(output_activation)
        self.init_parameters(init)

    def init_parameters(self, init: str) -> None:
        """Re-draw every weight and bias by the named scheme (`default` leaves PyTorch's own)."""
        for layer in self.layers:
            if init == "xavier":  # Glorot & Bengio 2010, uniform; zero biases
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
            elif init == "kaiming":  # He et al. 2015, normal, fan-in, ReLU gain; zero biases
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
            elif init == "normal":  # Nielsen's network.py: every weight and bias ~ N(0, 1)
                nn.init.normal_(layer.weight)
                nn.init.normal_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.flatten(1)  # (B, 1, 28, 28) or (B, 784) -> (B, 784)
        for layer, activation in zip(self.layers[:-1], self.activations):
            a = self.dropout(activation(layer(a)))  # a' = σ(W a + b): (B, n_in) -> (B, n_out)
        return self.output_activation(self.layers[-1](a))  # (B, 10)
