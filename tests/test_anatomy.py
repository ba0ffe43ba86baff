"""The numbers behind network.png, nudges.png and landscape.png, against hand computations and the NumPy MLP."""

import numpy as np
import pytest
import torch

from mlptrain.anatomy import (
    flatten,
    grid_around,
    layer_activations,
    loss_surface,
    nudges,
    pca_directions,
    random_directions,
    strongest,
)
from mlptrain.baselines.numpy_mlp import NumpyBaseline
from mlptrain.data import MNISTDataModule
from mlptrain.losses import make_loss
from mlptrain.model import MLP


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """The first 64 validation images as the network sees them, pixels in [0, 1], and their labels."""
    x, y = MNISTDataModule(normalize="unit").arrays("val")
    return x[:64], y[:64]


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "maxout"])
def test_layer_activations_are_sigma_of_w_a_plus_b(activation: str, digits: tuple[np.ndarray, np.ndarray]) -> None:
    torch.manual_seed(0)
    model = MLP(hidden=[12, 7], activation=activation, maxout_pieces=3).double()
    x = torch.from_numpy(digits[0][3]).double()
    activations, weights = layer_activations(model, x)
    assert [len(a) for a in activations] == [784, 12, 7, 10]
    assert [w.shape for w in weights] == [(12, 784), (7, 12), (10, 7)]
    sigma = {
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": torch.relu,
    }
    for layer in range(2):
        z = model.layers[layer].weight @ activations[layer] + model.layers[layer].bias
        if activation == "maxout":  # the unit's value is its best piece, and `weights` holds that piece's row
            expected = z.view(-1, 3).max(-1).values
            winners = z.view(-1, 3).argmax(-1)
            bias = model.layers[layer].bias.view(-1, 3)[torch.arange(len(winners)), winners]
            torch.testing.assert_close(weights[layer] @ activations[layer] + bias, expected)
        else:
            expected = sigma[activation](z)
            torch.testing.assert_close(weights[layer], model.layers[layer].weight)
        torch.testing.assert_close(activations[layer + 1], expected)
    torch.testing.assert_close(activations[-1], model(x[None])[0])  # the output, as the model computes it


def test_the_strongest_units_are_the_largest_in_magnitude_in_index_order() -> None:
    values = np.array([0.1, -0.9, 0.5, 0.95, -0.2, 0.0])
    assert strongest(values, 3).tolist() == [1, 2, 3]  # -0.9 counts as much as 0.9: tanh's −1 is active
    assert strongest(values, 10).tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("activation", "loss", "output"),
    [("relu", "cross_entropy", "none"), ("sigmoid", "mse", "sigmoid"), ("tanh", "binary_cross_entropy", "sigmoid")],
)
def test_nudges_are_the_hand_written_backprop_of_one_example(
    activation: str, loss: str, output: str, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    model_config = {"hidden": [16, 16], "activation": activation, "output_activation": output}
    loss_config = {"name": loss, **({"reduction": "half_sum"} if loss == "mse" else {})}
    torch.manual_seed(1)
    model = MLP(**model_config).double()
    x, label = digits[0][1], int(digits[1][1])
    found = nudges(model, make_loss(**loss_config), torch.from_numpy(x), label)

    by_hand = NumpyBaseline(model_config, loss_config, {"_target_": "torch.optim.SGD", "lr": 0.1}, dtype="float64")
    by_hand.load_weights([(layer.weight.detach().numpy(), layer.bias.detach().numpy()) for layer in model.layers])
    expected = by_hand.gradients(x[None], np.array([label]))
    for layer, (dw, db) in enumerate(expected):
        np.testing.assert_allclose(-found.weight_changes[layer].numpy(), dw, rtol=0, atol=1e-10)
        np.testing.assert_allclose(-found.bias_changes[layer].numpy(), db, rtol=0, atol=1e-10)
    out, _ = by_hand.model.forward(x[None])
    cost, grad_out = by_hand.loss_fn(out, np.array([label]))
    np.testing.assert_allclose(-found.output_change.numpy(), grad_out[0], rtol=0, atol=1e-12)
    assert found.loss == pytest.approx(cost, abs=1e-12)
    # The notes' reading: the true digit's output is wanted up, every other output down ...
    assert found.output_change[label] > 0 and (np.delete(found.output_change.numpy(), label) < 0).all()
    # ... and each first-layer unit's weight changes are the input times that unit's bias change (its δ):
    # the weights from brighter pixels get the bigger nudges.
    outer = found.bias_changes[0][:, None] * torch.from_numpy(x)[None, :]
    torch.testing.assert_close(found.weight_changes[0], outer)


def test_pca_directions_recover_the_plane_a_path_moves_in() -> None:
    generator = torch.Generator().manual_seed(0)
    end = torch.randn(500, generator=generator, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.randn(500, 2, generator=generator, dtype=torch.float64))
    t = torch.linspace(0, 1, 30, dtype=torch.float64)
    coordinates = torch.stack([5 * (1 - t), 0.5 * torch.sin(6 * t)], 1)  # far along one axis, a wiggle along the other
    path = end + coordinates @ basis.T
    plane = pca_directions(path)
    torch.testing.assert_close(plane.origin, path[-1])  # centred on where the path ended
    found = torch.stack([plane.first, plane.second], 1)
    torch.testing.assert_close(found.T @ found, torch.eye(2, dtype=torch.float64))  # orthonormal
    torch.testing.assert_close(found @ (found.T @ basis), basis)  # the same plane
    assert plane.explained[0] > 0.95 and sum(plane.explained) == pytest.approx(1.0)
    back = plane.origin + plane.coordinates(path) @ found.T
    torch.testing.assert_close(back, path)  # the path lies in the plane: its projection is the path
    with pytest.raises(ValueError, match="3 or more"):
        pca_directions(path[:2])


def test_random_directions_are_filter_normalised() -> None:
    torch.manual_seed(0)
    model = MLP(hidden=[20])
    origin = flatten(model)
    plane = random_directions(model, origin, seed=3)
    shapes = [p.shape for p in model.parameters()]
    for direction in (plane.first, plane.second):
        parts = direction.split([s.numel() for s in shapes])
        for part, parameter in zip(parts, model.parameters()):
            if parameter.dim() == 1:
                assert (part == 0).all()  # biases stay put
            else:  # each unit's incoming weights: the direction's row as long as the weights' row
                rows = part.view(parameter.shape)
                torch.testing.assert_close(rows.norm(dim=1), parameter.detach().norm(dim=1))
    assert not torch.allclose(plane.first, plane.second)


def test_the_loss_surface_is_the_loss_of_the_weights_at_each_point(digits: tuple[np.ndarray, np.ndarray]) -> None:
    torch.manual_seed(0)
    model = MLP(hidden=[20], activation="tanh").double()
    x, y = torch.from_numpy(digits[0]).double(), torch.from_numpy(digits[1])
    loss_fn = make_loss(name="cross_entropy")
    plane = random_directions(model, flatten(model), seed=1)
    alphas, betas = [-1.0, 0.0, 0.5], [0.0, 2.0]
    surface = loss_surface(model, loss_fn, x, y, plane, alphas, betas)
    assert surface.shape == (2, 3)
    before = flatten(model)
    for i, beta in enumerate(betas):
        for j, alpha in enumerate(alphas):
            moved = MLP(hidden=[20], activation="tanh").double()
            torch.nn.utils.vector_to_parameters(
                plane.origin + alpha * plane.first + beta * plane.second, moved.parameters()
            )
            assert float(surface[i, j]) == pytest.approx(float(loss_fn(moved(x), y).detach()), abs=1e-12)
    torch.testing.assert_close(flatten(model), before)  # the model itself is untouched
    assert float(surface[0, 1]) == pytest.approx(float(loss_fn(model(x), y)), abs=1e-12)  # the origin: the weights


def test_the_grid_covers_the_path_and_the_origin() -> None:
    path = torch.tensor([[-4.0, 1.0], [-2.0, 0.5], [0.0, 0.0]])
    alphas, betas = grid_around(path, points=11)
    assert len(alphas) == len(betas) == 11
    assert alphas[0] == pytest.approx(-5.0) and alphas[-1] == pytest.approx(1.0)  # 25% of the span each side
    assert betas[0] == pytest.approx(-0.25) and betas[-1] == pytest.approx(1.25)
    alphas, _ = grid_around(path, points=11, at_least=10.0)
    assert alphas[0] == -10.0 and alphas[-1] == 10.0
