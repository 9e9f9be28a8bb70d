"""Tests of wasap.data.sparse_synthetic.make_sparse_classification: format invariants, density, power-law
feature frequencies, labels a linear model learns, reproducibility, memory and argument checks."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse

from wasap.data import DataError, make_sparse_classification
from wasap.data import sparse_synthetic


def column_counts(X: scipy.sparse.csr_matrix) -> np.ndarray:
    """How many samples hold each feature."""
    return np.bincount(X.indices, minlength=X.shape[1])


@pytest.mark.parametrize("kwargs", [
    dict(n_samples=300, n_features=2000),
    dict(n_samples=500, n_features=800, density=0.05, n_classes=4, n_informative=8, exponent=1.5),
    dict(n_samples=50, n_features=100, density=0.2, n_informative=5, exponent=0.0),
    dict(n_samples=7, n_features=3, density=1.0, n_informative=2),
    dict(n_samples=1, n_features=50, density=0.1, n_informative=2),
])
def test_format_invariants(kwargs):
    X, y = make_sparse_classification(**kwargs)
    n, d = kwargs["n_samples"], kwargs["n_features"]
    assert type(X) is scipy.sparse.csr_matrix
    assert X.shape == (n, d)
    assert X.dtype == np.float32
    assert X.indices.dtype == np.int32 and X.indptr.dtype == np.int32
    assert X.indptr[0] == 0 and X.indptr[-1] == X.nnz == X.data.size == X.indices.size
    assert (np.diff(X.indptr) >= 0).all()
    assert ((X.indices >= 0) & (X.indices < d)).all()
    # Sorted within each row, hence no duplicates: the column index grows strictly along a row.
    row_of_entry = np.repeat(np.arange(n), np.diff(X.indptr))
    same_row = row_of_entry[1:] == row_of_entry[:-1]
    assert (np.diff(X.indices.astype(np.int64))[same_row] > 0).all()
    merged = X.copy()
    merged.sum_duplicates()
    assert merged.nnz == X.nnz
    assert np.isfinite(X.data).all() and (X.data > 0).all()  # no explicit zeros, positive as counts
    assert y.dtype == np.int64 and y.shape == (n,)
    assert ((y >= 0) & (y < kwargs.get("n_classes", 2))).all()


def test_single_feature_cannot_signal_two_classes():
    with pytest.raises(DataError, match="n_informative=1 must lie between n_classes=2"):
        make_sparse_classification(1, 1, n_informative=1, density=0.5)


def test_full_density_is_every_entry():
    X, _ = make_sparse_classification(7, 3, density=1.0, n_informative=2)
    assert X.nnz == 21


@pytest.mark.parametrize("density, exponent", [(0.01, 1.0), (0.002, 1.0), (0.01, 0.0), (0.05, 2.0)])
def test_density_matches_target(density, exponent):
    n, d = 2000, 5000
    X, _ = make_sparse_classification(n, d, density=density, exponent=exponent, seed=3)
    measured = X.nnz / (n * d)
    # nnz is a sum of independent Bernoulli entries: its relative spread is below 1 / sqrt(expected nnz)
    # (0.7% at the smallest expected nnz here), so 3% is a loose bound.
    assert measured == pytest.approx(density, rel=0.03), f"density {measured:.5f} for a target of {density}"


@pytest.mark.parametrize("exponent", [0.8, 1.0, 1.5])
def test_feature_frequencies_follow_the_power_law(exponent):
    n, d = 5000, 10000
    X, _ = make_sparse_classification(n, d, density=0.01, exponent=exponent, seed=1)
    counts = np.sort(column_counts(X))[::-1]
    # Ranks past those held by nearly every sample (capped at frequency 1) and before the tail where
    # counts are a few units; sorting the observed counts keeps the order statistics close to the ranks.
    ranks = np.arange(1, d + 1)
    fitted = (counts < 0.5 * n) & (counts >= 30) & (ranks <= 1000)
    assert fitted.sum() >= 50
    slope = np.polyfit(np.log(ranks[fitted]), np.log(counts[fitted]), 1)[0]
    assert slope == pytest.approx(-exponent, abs=0.1), f"log-log slope {slope:.3f} for exponent {exponent}"


def test_frequent_features_are_spread_over_the_columns():
    n, d = 2000, 10000
    X, _ = make_sparse_classification(n, d, density=0.01, seed=2)
    top = np.argsort(column_counts(X))[::-1][:100]
    # Columns in random rank order: about a tenth of the top 100 fall in each tenth of the columns.
    assert np.count_nonzero(top < d // 10) < 30
    assert np.count_nonzero(top >= d - d // 10) < 30


@pytest.mark.parametrize("n_classes", [2, 3, 5, 10])
def test_every_class_occurs_about_equally_often(n_classes):
    n = 3000
    _, y = make_sparse_classification(n, 5000, density=0.005, n_classes=n_classes, seed=4)
    shares = np.bincount(y, minlength=n_classes) / n
    assert len(shares) == n_classes
    assert np.abs(shares * n_classes - 1).max() < 0.2, f"class shares {np.round(shares, 3)}"


def test_same_seed_same_data_other_seed_other_data():
    def make(seed):
        return make_sparse_classification(400, 3000, density=0.01, n_classes=3, seed=seed)
    (X1, y1), (X2, y2), (X3, y3) = make(7), make(7), make(8)
    for a, b in ((X1.indptr, X2.indptr), (X1.indices, X2.indices), (X1.data, X2.data), (y1, y2)):
        np.testing.assert_array_equal(a, b)
    assert X1.nnz != X3.nnz or not np.array_equal(X1.indices, X3.indices)
    assert not np.array_equal(y1, y3)


def test_logistic_regression_learns_the_labels():
    from sklearn.linear_model import LogisticRegression

    X, y = make_sparse_classification(1000, 20000, seed=0)
    n_train = 700  # rows are independent draws, so the last 300 are a fair held-out split
    model = LogisticRegression(max_iter=1000).fit(X[:n_train], y[:n_train])
    accuracy = model.score(X[n_train:], y[n_train:])
    majority = np.bincount(y[n_train:]).max() / (len(y) - n_train)
    assert accuracy > majority + 0.2, f"held-out accuracy {accuracy:.3f}, majority class {majority:.3f}"


def test_million_features_build_in_memory_far_below_dense():
    n, d = 200, 1_000_000
    make_sparse_classification(n, d, density=1e-4)  # first call: lazy imports are not counted below
    tracemalloc.start()
    try:
        X, _ = make_sparse_classification(n, d, density=1e-4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dense = n * d * np.dtype(np.float32).itemsize
    assert X.nnz == pytest.approx(1e-4 * n * d, rel=0.1)
    assert peak < dense / 20, f"peak {peak / 2 ** 20:.1f} MiB, a dense float32 array {dense / 2 ** 20:.0f} MiB"


def test_distinct_rows_are_distinct_and_uniform():
    rng = np.random.default_rng(0)
    n_rows, per_column, n_columns = 10, 9, 2000
    columns = np.repeat(np.arange(n_columns), per_column)
    rows = sparse_synthetic._distinct_rows(columns, n_rows, rng)
    table = np.zeros((n_columns, n_rows), dtype=np.int64)
    np.add.at(table, (columns, rows), 1)
    assert (table <= 1).all()
    # Each row is in a column with probability 0.9: 1800 of 2000 columns, binomial spread about 13.
    assert np.abs(table.sum(axis=0) - 1800).max() < 70


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_samples=0), "n_samples"),
    (dict(n_samples=2.5), "n_samples"),
    (dict(n_features=0), "n_features"),
    (dict(n_features=True), "n_features"),
    (dict(density=0.0), "density"),
    (dict(density=1.5), "density"),
    (dict(density=float("nan")), "density"),
    (dict(density="0.1"), "density"),
    (dict(n_informative=0), "n_informative"),
    (dict(n_informative=101), "n_informative"),
    (dict(n_classes=1), "n_classes"),
    (dict(n_classes=30, n_informative=20), "n_informative"),
    (dict(exponent=-1.0), "exponent"),
    (dict(exponent=float("inf")), "exponent"),
    (dict(seed=-1), "seed"),
    (dict(seed=None), "seed"),
])
def test_bad_arguments_raise_data_error_naming_them(kwargs, name):
    arguments = {"n_samples": 10, "n_features": 100, **kwargs}
    with pytest.raises(DataError, match=name):
        make_sparse_classification(arguments.pop("n_samples"), arguments.pop("n_features"), **arguments)
