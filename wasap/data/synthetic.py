"""Synthetic classification data: scikit-learn's make_classification, or the same recipe written
in float32 blocks for shapes whose float64 temporaries would not fit in memory."""

from __future__ import annotations

import math

import numpy as np

from .readers import Splits, check_test_fraction, split_table
from .validation import DataError, rows_per_chunk

__all__ = ["SYNTHETIC_CHUNKED_ABOVE"]

# Above this many feature values, sklearn's make_classification (float64, several full-size temporaries)
# needs several times the memory of the result, so the chunked float32 generator takes over.
SYNTHETIC_CHUNKED_ABOVE = 5e7


def make_synthetic(
    *, n_samples, n_features, n_classes, n_informative, test_fraction, seed, chunk_rows
) -> Splits:
    """make_classification data split into train and test (chunked float32 generator for big shapes)."""
    limits = ((n_samples, "n_samples", 2), (n_features, "n_features", 1), (n_classes, "n_classes", 2))
    for value, name, minimum in limits:
        if int(value) != value or value < minimum:
            raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    check_test_fraction(test_fraction)
    needed = math.ceil(math.log2(2 * n_classes))
    if n_informative is None:
        n_informative = max(needed, min(500, round(0.1 * n_features)))
    if not needed <= n_informative <= n_features:
        raise DataError(
            f"n_informative={n_informative} must lie between {needed} (2 clusters for each of {n_classes} "
            f"classes need 2 ** n_informative >= {2 * n_classes} hypercube vertices) and "
            f"n_features={n_features}; "
            "raise n_features or lower n_classes."
        )
    n_redundant = min(2, n_features - n_informative)
    origin = (f"seed {seed}, {n_informative} informative, {n_redundant} redundant, "
              f"{n_features - n_informative - n_redundant} noise features")
    if chunk_rows is None and n_samples * n_features <= SYNTHETIC_CHUNKED_ABOVE:
        from sklearn.datasets import make_classification

        X, y = make_classification(
            n_samples=n_samples, n_features=n_features, n_informative=n_informative, n_redundant=n_redundant,
            n_classes=n_classes, random_state=seed,
        )
        X_train, X_test, y_train, y_test = split_table(X.astype(np.float32), y, test_fraction, seed)
        return Splits("synthetic", f"sklearn make_classification, {origin}", X_train, y_train, X_test, y_test)
    if chunk_rows is not None and (int(chunk_rows) != chunk_rows or chunk_rows < 1):
        raise DataError(f"chunk_rows must be a positive integer, got {chunk_rows!r}.")
    n_train = n_samples - max(1, round(test_fraction * n_samples))
    X_train, y_train, X_test, y_test = _make_classification_chunked(
        n_samples, n_features, n_informative, n_redundant, n_classes, n_train, seed, chunk_rows,
    )
    return Splits("synthetic", f"make_classification-like chunked float32 generator, {origin}",
                   X_train, y_train, X_test, y_test)


def _make_classification_chunked(n_samples, n_features, n_informative, n_redundant, n_classes, n_train, seed,
                                 chunk_rows):
    """make_classification's recipe written straight into float32 train/test arrays, block by block.

    Two clusters per class sit on distinct vertices of the hypercube [-1, 1]^n_informative; each sample
    is a standard normal vector in the informative subspace, mixed by its cluster's random matrix and
    shifted to its centroid; redundant features are random linear combinations of the informative ones,
    the rest is standard normal noise; 1% of labels are redrawn at random; rows and columns are shuffled.
    Random numbers come from streams consumed in row order, so the result does not depend on ``chunk_rows``.
    """
    layout_seed, informative_seed, noise_seed = np.random.SeedSequence(seed).spawn(3)
    layout = np.random.default_rng(layout_seed)
    informative_rng = np.random.default_rng(informative_seed)
    noise_rng = np.random.default_rng(noise_seed)

    n_clusters = 2 * n_classes
    centroids = (2.0 * _hypercube_vertices(n_clusters, n_informative, layout) - 1.0).astype(np.float32)
    mixing = (2.0 * layout.random((n_clusters, n_informative, n_informative), dtype=np.float32) - 1.0)
    combos = (2.0 * layout.random((n_informative, n_redundant), dtype=np.float32) - 1.0)
    sizes = np.full(n_clusters, n_samples // n_clusters)
    sizes[: n_samples % n_clusters] += 1
    cluster = layout.permutation(np.repeat(np.arange(n_clusters), sizes))
    y = cluster % n_classes
    flipped = layout.random(n_samples) < 0.01
    y[flipped] = layout.integers(0, n_classes, int(flipped.sum()))
    column_order = layout.permutation(n_features)

    step = chunk_rows or rows_per_chunk(n_features, np.dtype(np.float32).itemsize)
    X_train = np.empty((n_train, n_features), dtype=np.float32)
    X_test = np.empty((n_samples - n_train, n_features), dtype=np.float32)
    for out, offset in ((X_train, 0), (X_test, n_train)):
        for start in range(0, len(out), step):
            stop = min(start + step, len(out))
            block = np.empty((stop - start, n_features), dtype=np.float32)
            z = informative_rng.standard_normal((stop - start, n_informative), dtype=np.float32)
            clusters = cluster[offset + start:offset + stop]
            for k in np.unique(clusters):
                rows = clusters == k
                block[rows, :n_informative] = z[rows] @ mixing[k] + centroids[k]
            block[:, n_informative:n_informative + n_redundant] = block[:, :n_informative] @ combos
            block[:, n_informative + n_redundant:] = noise_rng.standard_normal(
                (stop - start, n_features - n_informative - n_redundant), dtype=np.float32)
            out[start:stop] = block[:, column_order]
    return X_train, y[:n_train], X_test, y[n_train:]


def _hypercube_vertices(n_vertices: int, n_dims: int, rng: np.random.Generator) -> np.ndarray:
    """``n_vertices`` distinct random vertices of {0, 1}^n_dims, as float rows."""
    # As sklearn: distinct codes among the first (at most 30) dimensions, random bits for the rest.
    head = min(n_dims, 30)
    codes = rng.choice(2 ** head, n_vertices, replace=False)
    bits = ((codes[:, None] >> np.arange(head)) & 1).astype(np.float64)
    tail = rng.integers(0, 2, (n_vertices, n_dims - head)).astype(np.float64)
    return np.hstack([bits, tail])

