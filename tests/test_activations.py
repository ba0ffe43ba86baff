import math

import pytest
import torch

from mlptrain.activations import HIDDEN_ACTIVATIONS, Maxout, make_activation, make_output_activation
from mlptrain.errors import ConfigError

X = [-2.0, -0.5, 0.0, 0.5, 3.0]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


EXPECTED = {
    "identity": lambda x: x,
    "step": lambda x: 1.0 if x > 0 else 0.0,
    "sigmoid": sigmoid,
    "logistic": lambda x: sigmoid(4.0 * x),  # slope a = 4 below
    "tanh": math.tanh,
    "relu": lambda x: max(x, 0.0),
    "leaky_relu": lambda x: x if x > 0 else 0.1 * x,  # slope 0.1 below
    "elu": lambda x: x if x > 0 else math.exp(x) - 1,
    "softsign": lambda x: x / (1 + abs(x)),
    "softplus": lambda x: math.log1p(math.exp(x)),
    "silu": lambda x: x * sigmoid(x),
    "gelu": lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))),
}
PARAMS = {"logistic_slope": 4.0, "leaky_relu_slope": 0.1, "maxout_pieces": 2}


def test_every_registered_activation_has_a_value_check() -> None:
    assert set(HIDDEN_ACTIVATIONS) == set(EXPECTED) | {"maxout"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_activation_values(name: str) -> None:
    out = make_activation(name, **PARAMS)(torch.tensor(X, dtype=torch.float64))
    assert out.tolist() == pytest.approx([EXPECTED[name](x) for x in X], abs=1e-12)


@pytest.mark.parametrize("name", sorted(set(HIDDEN_ACTIVATIONS) - {"step"}))
def test_activation_gradients_match_finite_differences(name: str) -> None:
    # Points kept away from 0, where relu-like functions have a kink and maxout pieces tie.
    x = (torch.rand(4, 6, dtype=torch.float64) + 0.1) * torch.tensor([1.0, -1.0]).repeat(12).view(4, 6)
    torch.autograd.gradcheck(make_activation(name, **PARAMS), (x.requires_grad_(),))


def test_step_passes_the_gradient_straight_through() -> None:
    x = torch.tensor(X, requires_grad=True)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    make_activation("step")(x).backward(upstream)
    assert x.grad.tolist() == upstream.tolist()


def test_step_is_exact_for_large_inputs() -> None:
    assert make_activation("step")(torch.tensor([1e8, -1e8])).tolist() == [1.0, 0.0]


def test_maxout_takes_the_largest_of_adjacent_pieces() -> None:
    x = torch.tensor([[1.0, 5.0, -2.0, -3.0, 0.0, 7.0]])
    assert Maxout(2)(x).tolist() == [[5.0, -2.0, 7.0]]
    assert Maxout(3)(x).tolist() == [[5.0, 7.0]]


def test_output_activations() -> None:
    z = torch.randn(8, 10)
    assert torch.equal(make_output_activation("none")(z), z)
    assert torch.allclose(make_output_activation("softmax")(z).sum(-1), torch.ones(8))
    assert torch.allclose(make_output_activation("sigmoid")(z), torch.sigmoid(z))


def test_any_module_class_by_target() -> None:
    hardtanh = make_activation({"_target_": "torch.nn.Hardtanh", "min_val": -2.0, "max_val": 2.0})
    assert hardtanh(torch.tensor([-5.0, 1.0, 5.0])).tolist() == [-2.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"_target_": "torch.nn.NoSuchThing"}, "could not be built"),
        ({"_target_": "math.sqrt", "_args_": [4]}, "not a torch.nn.Module"),
    ],
)
def test_bad_activation_names_the_key_and_the_choices(spec: object, needle: str) -> None:
    with pytest.raises(ConfigError, match="model.activation") as error:
        make_activation(spec)  # type: ignore[arg-type]
    assert needle in str(error.value)
