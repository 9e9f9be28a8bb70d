"""Sparse synthetic classification data shaped like bag-of-words text: power-law feature frequencies,
a few informative features, built in memory proportional to its nonzeros."""

from __future__ import annotations

import math
import numbers

import numpy as np
import scipy.sparse

from .validation import DataError, rows_per_chunk

__all__ = ["make_sparse_classification"]

# Features held by more than half the samples behave like stop words: they are left out of the class
# signal, so the informative features are the most frequent of the rest.
_INFORMATIVE_AT_MOST = 0.5

# Columns whose frequency exceeds this are drawn as Bernoulli blocks (their nonzeros are at least this
# fraction of the block, so the block costs a bounded multiple of their nonzeros); rarer columns draw
# their rows directly, where a repeated row is rare and cheap to redraw.
_DRAWN_AS_BLOCK_ABOVE = 1 / 8

# Standard deviation of the Gaussian added to each class score; the weights are standard normal, so
# this decides only near-ties and the samples that hold no informative feature.
_LABEL_NOISE = 0.1

# Rounds of adjusting the class offsets towards equal class frequencies; it settles well within them.
_BALANCING_ROUNDS = 50

# Word counts are geometric with this success probability (mean 1 / p), stored as log(1 + count).
_COUNT_SUCCESS = 0.5


def make_sparse_classification(
    n_samples: int,
    n_features: int,
    *,
    density: float = 0.001,
    n_informative: int = 20,
    n_classes: int = 2,
    exponent: float = 1.0,
    seed: int = 0,
) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """High-dimensional sparse classification data with power-law feature frequencies.

    It models data such as bag-of-words text, where each sample holds a few of very many features and
    a few features are common while most are rare: the case in which a sparse network's input layer
    sees few nonzero inputs per sample, which dense synthetic data (:mod:`wasap.data.synthetic`) does
    not exercise.

    The feature of frequency rank ``r`` (1 = most frequent) is nonzero in a sample with probability
    ``min(1, c / r ** exponent)``, independently across samples and features, with ``c`` set so that the
    expected number of nonzeros is ``density * n_samples * n_features``. Ranks are assigned to the
    columns by a random permutation, so the frequent features are not the first columns. A nonzero is
    ``log(1 + count)`` of a word count drawn from a geometric distribution with mean 2.

    The labels depend on ``n_informative`` features: the most frequent of those held by at most half
    the samples, so that most samples hold at least one of them. Each class has a random standard normal
    weight vector over them, each informative feature weighing most for one class (in turn, so that
    every class has features that signal it), and a sample's label is the argmax over classes of its
    informative values times the weights, minus a class offset, plus a little Gaussian noise. The offsets
    (the rule's intercepts) are set so that the classes are about equally frequent. Samples that hold no
    informative feature get a label by the offsets and the noise alone.

    Memory and time are proportional to the nonzeros plus ``n_features``; no dense
    (n_samples, n_features) array is made.

    Parameters
    ----------
    n_samples : int
        Number of samples (rows), at least 1.
    n_features : int
        Number of features (columns), at least 1.
    density : float, default=0.001
        Expected fraction of nonzero entries, in (0, 1].
    n_informative : int, default=20
        Number of features the labels depend on, between ``n_classes`` and ``n_features``.
    n_classes : int, default=2
        Number of classes, at least 2.
    exponent : float, default=1.0
        Power-law exponent of the feature frequencies (Zipf's law for words is about 1); 0 makes every
        feature equally frequent.
    seed : int, default=0
        Seed of the numpy random Generator; the same arguments and seed give the same data.

    Returns
    -------
    X : scipy.sparse.csr_matrix of shape (n_samples, n_features), float32
        Positive values, sorted indices without duplicates, no explicit zeros; int32 indices when the
        number of nonzeros and ``n_features`` fit in int32.
    y : ndarray of shape (n_samples,), int64
        Class labels 0..n_classes-1.

    Raises
    ------
    DataError
        For an argument out of its range; the message names it and says what it must be.

    See Also
    --------
    wasap.data.synthetic : dense synthetic data (scikit-learn's make_classification).

    Examples
    --------
    >>> X, y = make_sparse_classification(1000, 20000, seed=0)
    >>> X.shape, X.dtype, y.dtype
    ((1000, 20000), dtype('float32'), dtype('int64'))
    >>> X.nnz  # about density * n_samples * n_features = 20000
    19684
    """
    _check_integer(n_samples, "n_samples", 1)
    _check_integer(n_features, "n_features", 1)
    _check_integer(n_classes, "n_classes", 2)
    _check_integer(n_informative, "n_informative", 1)
    _check_integer(seed, "seed", 0)
    if not isinstance(density, numbers.Real) or not 0 < density <= 1:
        raise DataError(
            f"density must be a number in (0, 1], the expected fraction of nonzero entries, got {density!r}."
        )
    if not isinstance(exponent, numbers.Real) or not 0 <= exponent < math.inf:
        raise DataError(
            f"exponent must be a finite number >= 0 (1 is Zipf's law, 0 makes all features equally frequent), "
            f"got {exponent!r}."
        )
    if not n_classes <= n_informative <= n_features:
        raise DataError(
            f"n_informative={n_informative} must lie between n_classes={n_classes} (every class needs a "
            f"feature that signals it) and n_features={n_features}; change n_informative, or raise "
            "n_features or lower n_classes."
        )

    layout_seed, entries_seed, values_seed, labels_seed = np.random.SeedSequence(seed).spawn(4)
    layout = np.random.default_rng(layout_seed)
    feature_of_rank = layout.permutation(n_features)
    frequency = _rank_frequencies(n_features, float(density), float(exponent))

    rows, ranks = _draw_nonzeros(frequency, n_samples, np.random.default_rng(entries_seed))
    keys = rows * n_features + feature_of_rank[ranks]  # row-major order: CSR order
    del rows, ranks
    keys.sort()
    rows, columns = np.divmod(keys, n_features)
    del keys
    index_dtype = np.int32 if max(rows.size, n_features) <= np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(n_samples + 1, dtype=index_dtype)
    np.cumsum(np.bincount(rows, minlength=n_samples), out=indptr[1:])
    del rows
    counts = np.random.default_rng(values_seed).geometric(_COUNT_SUCCESS, columns.size)
    values = np.log1p(counts).astype(np.float32)
    del counts
    X = scipy.sparse.csr_matrix((values, columns.astype(index_dtype), indptr), shape=(n_samples, n_features))

    start = min(int(np.count_nonzero(frequency > _INFORMATIVE_AT_MOST)), n_features - n_informative)
    informative = feature_of_rank[start:start + n_informative]
    weights = _class_weights(n_classes, n_informative, layout)
    labels_rng = np.random.default_rng(labels_seed)
    scores = np.asarray(X[:, informative] @ weights.T)
    scores += _LABEL_NOISE * labels_rng.standard_normal(scores.shape)
    return X, _balanced_argmax(scores)


def _check_integer(value, name: str, minimum: int) -> None:
    """Raise DataError unless ``value`` is an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _rank_frequencies(n_features: int, density: float, exponent: float) -> np.ndarray:
    """Probability that a sample holds the feature of each rank: ``min(1, c / rank ** exponent)``.

    ``c`` makes the probabilities sum to ``density * n_features``. With the ``m`` most frequent ranks
    capped at 1, ``c = (target - m) / (sum of the other weights)``; the right ``m`` is the smallest for
    which the first uncapped rank stays at or below 1 (water-filling).
    """
    target = density * n_features
    if target >= n_features:
        return np.ones(n_features)
    weights = np.arange(1, n_features + 1, dtype=np.float64) ** -exponent
    largest_capped = min(n_features - 1, int(target))
    head = np.concatenate(([0.0], np.cumsum(weights[:largest_capped])))  # first m weights, m = 0..
    capped = np.arange(largest_capped + 1)
    scale = (target - capped) / (weights.sum() - head)
    n_capped = int(np.argmax(scale * weights[:largest_capped + 1] <= 1.0))
    weights *= scale[n_capped]
    return np.minimum(weights, 1.0, out=weights)


def _draw_nonzeros(frequency: np.ndarray, n_rows: int, rng: np.random.Generator):
    """Positions (row, rank) of independent Bernoulli(``frequency[rank]``) entries of an n_rows table.

    ``frequency`` is non-increasing, so the frequent ranks drawn as blocks are its first ones.
    """
    n_block = int(np.count_nonzero(frequency > _DRAWN_AS_BLOCK_ABOVE))
    rows_parts, ranks_parts = [], []
    if n_block:
        threshold = frequency[:n_block].astype(np.float32)
        step = rows_per_chunk(n_block, np.dtype(np.float32).itemsize)
        for start in range(0, n_rows, step):
            block = rng.random((min(step, n_rows - start), n_block), dtype=np.float32) < threshold
            block_rows, block_ranks = np.nonzero(block)
            rows_parts.append(block_rows + start)
            ranks_parts.append(block_ranks)
    # A column's nonzero count is binomial; given the count its rows are a uniform subset.
    counts = rng.binomial(n_rows, frequency[n_block:])
    present = np.flatnonzero(counts)
    ranks = np.repeat(present + n_block, counts[present])
    del counts, present
    rows_parts.append(_distinct_rows(ranks, n_rows, rng))
    ranks_parts.append(ranks)
    return (np.concatenate(rows_parts).astype(np.int64, copy=False),
            np.concatenate(ranks_parts).astype(np.int64, copy=False))


def _distinct_rows(columns: np.ndarray, n_rows: int, rng: np.random.Generator) -> np.ndarray:
    """A uniform row for each entry of ``columns`` (grouped by column), distinct within each column.

    Rows are drawn with replacement and repeats redrawn until none is left. The rule treats all rows
    alike, so each column's rows are a uniform random subset of its size (which must be <= n_rows).
    """
    rows = rng.integers(0, n_rows, columns.size)
    pending = np.arange(columns.size)  # entries of the columns that may still hold a repeated row
    while pending.size:
        keys = columns[pending] * n_rows + rows[pending]
        order = np.argsort(keys, kind="stable")
        repeated = order[1:][keys[order[1:]] == keys[order[:-1]]]
        if not repeated.size:
            break
        redraw = pending[repeated]
        rows[redraw] = rng.integers(0, n_rows, redraw.size)
        pending = pending[np.isin(columns[pending], columns[redraw])]
    return rows


def _class_weights(n_classes: int, n_informative: int, rng: np.random.Generator) -> np.ndarray:
    """Standard normal weights (n_classes, n_informative), informative feature j weighing most for class
    j % n_classes (each column's largest weight swapped into that row)."""
    weights = rng.standard_normal((n_classes, n_informative))
    columns = np.arange(n_informative)
    favoured = columns % n_classes
    largest = np.argmax(weights, axis=0)
    top = weights[largest, columns]
    weights[largest, columns] = weights[favoured, columns]
    weights[favoured, columns] = top
    return weights


def _balanced_argmax(scores: np.ndarray) -> np.ndarray:
    """Labels (n_samples,) int64: the argmax over classes of ``scores`` (n_samples, n_classes) minus class
    offsets that make the classes about equally frequent.

    The offsets are the intercepts of the linear rule: without them a class whose weights happen to be
    large, or whose features are frequent, would take most samples. Each round moves every offset by
    its class's excess share, in units of the scores' spread.
    """
    n_samples, n_classes = scores.shape
    offsets = np.zeros(n_classes)
    step = float(scores.std()) or 1.0
    for _ in range(_BALANCING_ROUNDS):
        labels = np.argmax(scores - offsets, axis=1)
        offsets += step * (np.bincount(labels, minlength=n_classes) / n_samples - 1 / n_classes)
    return np.argmax(scores - offsets, axis=1).astype(np.int64)
