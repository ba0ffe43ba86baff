import itertools

import pytest
import torch

from mlptrain.activations import HIDDEN_ACTIVATIONS
from mlptrain.losses import make_loss
from mlptrain.model import MLP
from mlptrain.step import Clip, gradients


@pytest.mark.parametrize("hidden", [[], [16], [16, 16], [64, 32, 16]])
def test_shapes_and_parameter_count(hidden: list[int]) -> None:
    model = MLP(hidden=hidden)
    widths = [784, *hidden, 10]
    assert [(layer.in_features, layer.out_features) for layer in model.layers] == list(itertools.pairwise(widths))
    assert sum(p.numel() for p in model.parameters()) == sum((a + 1) * b for a, b in itertools.pairwise(widths))
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 10)
    assert model(torch.rand(5, 784)).shape == (5, 10)


def test_empty_hidden_is_logistic_regression() -> None:
    model = MLP(hidden=[], output_activation="softmax")
    x = torch.rand(3, 784)
    layer = model.layers[0]
    assert torch.allclose(model(x), torch.softmax(x @ layer.weight.T + layer.bias, -1))


def test_layers_compute_activation_of_affine_map() -> None:
    model = MLP(hidden=[7], activation="tanh", output_activation="sigmoid")
    x = torch.rand(4, 784)
    hidden = torch.tanh(x @ model.layers[0].weight.T + model.layers[0].bias)
    expected = torch.sigmoid(hidden @ model.layers[1].weight.T + model.layers[1].bias)
    assert torch.allclose(model(x), expected)


def test_maxout_layers_have_k_pieces_per_unit() -> None:
    model = MLP(hidden=[20, 10], activation="maxout", maxout_pieces=3)
    assert [layer.out_features for layer in model.layers] == [60, 30, 10]
    assert model(torch.rand(2, 784)).shape == (2, 10)


def test_inits() -> None:
    torch.manual_seed(0)
    normal = MLP(hidden=[512], init="normal").layers[0]
    assert normal.weight.mean().item() == pytest.approx(0, abs=0.01)
    assert normal.weight.std().item() == pytest.approx(1, abs=0.01)
    assert normal.bias.std().item() == pytest.approx(1, abs=0.15)
    kaiming = MLP(hidden=[512], init="kaiming").layers[0]
    assert kaiming.weight.std().item() == pytest.approx((2 / 784) ** 0.5, rel=0.02)
    assert torch.all(kaiming.bias == 0)
    xavier = MLP(hidden=[512], init="xavier").layers[0]
    assert xavier.weight.abs().max().item() <= (6 / (784 + 512)) ** 0.5
    assert torch.all(xavier.bias == 0)
    default = MLP(hidden=[512]).layers[0]  # PyTorch: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert default.weight.abs().max().item() <= 784**-0.5


def test_dropout_only_while_training() -> None:
    model = MLP(hidden=[256, 256], dropout=0.5)
    x = torch.rand(4, 784)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


# Each hidden activation with an output activation and a cost that go together, cycled.
COSTS = [
    ("none", "cross_entropy", None),
    ("sigmoid", "binary_cross_entropy", None),
    ("softmax", "mse", "half_sum"),
    ("none", "mse", "mean"),
    ("sigmoid", "mse", "sum"),
]


@pytest.mark.parametrize("index, activation", list(enumerate(HIDDEN_ACTIVATIONS)))
def test_stacked_weights_are_n_networks_each_as_it_computes_alone(index: int, activation: str) -> None:
    """An MLP holding 3 members' weights stacked gives each member's output, loss, gradients and clipped
    gradients as that member's own network does (float64), on its own inputs and on shared ones."""
    output_activation, cost, reduction = COSTS[index % len(COSTS)]
    settings = {"hidden": [12, 8], "activation": activation, "output_activation": output_activation}
    torch.manual_seed(index)
    members = [MLP(**settings, maxout_pieces=3).double() for _ in range(3)]
    stacked = MLP(**settings, maxout_pieces=3).double()
    names = [name for name, _ in stacked.named_parameters()]
    for name in names:
        layer, _, kind = name.rpartition(".")
        values = torch.stack([dict(m.named_parameters())[name].detach() for m in members])
        setattr(stacked.get_submodule(layer), kind, torch.nn.Parameter(values))
    loss_fn = make_loss(cost, reduction)
    x = torch.rand(3, 5, 784, dtype=torch.float64)
    y = torch.randint(0, 10, (3, 5))
    clip = Clip(0.01)
    for functional in (False, True):
        grads, losses, outputs = gradients(stacked, loss_fn, dict(stacked.named_parameters()), x, y, functional)
        clipped = clip(grads, members=True)
        assert all(g.is_contiguous() for g in grads)  # torch.optim's fused updates need them laid out so
        for m, member in enumerate(members):
            own, loss, output = gradients(member, loss_fn, dict(member.named_parameters()), x[m], y[m], False)
            torch.testing.assert_close(outputs[m], output, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(losses[m], loss, rtol=1e-12, atol=1e-12)
            for got, want in zip(grads, own):
                torch.testing.assert_close(got[m], want, rtol=1e-10, atol=1e-12)
            for got, want in zip(clipped, clip(own)):
                torch.testing.assert_close(got[m], want, rtol=1e-10, atol=1e-12)
    shared = x[0]
    with torch.no_grad():
        outputs = stacked(shared)
        for m, member in enumerate(members):
            torch.testing.assert_close(outputs[m], member(shared), rtol=1e-12, atol=1e-12)
