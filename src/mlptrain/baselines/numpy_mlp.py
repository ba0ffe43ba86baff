"""The same MLP in NumPy, backpropagation written out by hand: no torch in this file.

Each activation, loss and optimizer defines its forward rule and its backward rule side by side,
under the names PyTorch uses, so this file reads line for line against model.py, system.py and
torch.optim. Weights use PyTorch's layout: W is (out, in) and a layer computes z = a @ W.T + b.
"""

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlptrain.losses import MSE_REDUCTIONS

Array = np.ndarray
_erf = np.frompyfunc(math.erf, 1, 1)


def _sigmoid(z: Array) -> Array:
    # exp of a large positive number overflows: use the form whose exponent is never positive
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


# Activations: forward(z) -> a, backward(z, a, grad_a) -> grad_z.


class Identity:
    def forward(self, z: Array) -> Array:
        return z

    def backward(self, z: Array, a: Array, grad: Array) -> Array:
        return grad


class Step:
    """Heaviside step; the backward pass is straight-through (the identity), as in mlptrain.activations."""

    def forward(self, z: Array) -> Array:
        return (z > 0).astype(z.dtype)

    def backward(self, z: Array, a: Array, grad: Array) -> Array:
        return grad


class Sigmoid:
    def forward(self, z: Array) -> Array:
        return _sigmoid(z)

    def backward(self, z: Array, a: Array, grad: Array) -> Array:
        return grad * a * (1 - a)  # σ' = σ (1 - σ)


class Logistic:
    def __init__(self, slope: float) -> None:
        self.slope = slope

    def forward(self, z: Array) -> Array:
        return _sigmoid(self.slope * z)

    def backward(self, z: Array, a: Array, grad: Array) -> Array:
        return grad * self.slope * a * (1 - a)


class Tanh:
    def forward(self, z: Array) -> Array:
        return np.tanh(z)

    def backward(self, z: Array, a: Array, grad: Array) -> Array:
        return grad * (1 - a * a)


class ReLU:
    def forward(self, z: Array) -> Array:
        return np.maximum(z, 0)

    def backward(self, z: Array, a: Array, grad: Array) -> Array:
        return grad * (z > 0)  # torch takes the derivative at 0 as 0 too


class LeakyReLU:
    def __init__(self, negative_slope: float) -> None:
        self.negative_slope = negative_slope

    def forward(self, z: Array) -> Array:
        return np.where(z > 0, z, self.negative_slope * z)

    def backward(self, z: Array, a: Array, grad: Array) -> Array:
        return grad * np.where(z > 0, 1, self.negative_slope).astype(z.dtype)


class ELU:
    def forward(self, z: Array) -> Array:
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))

    def backward(self, z: Array, a: Array, grad: Array) -> Array:
        return grad * np.where(z > 0, 1, a + 1)  # d/dz (e^z - 1) = e^z = a + 1


class Softsign:
    def forward(self, z: Array) -> Array:
        return z / (1 + np.abs(z))

    def backward(self, z: Array, a: Array, grad: Array) -> Array:
        return grad / (1 + np.abs(z)) ** 2


class Softplus:
    """log(1 + e^z), and z itself above torch's threshold of 20, where the two agree to float precision."""

    threshold = 20.0

    def forward(self, z: Array) -> Array:
        return np.where(z > self.threshold, z, np.log1p(np.exp(np.minimum(z, self.threshold))))

    def backward(self, z: Array, a: Array, grad: Array) -> Array:
        return grad * np.where(z > self.threshold, 1, _sigmoid(z))


class SiLU:
    def forward(self, z: Array) -> Array:
        return z * _sigmoid(z)

    def backward(self, z: Array, a: Array, grad: Array) -> Array:
        s = _sigmoid(z)
        return grad * s * (1 + z * (1 - s))


class GELU:
    """z Φ(z) with the exact normal CDF Φ, as torch.nn.GELU() computes by default."""

    def forward(self, z: Array) -> Array:
        return 0.5 * z * (1 + _erf(z / math.sqrt(2)).astype(z.dtype))

    def backward(self, z: Array, a: Array, grad: Array) -> Array:
        cdf = 0.5 * (1 + _erf(z / math.sqrt(2)).astype(z.dtype))
        pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return grad * (cdf + z * pdf)


class Maxout:
    """Largest of k adjacent pieces: (B, width * k) -> (B, width)."""

    def __init__(self, pieces: int) -> None:
        self.pieces = pieces

    def forward(self, z: Array) -> Array:
        return z.reshape(len(z), -1, self.pieces).max(-1)

    def backward(self, z: Array, a: Array, grad: Array) -> Array:
        # torch.amax shares the gradient evenly between tied maxima; do the same.
        winners = z.reshape(len(z), -1, self.pieces) == a[..., None]
        share = winners / winners.sum(-1, keepdims=True)
        return (grad[..., None] * share).reshape(z.shape).astype(z.dtype)


class Softmax:
    def forward(self, z: Array) -> Array:
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def backward(self, z: Array, a: Array, grad: Array) -> Array:
        return a * (grad - (grad * a).sum(-1, keepdims=True))  # the softmax Jacobian times grad


# Each factory gets the model config's activation parameters and takes what it needs (as activations.py).
ACTIVATIONS: dict[str, Any] = {
    "identity": lambda **_: Identity(),
    "step": lambda **_: Step(),
    "sigmoid": lambda **_: Sigmoid(),
    "logistic": lambda logistic_slope, **_: Logistic(logistic_slope),
    "tanh": lambda **_: Tanh(),
    "relu": lambda **_: ReLU(),
    "leaky_relu": lambda leaky_relu_slope, **_: LeakyReLU(leaky_relu_slope),
    "elu": lambda **_: ELU(),
    "softsign": lambda **_: Softsign(),
    "softplus": lambda **_: Softplus(),
    "silu": lambda **_: SiLU(),
    "gelu": lambda **_: GELU(),
    "maxout": lambda maxout_pieces, **_: Maxout(maxout_pieces),
}


OUTPUT_ACTIVATIONS = {"none": Identity, "sigmoid": Sigmoid, "softmax": Softmax}


# Losses: loss(output (B, 10), labels (B,)) -> (mean loss, grad of it w.r.t. output). Scales as in losses.make_loss.


def make_loss(name: str, reduction: str = "half_sum") -> Any:
    def cross_entropy(z: Array, labels: Array) -> tuple[float, Array]:
        log_p = z - z.max(-1, keepdims=True)
        log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))  # log-softmax
        rows = np.arange(len(labels))
        grad = np.exp(log_p)
        grad[rows, labels] -= 1  # d/dz of -log softmax(z)_y = softmax(z) - onehot(y)
        return float(-log_p[rows, labels].mean()), grad / len(labels)

    scale = MSE_REDUCTIONS.get(reduction)

    def mse(a: Array, labels: Array) -> tuple[float, Array]:
        diff = a.copy()
        diff[np.arange(len(labels)), labels] -= 1  # a - onehot(y)
        return float(scale * (diff * diff).sum(-1).mean()), 2 * scale * diff / len(labels)

    def binary_cross_entropy(a: Array, labels: Array) -> tuple[float, Array]:
        y = np.zeros_like(a)
        y[np.arange(len(labels)), labels] = 1
        # torch clamps each log at -100 and each a(1 - a) at 1e-12 in the backward pass; so do we.
        log_a, log_not_a = np.maximum(np.log(a), -100), np.maximum(np.log(1 - a), -100)
        loss = -(y * log_a + (1 - y) * log_not_a).sum(-1).mean()
        return float(loss), (a - y) / np.maximum(a * (1 - a), 1e-12) / len(labels)

    return {"cross_entropy": cross_entropy, "binary_cross_entropy": binary_cross_entropy, "mse": mse}[name]


class NumpyMLP:
    """784 -> hidden -> 10, a' = σ(W a + b) per layer; the same arguments and init schemes as model.MLP."""

    def __init__(
        self,
        hidden: Sequence[int] = (16, 16),
        activation: str = "relu",
        output_activation: str = "none",
        init: str = "default",
        dropout: float = 0.0,
        logistic_slope: float = 1.0,
        leaky_relu_slope: float = 0.01,
        maxout_pieces: int = 2,
        in_features: int = 784,
        out_features: int = 10,
        dtype: Any = np.float32,
        seed: int = 0,
    ) -> None:
        if dropout:  # mlptrain.config refuses it in a comparison, with a message
            raise ValueError("The NumPy MLP has no dropout.")
        self.activations = [
            ACTIVATIONS[activation](
                logistic_slope=logistic_slope, leaky_relu_slope=leaky_relu_slope, maxout_pieces=maxout_pieces
            )
            for _ in hidden
        ]
        self.output_activation = OUTPUT_ACTIVATIONS[output_activation]()
        widths = [in_features, *hidden, out_features]
        pieces = [getattr(act, "pieces", 1) for act in self.activations] + [1]
        rng = np.random.default_rng(seed)
        self.weights: list[Array] = []
        self.biases: list[Array] = []
        for n_in, n_out, k in zip(widths[:-1], widths[1:], pieces):
            rows = n_out * k
            if init == "normal":  # Nielsen: N(0, 1)
                weight, bias = rng.standard_normal((rows, n_in)), rng.standard_normal(rows)
            elif init == "xavier":
                bound = math.sqrt(6 / (n_in + rows))
                weight, bias = rng.uniform(-bound, bound, (rows, n_in)), np.zeros(rows)
            elif init == "kaiming":
                weight, bias = rng.normal(0, math.sqrt(2 / n_in), (rows, n_in)), np.zeros(rows)
            else:  # PyTorch's default for nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
                bound = 1 / math.sqrt(n_in)
                weight, bias = rng.uniform(-bound, bound, (rows, n_in)), rng.uniform(-bound, bound, rows)
            self.weights.append(weight.astype(dtype))
            self.biases.append(bias.astype(dtype))

    def load_weights(self, weights: Sequence[tuple[Array, Array]]) -> None:
        """Take (W (out, in), b (out,)) per layer, e.g. from a torch MLP's state_dict, in this model's dtype."""
        dtype = self.weights[0].dtype
        self.weights = [np.array(w, dtype=dtype) for w, _ in weights]
        self.biases = [np.array(b, dtype=dtype) for _, b in weights]

    def forward(self, x: Array) -> tuple[Array, list[tuple[Array, Array]]]:
        """Output (B, 10) and the cache backward needs: (z, a) of every layer, a of the input first."""
        a = x.reshape(len(x), -1)
        cache = [(a, a)]
        for weight, bias, activation in zip(self.weights, self.biases, self.activations):
            z = a @ weight.T + bias  # (B, n_in) -> (B, n_out)
            a = activation.forward(z)
            cache.append((z, a))
        z = a @ self.weights[-1].T + self.biases[-1]
        out = self.output_activation.forward(z)
        cache.append((z, out))
        return out, cache

    def backward(self, grad_out: Array, cache: list[tuple[Array, Array]]) -> list[tuple[Array, Array]]:
        """Gradients (dW, db) of every layer from the gradient at the output: the chain rule, layer by layer."""
        z, a = cache[-1]
        grad_z = self.output_activation.backward(z, a, grad_out)
        grads = []
        for layer in range(len(self.weights) - 1, -1, -1):
            a_in = cache[layer][1]
            grads.append((grad_z.T @ a_in, grad_z.sum(0)))  # dC/dW = δ aᵀ, dC/db = δ, summed over the batch
            if layer == 0:
                break
            grad_a = grad_z @ self.weights[layer]  # δ backwards through W
            z, a = cache[layer]
            grad_z = self.activations[layer - 1].backward(z, a, grad_a)
        return grads[::-1]

    def parameters(self) -> list[Array]:
        """W0, b0, W1, b1, ...: the order of torch's model.parameters()."""
        return [p for pair in zip(self.weights, self.biases) for p in pair]


class SGD:
    """torch.optim.SGD's update, including its momentum buffer (buf = grad at the first step)."""

    def __init__(self, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0) -> None:
        self.lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, weight_decay
        self.buffers: list[Array | None] | None = None

    def step(self, params: list[Array], grads: list[Array]) -> None:
        if self.buffers is None:
            self.buffers = [None] * len(params)
        for i, (param, grad) in enumerate(zip(params, grads)):
            if self.weight_decay:
                grad = grad + self.weight_decay * param
            if self.momentum:
                buf = self.buffers[i]
                buf = grad.copy() if buf is None else self.momentum * buf + grad
                self.buffers[i] = buf
                grad = grad + self.momentum * buf if self.nesterov else buf
            param -= self.lr * grad  # in place: params are the model's own arrays


class Adam:
    """torch.optim.Adam and, with decoupled=True, AdamW (weight decay applied to the weights)."""

    def __init__(
        self,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled: bool = False,
    ) -> None:
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.weight_decay, self.decoupled = weight_decay, decoupled
        self.t, self.m, self.v = 0, None, None

    def step(self, params: list[Array], grads: list[Array]) -> None:
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        for param, grad, m, v in zip(params, grads, self.m, self.v):
            if self.weight_decay and self.decoupled:
                param *= 1 - self.lr * self.weight_decay
            elif self.weight_decay:
                grad = grad + self.weight_decay * param
            m *= self.beta1
            m += (1 - self.beta1) * grad
            v *= self.beta2
            v += (1 - self.beta2) * grad * grad
            m_hat_scale = self.lr / (1 - self.beta1**self.t)
            denom = np.sqrt(v) / math.sqrt(1 - self.beta2**self.t) + self.eps
            param -= m_hat_scale * m / denom


MIRRORED = {
    "torch.optim.SGD": {"lr", "momentum", "nesterov", "weight_decay"},
    "torch.optim.Adam": {"lr", "betas", "eps", "weight_decay"},
    "torch.optim.AdamW": {"lr", "betas", "eps", "weight_decay"},
}


def make_optimizer(optimizer: Mapping[str, Any]) -> SGD | Adam:
    """The hand-written twin of the config's torch.optim class (mlptrain.config refuses arguments not in MIRRORED)."""
    target = optimizer.get("_target_")
    if target == "torch.optim.SGD":
        return SGD(
            optimizer["lr"],
            optimizer.get("momentum", 0.0),
            optimizer.get("nesterov", False),
            optimizer.get("weight_decay", 0.0),
        )
    if target in ("torch.optim.Adam", "torch.optim.AdamW"):
        default_decay = 0.01 if target == "torch.optim.AdamW" else 0.0
        return Adam(
            optimizer["lr"],
            tuple(optimizer.get("betas", (0.9, 0.999))),
            optimizer.get("eps", 1e-8),
            optimizer.get("weight_decay", default_decay),
            decoupled=target == "torch.optim.AdamW",
        )
    raise ValueError(f"The NumPy baseline has SGD, Adam and AdamW written by hand, not {target}.")


class NumpyBaseline:
    """The NumPy MLP trained by hand-written SGD/Adam, in the comparison protocol (see mlptrain.compare).

    Built from the same config groups as the trainer (model, loss, optimizer) so both compute the same thing.
    """

    name = "numpy"

    def __init__(
        self,
        model: Mapping[str, Any],
        loss: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.model = NumpyMLP(**model, dtype=self.dtype, seed=seed)
        self.loss_fn = make_loss(loss["name"], loss.get("reduction", "half_sum"))
        self.optimizer = make_optimizer(optimizer)

    def load_weights(self, weights: Sequence[tuple[Array, Array]]) -> None:
        self.model.load_weights(weights)

    def gradients(self, x: Array, y: Array) -> list[tuple[Array, Array]]:
        """(dW, db) per layer of the mean loss on (x, y), computed in float64 whatever dtype trains,
        so that parity with autograd can be judged to 1e-10."""
        twin = copy.copy(self.model)
        twin.weights = [w.astype(np.float64) for w in twin.weights]
        twin.biases = [b.astype(np.float64) for b in twin.biases]
        out, cache = twin.forward(x.astype(np.float64))
        _, grad_out = self.loss_fn(out, y)
        return twin.backward(grad_out, cache)

    def train_step(self, x: Array, y: Array) -> float:
        out, cache = self.model.forward(x)
        loss, grad_out = self.loss_fn(out, y)
        grads = self.model.backward(grad_out, cache)
        self.optimizer.step(self.model.parameters(), [g for pair in grads for g in pair])
        return loss

    def fit_epoch(self, x: Array, y: Array, batch_indices: Sequence[Array]) -> float:
        """One pass over the batches, in the order given; returns the mean training loss over examples."""
        x = x.astype(self.dtype, copy=False)
        total = 0.0
        for index in batch_indices:
            total += self.train_step(x[index], y[index]) * len(index)
        return total / sum(len(index) for index in batch_indices)

    def loss(self, x: Array, y: Array) -> float:
        return self.loss_fn(self.model.forward(x.astype(self.dtype, copy=False))[0], y)[0]

    def predict(self, x: Array) -> Array:
        return self.model.forward(x.astype(self.dtype, copy=False))[0].argmax(-1)
