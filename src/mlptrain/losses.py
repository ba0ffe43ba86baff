"""The costs a network can be trained on: the notes' quadratic cost in its three scalings, and two cross-entropies."""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

LOSSES = ("cross_entropy", "mse", "binary_cross_entropy")
MSE_REDUCTIONS = {"half_sum": 0.5, "sum": 1.0, "mean": 0.1}  # each one's factor on Σ_j (a_j - y_j)², per example

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(name: str, reduction: str | None = "half_sum") -> LossFn:
    """loss(output (B, 10), labels (B,)) -> scalar, averaged over the B examples; for N members' outputs
    (N, B, 10) and labels (N, B), each member's (N,).

    mse compares the output with the one-hot target y; per example, with a = output:
      half_sum: ½ Σ_j (a_j - y_j)²   Nielsen's quadratic cost C = 1/2n Σ_x ‖y(x) - a‖²
      sum:        Σ_j (a_j - y_j)²   3Blue1Brown's cost, twice the above
      mean:   1/10 Σ_j (a_j - y_j)²  PyTorch's F.mse_loss (mean over every element)
    cross_entropy is softmax cross-entropy on logits, so the output layer must be `none`.
    binary_cross_entropy is Nielsen's network2 cost on sigmoid outputs, summed over the 10 outputs:
      -Σ_j [y_j ln a_j + (1 - y_j) ln(1 - a_j)], so the output layer must be `sigmoid`.
    (mlptrain.config holds those rules and the names allowed.)
    """
    scale = MSE_REDUCTIONS[reduction] if name == "mse" else 1.0

    def one_hot(labels: torch.Tensor, classes: int, dtype: torch.dtype) -> torch.Tensor:
        # F.one_hot checks its labels on the host, which torch.compile cannot trace in one graph.
        return (labels[..., None] == torch.arange(classes, device=labels.device)).to(dtype)  # (B, 10)

    def mse(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = one_hot(labels, output.shape[-1], output.dtype)
        if reduction == "mean":
            return F.mse_loss(output, target) if output.dim() == 2 else (output - target).square().mean((-2, -1))
        return scale * (output - target).square().sum(-1).mean(-1)

    def binary_cross_entropy(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = one_hot(labels, output.shape[-1], output.dtype)
        if output.dim() == 2:
            return F.binary_cross_entropy(output, target, reduction="sum") / len(labels)
        return F.binary_cross_entropy(output, target, reduction="none").sum((-2, -1)) / labels.shape[-1]

    def cross_entropy(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if output.dim() == 2:
            return F.cross_entropy(output, labels)
        return F.cross_entropy(output.mT, labels, reduction="none").mean(-1)  # classes second: (N, 10, B)

    return {"cross_entropy": cross_entropy, "mse": mse, "binary_cross_entropy": binary_cross_entropy}[name]


def member_losses(kinds: Sequence[tuple[slice, LossFn]]) -> LossFn:
    """The losses of N stacked members whose kinds have costs of their own: each kind's loss on its slice of
    the member axis (output (N, B, 10), labels (N, B)) -> (N,), as make_loss's functions give N members'."""

    def loss(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.cat([fn(output[part], labels[part]) for part, fn in kinds])

    return loss
