"""The numbers behind the notes' pictures, from a trained network (mlptrain.plots draws them):

- `layer_activations`: one image's activations, layer by layer, and the weights that carried them;
- `nudges`: how one example's cost wants each output, weight and bias changed (autograd's gradient);
- `pca_directions`, `random_directions`, `loss_surface`: the training loss over a plane through the weights,
  and the path the weights took across it.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mlptrain.activations import Maxout
from mlptrain.model import MLP
from mlptrain.step import LossFn, gradients


@torch.no_grad()
def layer_activations(model: MLP, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One example's inputs x (784,) through the network, as the notes' a' = σ(W a + b), dropout off.

    Returns the activations a_0 (the inputs), a_1 … (each hidden layer) and the output (10,), and for each
    layer the weights (n_out, n_in) that made its units from the layer before. A maxout unit is the largest of
    its k pieces: its row is the winning piece's, so weight × activation is what reached the unit.
    """
    a = x.reshape(-1).to(model.layers[0].weight.dtype)
    activations, weights = [a], []
    for layer, activation in zip(model.layers[:-1], model.activations):
        z = layer(a)
        weight = layer.weight
        if isinstance(activation, Maxout):
            k = activation.pieces
            winner = z.view(-1, k).argmax(-1)  # (n_out,)
            weight = weight.view(-1, k, weight.shape[1])[torch.arange(len(winner)), winner]
        a = activation(z[None])[0]
        activations.append(a)
        weights.append(weight)
    activations.append(model.output_activation(model.layers[-1](a)))
    weights.append(model.layers[-1].weight)
    return activations, weights


def strongest(values: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` values of largest magnitude (a tanh unit at -1 is as active as one at +1),
    in index order, so that a layer drawn as its strongest units keeps their order."""
    return np.sort(np.argsort(-np.abs(values), kind="stable")[:count])


@dataclass(frozen=True)
class Nudges:
    """Backpropagation for one example: each desired change is minus the cost's gradient, the direction one
    step of gradient descent moves in (before the learning rate scales it)."""

    loss: float
    output: torch.Tensor  # (10,) the network's output for the example
    output_change: torch.Tensor  # (10,) −∂C/∂output: up for the true digit, down for the others
    weight_changes: list[torch.Tensor]  # −∂C/∂W per layer, (n_out, n_in), the first layer's rows are 28×28 tiles
    bias_changes: list[torch.Tensor]  # −∂C/∂b per layer, (n_out,)


def nudges(model: MLP, loss_fn: LossFn, x: torch.Tensor, label: int) -> Nudges:
    """The cost of one example (x (784,), its digit) and its gradient by autograd, dropout off."""
    was_training = model.training
    model.eval()
    inputs = x.reshape(1, -1).to(model.layers[0].weight.dtype)
    target = torch.tensor([label], device=inputs.device)
    params = dict(model.named_parameters())
    grads, loss, output = gradients(model, loss_fn, params, inputs, target, functional=False)
    # −∂C/∂output: the cost as a function of the output alone, at this output.
    out = output.clone().requires_grad_(True)
    (output_grad,) = torch.autograd.grad(loss_fn(out, target), out)
    model.train(was_training)
    by_name = dict(zip(params, grads))
    layers = range(len(model.layers))
    return Nudges(
        loss=float(loss),
        output=output[0],
        output_change=-output_grad[0],
        weight_changes=[-by_name[f"layers.{i}.weight"] for i in layers],
        bias_changes=[-by_name[f"layers.{i}.bias"] for i in layers],
    )


def flatten(model: nn.Module) -> torch.Tensor:
    """All of a model's parameters as one vector, in model.parameters() order (a point in weight space)."""
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()


@dataclass(frozen=True)
class Plane:
    """A plane through weight space: origin + α·first + β·second, and where a path of points lies on it."""

    origin: torch.Tensor  # (P,)
    first: torch.Tensor  # (P,)
    second: torch.Tensor  # (P,)
    explained: tuple[float, float] | None  # for PCA: the share of the path's variance along each direction
    how: str  # what the directions are, for the picture's title

    def coordinates(self, points: torch.Tensor) -> torch.Tensor:
        """(T, P) points -> (T, 2) coordinates (α, β): the least-squares projection onto the plane."""
        basis = torch.stack([self.first, self.second], 1)  # (P, 2)
        return torch.linalg.lstsq(basis, (points - self.origin).T).solution.T


def pca_directions(points: torch.Tensor) -> Plane:
    """The first two principal components of a path of weights (T, P), T >= 3, centred on its last point
    (Li et al., 2018, section 7): the plane in which the path moved most."""
    if len(points) < 3:
        raise ValueError(f"a path of {len(points)} points has no two principal directions: it needs 3 or more")
    origin = points[-1]
    _, singular, right = torch.linalg.svd((points - origin).double(), full_matrices=False)
    variance = singular.square()
    share = (variance[:2] / variance.sum()).tolist()
    return Plane(
        origin,
        right[0].to(points.dtype),
        right[1].to(points.dtype),
        (share[0], share[1]),
        "the first two principal components of the weights along training",
    )


def random_directions(model: nn.Module, origin: torch.Tensor, seed: int = 0) -> Plane:
    """Two random Gaussian directions through the weights `origin` (P,) of `model`'s shape, filter-normalised
    (Li et al., 2018): each row of a direction's weight matrix (the weights into one unit) is scaled to the
    norm of that row of the weights, so the plane is as steep in every layer as the weights' scale makes it;
    biases stay put."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [p.shape for p in model.parameters()]
    weights = [part.view(shape) for part, shape in zip(origin.cpu().split([s.numel() for s in shapes]), shapes)]
    directions = []
    for _ in range(2):
        parts = []
        for w in weights:
            if w.dim() < 2:  # a bias
                parts.append(torch.zeros_like(w).reshape(-1))
                continue
            d = torch.randn(w.shape, generator=generator, dtype=w.dtype)
            d *= w.norm(dim=1, keepdim=True) / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
            parts.append(d.reshape(-1))
        directions.append(torch.cat(parts).to(origin.device))
    return Plane(
        origin, directions[0], directions[1], None, "two random filter-normalised directions (Li et al., 2018)"
    )


def grid_around(
    coordinates: torch.Tensor, points: int = 21, margin: float = 0.25, at_least: float = 0.0
) -> tuple[list[float], list[float]]:
    """α and β values (`points` each) covering a path's (T, 2) coordinates and the origin, `margin` of the
    span beyond each end, and at least [-at_least, at_least]."""
    axes = []
    for column in coordinates.T.tolist():
        low, high = min(min(column), 0.0), max(max(column), 0.0)
        pad = margin * max(high - low, 1e-6)
        low, high = min(low - pad, -at_least), max(high + pad, at_least)
        axes.append(torch.linspace(low, high, points).tolist())
    return axes[0], axes[1]


@torch.no_grad()
def loss_surface(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    plane: Plane,
    alphas: Sequence[float],
    betas: Sequence[float],
) -> torch.Tensor:
    """The loss on (x, y) at origin + α·first + β·second for every α, β: (len(betas), len(alphas)).

    The model is evaluated in eval mode (no dropout) with torch.func.functional_call; its own parameters
    are left as they are."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    was_training = model.training
    model.eval()
    surface = torch.empty(len(betas), len(alphas), dtype=torch.float64)
    for i, beta in enumerate(betas):
        for j, alpha in enumerate(alphas):
            point = (plane.origin + alpha * plane.first + beta * plane.second).to(x.device)
            parts = point.split([shape.numel() for shape in shapes])
            values = {name: part.view(shape) for name, part, shape in zip(names, parts, shapes)}
            surface[i, j] = float(loss_fn(torch.func.functional_call(model, values, (x,)), y))
    model.train(was_training)
    return surface
