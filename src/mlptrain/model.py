"""The multi-layer perceptron: a plain nn.Module, layer by layer a' = σ(W a + b).

The same module evaluates N networks of its shape at once when its parameters carry a leading member axis
(weights (N, out, in), biases (N, out)), as a population holds them (system.MLPSystem): inputs (N, B, 784),
or (B, 784) shared by every member, give outputs (N, B, 10), one batched matrix product per layer."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mlptrain.activations import Maxout, make_activation, make_output_activation


def _xavier(layer: nn.Linear) -> None:  # Glorot & Bengio 2010, uniform; zero biases
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)


def _kaiming(layer: nn.Linear) -> None:  # He et al. 2015, normal, fan-in, ReLU gain; zero biases
    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    nn.init.zeros_(layer.bias)


def _normal(layer: nn.Linear) -> None:  # Nielsen's network.py: every weight and bias ~ N(0, 1)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)


class Linear(nn.Linear):
    """nn.Linear, whose weight and bias may also be N members' stacked: (N, out, in) and (N, out)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dim() == 2:
            return F.linear(x, self.weight, self.bias)
        if x.dim() == 2:  # the same inputs for every member (validation, test)
            x = x.expand(self.weight.shape[0], *x.shape)
        # (W a + b) for each member as (N, out, B), seen as (N, B, out): the weights' gradient then comes out
        # laid out as the weights are, which torch.optim's fused updates need (torch 2.14 on a CPU updates
        # wrongly from a transposed gradient), and the products are as fast as x W^T's or faster.
        return torch.baddbmm(self.bias.unsqueeze(-1), self.weight, x.mT).mT


INITS: dict[str, Callable[[nn.Linear], None]] = {
    "default": lambda layer: None,  # PyTorch's own, drawn when the layer was made
    "xavier": _xavier,
    "kaiming": _kaiming,
    "normal": _normal,
}


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
        self.layers = nn.ModuleList(Linear(n_in, n_out * k) for n_in, n_out, k in zip(widths[:-1], widths[1:], pieces))
        self.dropout = nn.Dropout(dropout)
        # A population's members' own random generators, one each (system.MLPSystem): each member's dropout
        # masks are drawn from its own, as its run alone draws them from the process's generator.
        self.generators: list[torch.Generator] | None = None
        # A population whose members differ in activation, output activation or dropout rate: each kind of
        # member's slice of the stack, with its own (system.MLPSystem); None where every member is alike.
        self.kinds: list[Kind] | None = None
        # A population whose members differ in width (depth equal), zero-padded to the widest: each member's own
        # hidden widths, to draw its dropout masks at its own width; None where every member is alike.
        self.widths: list[list[int]] | None = None
        self.output_activation = make_output_activation(output_activation)
        self.init_parameters(init)

    def init_parameters(self, init: str) -> None:
        """Re-draw every weight and bias by the named scheme (`default` leaves PyTorch's own)."""
        for layer in self.layers:
            INITS[init](layer)

    @property
    def stacked(self) -> bool:
        """Whether the weights are N members' stacked, (N, out, in): a population's (system.MLPSystem)."""
        return self.layers[0].weight.dim() == 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, 1, 28, 28) or (B, 784) -> (B, 784); members' inputs as they are
        a = x if self.stacked else x.flatten(1)
        if self.kinds is not None and self.stacked:  # each kind of member its own activations, on its slice
            for i, layer in enumerate(self.layers[:-1]):
                z = layer(a)
                a = torch.cat([self._dropped(k.activations[i](z[k.part]), k.dropout, k.part, i) for k in self.kinds])
            out = self.layers[-1](a)
            return torch.cat([k.output_activation(out[k.part]) for k in self.kinds])
        for i, (layer, activation) in enumerate(zip(self.layers[:-1], self.activations)):
            # a' = σ(W a + b): (B, n_in) -> (B, n_out)
            a = self._dropped(activation(layer(a)), self.dropout.p, layer=i)
        return self.output_activation(self.layers[-1](a))  # (B, 10)

    def _dropped(self, a: torch.Tensor, p: float, part: slice = slice(None), layer: int = 0) -> torch.Tensor:
        """Dropout at rate p after hidden layer `layer`: nn.Dropout's, or for stacked members (N, B, n) each
        member's mask from its own generator (those of `part`), drawn and scaled as torch's CPU dropout draws and
        scales a run's: bernoulli(1 - p), divided by 1 - p; at the member's own width, where it is zero-padded."""
        if self.generators is None or not self.training or p == 0 or not self.stacked:
            return self.dropout(a) if p == self.dropout.p else F.dropout(a, p, self.training)
        batch, width = a.shape[1:]  # drawn in a run's row-major order (activations may be laid out transposed)
        widths = [width] * len(self.generators) if self.widths is None else [w[layer] for w in self.widths]
        noise = torch.stack(
            [
                F.pad(torch.empty(batch, own, dtype=a.dtype, device=a.device).bernoulli_(1 - p, generator=g),
                      (0, width - own))
                for g, own in zip(self.generators[part], widths[part])
            ]
        )  # fmt: skip
        return a * noise.div_(1 - p)


class Kind(NamedTuple):
    """Members of a stacked MLP that share activations, output activation and dropout rate: their slice of the
    member axis, and theirs (a population's members may differ in these: system.MLPSystem)."""

    part: slice
    activations: nn.ModuleList
    output_activation: nn.Module
    dropout: float


def padded(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """tensor, zero-padded at the end of each axis to `shape` (a population's member narrower than the widest)."""
    if tensor.shape == shape:
        return tensor
    out = tensor.new_zeros(shape)
    out[tuple(slice(0, n) for n in tensor.shape)] = tensor
    return out


def cut(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A member's own part of its padded tensor (padded's inverse), as a tensor of its own."""
    return tensor[tuple(slice(0, n) for n in shape)].clone()
