"""A hand-written network in the style of Nielsen's `network.py`, plugged into `scripts/compare.py`.

`Network` is the book's chapter-1 design, written anew here: column vectors, per-example backpropagation,
sigmoid neurons, the quadratic cost, plain SGD. `NielsenBaseline` wraps it in mlptrain's comparison protocol
(see mlptrain/compare.py), which is all a hand-written model of your own needs too:

    python scripts/compare.py experiment=nielsen baselines=[numpy,nielsen_network]

conf/baselines/nielsen_network.yaml names it by its import path, `_target_:
mlptrain.baselines.nielsen_network.NielsenBaseline`; a model of your own is named the same way, from any
module Python can import (yours on PYTHONPATH, or installed).
"""

from collections.abc import Sequence

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z: np.ndarray) -> np.ndarray:
    return sigmoid(z) * (1 - sigmoid(z))


class Network:
    def __init__(self, sizes: Sequence[int]) -> None:
        self.num_layers = len(sizes)
        self.sizes = list(sizes)
        self.biases = [np.random.randn(y, 1) for y in sizes[1:]]
        self.weights = [np.random.randn(y, x) for x, y in zip(sizes[:-1], sizes[1:])]

    def feedforward(self, a: np.ndarray) -> np.ndarray:
        """a is (784, 1), or (784, N) for N examples at once: b broadcasts over the columns."""
        for b, w in zip(self.biases, self.weights):
            a = sigmoid(np.dot(w, a) + b)
        return a

    def update_mini_batch(self, mini_batch: list, eta: float) -> None:
        """One gradient-descent step, with the gradient backpropagated one example at a time."""
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        for x, y in mini_batch:
            delta_nabla_b, delta_nabla_w = self.backprop(x, y)
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w)]
        self.weights = [w - (eta / len(mini_batch)) * nw for w, nw in zip(self.weights, nabla_w)]
        self.biases = [b - (eta / len(mini_batch)) * nb for b, nb in zip(self.biases, nabla_b)]

    def backprop(self, x: np.ndarray, y: np.ndarray) -> tuple[list, list]:
        """Gradient of C_x = ½‖a − y‖² for one example, layer by layer from the output back."""
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        activation = x
        activations = [x]
        zs = []
        for b, w in zip(self.biases, self.weights):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        delta = self.cost_derivative(activations[-1], y) * sigmoid_prime(zs[-1])
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for layer in range(2, self.num_layers):
            z = zs[-layer]
            delta = np.dot(self.weights[-layer + 1].transpose(), delta) * sigmoid_prime(z)
            nabla_b[-layer] = delta
            nabla_w[-layer] = np.dot(delta, activations[-layer - 1].transpose())
        return nabla_b, nabla_w

    def cost_derivative(self, output_activations: np.ndarray, y: np.ndarray) -> np.ndarray:
        return output_activations - y


def vectorized_result(j: int) -> np.ndarray:
    e = np.zeros((10, 1))
    e[j] = 1.0
    return e


class NielsenBaseline:
    """`Network` in the comparison protocol; it can only be what network.py is, so it checks the config says so."""

    name = "nielsen_network"

    def __init__(
        self,
        hidden: Sequence[int],
        lr: float,
        activation: str = "sigmoid",
        output_activation: str = "sigmoid",
        loss: str = "mse",
        reduction: str | None = "half_sum",
        optimizer: str = "torch.optim.SGD",
        momentum: float = 0.0,
    ) -> None:
        setup = (activation, output_activation, loss, reduction, optimizer, momentum)
        if setup != ("sigmoid", "sigmoid", "mse", "half_sum", "torch.optim.SGD", 0.0):
            raise ValueError(
                "network.py is sigmoid neurons (hidden and output), the quadratic cost ½‖a−y‖² and plain SGD; this "
                f"config asks for {setup}. Compare it with experiment=nielsen, or change only hidden and lr."
            )
        self.network = Network([784, *hidden, 10])
        self.eta = lr

    def load_weights(self, weights: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        self.network.weights = [np.array(w, dtype=np.float64) for w, _ in weights]
        self.network.biases = [np.array(b, dtype=np.float64).reshape(-1, 1) for _, b in weights]

    def fit_epoch(self, x: np.ndarray, y: np.ndarray, batch_indices: Sequence[np.ndarray]) -> None:
        for index in batch_indices:
            mini_batch = [(x[i].reshape(784, 1).astype(np.float64), vectorized_result(y[i])) for i in index]
            self.network.update_mini_batch(mini_batch, self.eta)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.network.feedforward(x.T).argmax(0)

    def loss(self, x: np.ndarray, y: np.ndarray) -> float:
        a = self.network.feedforward(x.T)  # (10, N)
        a[y, np.arange(len(y))] -= 1
        return float(0.5 * (a * a).sum(0).mean())

    def gradients(self, x: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Mean over the examples of backprop's per-example gradients, in PyTorch's (out, in) layout."""
        total_b = [np.zeros(b.shape) for b in self.network.biases]
        total_w = [np.zeros(w.shape) for w in self.network.weights]
        for xi, yi in zip(x, y):
            nabla_b, nabla_w = self.network.backprop(xi.reshape(784, 1), vectorized_result(yi))
            total_b = [t + n for t, n in zip(total_b, nabla_b)]
            total_w = [t + n for t, n in zip(total_w, nabla_w)]
        return [(w / len(y), b.ravel() / len(y)) for w, b in zip(total_w, total_b)]
