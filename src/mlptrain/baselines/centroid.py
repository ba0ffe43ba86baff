"""The simplest baseline there is: each digit's mean training image, and the nearest one as the answer."""

from collections.abc import Sequence

import numpy as np

Array = np.ndarray


class NearestCentroid:
    """Predicts the digit whose mean training image is nearest (Euclidean): the simplest baseline there is."""

    name = "centroid"

    def __init__(self) -> None:
        self.centroids: Array | None = None  # (10, 784)

    def fit_epoch(self, x: Array, y: Array, batch_indices: Sequence[Array]) -> None:
        if self.centroids is None:  # one pass fits it; later epochs change nothing
            seen = np.concatenate(batch_indices)
            self.centroids = np.stack([x[seen][y[seen] == digit].mean(0) for digit in range(10)])

    def predict(self, x: Array) -> Array:
        # argmin ||x - c||² = argmin (||c||² - 2 x·c): (N, 10)
        return ((self.centroids**2).sum(-1) - 2 * x @ self.centroids.T).argmin(-1)
