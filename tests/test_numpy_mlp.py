"""The hand-written NumPy MLP computes what autograd computes: forward, gradients and optimizer steps (float64)."""

import numpy as np
import pytest
import torch

from mlptrain.activations import HIDDEN_ACTIVATIONS
from mlptrain.baselines import numpy_mlp
from mlptrain.baselines.numpy_mlp import NumpyBaseline, NumpyMLP
from mlptrain.losses import make_loss
from mlptrain.model import MLP

LOSSES = [
    ("cross_entropy", "half_sum"),
    ("mse", "half_sum"),
    ("mse", "sum"),
    ("mse", "mean"),
    ("binary_cross_entropy", "half_sum"),
]
NEEDS = {"cross_entropy": "none", "binary_cross_entropy": "sigmoid"}  # the output activation each loss requires
COMBINATIONS = [
    (activation, output, loss)
    for activation in HIDDEN_ACTIVATIONS
    for output in ("none", "sigmoid", "softmax")
    for loss in LOSSES
    if NEEDS.get(loss[0], output) == output
]
PARAMS = {"logistic_slope": 2.5, "leaky_relu_slope": 0.1, "maxout_pieces": 3}


def twins(activation: str, output: str, hidden: tuple[int, ...] = (5, 4)) -> tuple[MLP, NumpyMLP]:
    """A torch MLP in float64 and a NumPy MLP holding the same weights, on 7 inputs."""
    torch.manual_seed(0)
    model = MLP(hidden, activation, output, init="xavier", in_features=7, **PARAMS).double()
    for layer in model.layers:  # non-zero biases, so that their gradients are checked too
        torch.nn.init.uniform_(layer.bias, -0.5, 0.5)
    hand = NumpyMLP(hidden, activation, output, in_features=7, dtype=np.float64, **PARAMS)
    hand.load_weights([(layer.weight.detach().numpy(), layer.bias.detach().numpy()) for layer in model.layers])
    return model, hand


def batch(seed: int = 1, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(size, 7)), rng.integers(0, 10, size)


def hand_loss_and_grads(hand: NumpyMLP, loss: tuple[str, str], x: np.ndarray, y: np.ndarray) -> tuple:
    out, cache = hand.forward(x)
    value, grad_out = numpy_mlp.make_loss(*loss)(out, y)
    return value, hand.backward(grad_out, cache)


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference relative to the largest magnitude of the reference."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize(("activation", "output", "loss"), COMBINATIONS)
def test_gradients_equal_autograd(activation: str, output: str, loss: tuple[str, str]) -> None:
    model, hand = twins(activation, output)
    x, y = batch()
    torch_loss = make_loss(*loss)(model(torch.from_numpy(x)), torch.from_numpy(y))
    torch_loss.backward()
    hand_loss, grads = hand_loss_and_grads(hand, loss, x, y)
    assert hand_loss == pytest.approx(torch_loss.item(), rel=1e-12)
    for (dw, db), layer in zip(grads, model.layers):
        assert rel_error(dw, layer.weight.grad.numpy()) < 1e-10
        assert rel_error(db, layer.bias.grad.numpy()) < 1e-10


@pytest.mark.parametrize("activation", sorted(set(HIDDEN_ACTIVATIONS) - {"step"}))  # step's gradient is a surrogate
@pytest.mark.parametrize(
    ("output", "loss"), [("none", LOSSES[0]), ("softmax", LOSSES[1]), ("sigmoid", LOSSES[3]), ("sigmoid", LOSSES[4])]
)
def test_gradients_equal_central_finite_differences(activation: str, output: str, loss: tuple[str, str]) -> None:
    _, hand = twins(activation, output)
    x, y = batch()
    _, grads = hand_loss_and_grads(hand, loss, x, y)
    h = 1e-6
    for param, grad in zip(hand.parameters(), [g for pair in grads for g in pair]):
        numeric = np.zeros_like(param)
        for i in np.ndindex(param.shape):
            saved = param[i]
            param[i] = saved + h
            up = hand_loss_and_grads(hand, loss, x, y)[0]
            param[i] = saved - h
            down = hand_loss_and_grads(hand, loss, x, y)[0]
            param[i] = saved
            numeric[i] = (up - down) / (2 * h)
        assert np.abs(numeric - grad).max() <= 1e-7 * max(1.0, np.abs(grad).max())


OPTIMIZERS = {
    "sgd": {"_target_": "torch.optim.SGD", "lr": 0.3},
    "sgd_momentum": {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
    "sgd_nesterov": {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9, "nesterov": True},
    "adam": {"_target_": "torch.optim.Adam", "lr": 0.01, "weight_decay": 1e-3},
    "adamw": {"_target_": "torch.optim.AdamW", "lr": 0.01, "weight_decay": 0.05},
}


def _torch_optimizer(config: dict, params: object) -> torch.optim.Optimizer:
    cls = {
        "torch.optim.SGD": torch.optim.SGD,
        "torch.optim.Adam": torch.optim.Adam,
        "torch.optim.AdamW": torch.optim.AdamW,
    }
    return cls[config["_target_"]](params, **{k: v for k, v in config.items() if k != "_target_"})


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("steps", [1, 25])
def test_training_steps_stay_equal(name: str, steps: int) -> None:
    """Same weights, same batches, float64: loss curves and weights agree to 1e-9 after every step."""
    model, hand = twins("tanh", "sigmoid")
    loss = ("mse", "half_sum")
    optimizer = _torch_optimizer(OPTIMIZERS[name], model.parameters())
    hand_optimizer = numpy_mlp.make_optimizer(OPTIMIZERS[name])
    for step in range(steps):
        x, y = batch(seed=step)
        optimizer.zero_grad()
        torch_loss = make_loss(*loss)(model(torch.from_numpy(x)), torch.from_numpy(y))
        torch_loss.backward()
        optimizer.step()
        hand_loss, grads = hand_loss_and_grads(hand, loss, x, y)
        hand_optimizer.step(hand.parameters(), [g for pair in grads for g in pair])
        assert hand_loss == pytest.approx(torch_loss.item(), rel=1e-9)
    for param, torch_param in zip(hand.parameters(), model.parameters()):
        assert rel_error(param, torch_param.detach().numpy()) < 1e-9


def test_baseline_trains_in_float32_and_float64() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 784)).astype(np.float32)
    y = (x[:, :10].argmax(-1)).astype(np.int64)  # a learnable rule
    for dtype in ("float32", "float64"):
        baseline = NumpyBaseline(
            model={"hidden": [32], "activation": "relu"},
            loss={"name": "cross_entropy"},
            optimizer={"_target_": "torch.optim.SGD", "lr": 0.5},
            dtype=dtype,
        )
        before = baseline.loss(x, y)
        order = [np.arange(i, i + 20) for i in range(0, 200, 20)]
        for _ in range(10):
            baseline.fit_epoch(x, y, order)
        assert baseline.model.weights[0].dtype == np.dtype(dtype)
        assert baseline.loss(x, y) < before / 2
        assert (baseline.predict(x) == y).mean() > 0.9
