"""Topology operations against dense numpy and scipy oracles: the CSR structure, Erdős–Rényi init, SET,
Importance Pruning, averaging.

Layers are compared as dense matrices (and dense momentum matrices) built here from the CSR arrays, so
that "survivors keep value and momentum" is checked by (row, col) position, whatever the order.
"""

import math
import time
import tracemalloc
import types
import warnings

import numpy as np
import pytest
import scipy.sparse

from wasap import topology
from wasap.topology import DensityCapWarning


def _dense(indptr, indices, values, n_out):
    n_in = indptr.shape[0] - 1
    out = np.zeros((n_in, n_out), dtype=np.float64)
    rows = np.repeat(np.arange(n_in), np.diff(indptr))
    out[rows, indices] = values
    return out


def _positions(indptr, indices):
    rows = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))
    return rows, np.asarray(indices, dtype=np.int64)


def _check_csr(indptr, indices, n_in, n_out):
    assert indptr.shape == (n_in + 1,) and indptr[0] == 0 and indptr[-1] == indices.shape[0]
    assert (np.diff(indptr) >= 0).all()
    assert ((indices >= 0) & (indices < n_out)).all()
    for i in range(n_in):
        row = indices[indptr[i]:indptr[i + 1]]
        assert (np.diff(row) > 0).all(), f"row {i} not strictly ascending (duplicate or unsorted)"


def _csr_from_mask(mask):
    indptr = np.zeros(mask.shape[0] + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(mask.sum(axis=1))
    _, cols = np.nonzero(mask)
    return indptr, cols.astype(np.int32)


# -- the CSR structure ------------------------------------------------------------------------------------


def _column_view_masks():
    rng = np.random.default_rng(123)
    random = rng.random((13, 9)) < 0.35
    random[4] = False       # an empty row
    random[:, 6] = False    # an empty column
    staircase = np.arange(11)[None, :] < np.arange(11)[:, None]  # rows of 0..10, columns of 10..0 nonzeros
    return {"random": random, "staircase": staircase[rng.permutation(11)][:, rng.permutation(11)],
            "dense": np.ones((7, 6), dtype=bool)}


COLUMN_VIEW_MASKS = _column_view_masks()


@pytest.mark.parametrize("mask_name", sorted(COLUMN_VIEW_MASKS))
def test_column_view_matches_scipy_tocsc(mask_name):
    mask = COLUMN_VIEW_MASKS[mask_name]
    n_in, n_out = mask.shape
    indptr, indices = _csr_from_mask(mask)
    col_indptr, col_rows, col_perm = topology.column_view(indptr, indices, n_out)
    position = np.arange(indices.shape[0], dtype=np.float64)  # data = own row-order index
    csc = scipy.sparse.csr_matrix((position, indices, indptr), shape=(n_in, n_out)).tocsc()
    csc.sort_indices()
    np.testing.assert_array_equal(col_indptr, csc.indptr)
    np.testing.assert_array_equal(col_rows, csc.indices)
    np.testing.assert_array_equal(col_perm, csc.data.astype(np.int64))
    assert col_perm.dtype == np.int32  # 4 bytes a weight below 2**31 nonzeros


def test_column_view_empty_layer():
    col_indptr, col_rows, col_perm = topology.column_view(np.zeros(4, dtype=np.int64), np.empty(0, dtype=np.int32),
                                                          5)
    np.testing.assert_array_equal(col_indptr, np.zeros(6))
    assert col_rows.shape == (0,) and col_perm.shape == (0,)


@pytest.mark.parametrize("n_old,n_new", [(0, 0), (0, 5), (7, 0), (50, 30), (1, 200)])
def test_merge_sorted_keys(n_old, n_new):
    rng = np.random.default_rng(n_old * 1000 + n_new)
    pool = rng.choice(10 ** 6, size=n_old + n_new, replace=False).astype(np.int64)
    old = np.sort(pool[:n_old])
    new = np.sort(pool[n_old:])
    keys, source = topology.merge_sorted_keys(old, new)
    np.testing.assert_array_equal(keys, np.sort(np.concatenate([old, new])))
    from_old = source >= 0
    np.testing.assert_array_equal(keys[from_old], old[source[from_old]])
    np.testing.assert_array_equal(keys[~from_old], new[-source[~from_old] - 1])
    assert from_old.sum() == n_old


# -- Erdős–Rényi -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_in,n_out,epsilon", [(50, 40, 3), (30, 20, 2.5), (100, 7, 1.3), (4, 4, 2)])
def test_erdos_renyi_nnz_and_structure(n_in, n_out, epsilon):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these asks for more than the layer holds
        indptr, indices, data = topology.erdos_renyi(n_in, n_out, epsilon, np.random.default_rng(0))
    expected = min(n_in * n_out, round(epsilon * (n_in + n_out)))
    assert indices.shape == data.shape == (expected,)
    assert indptr.dtype == np.int64 and indices.dtype == np.int32 and data.dtype == np.float32
    _check_csr(indptr, indices, n_in, n_out)


def test_erdos_renyi_density_cap_warns():
    with pytest.warns(DensityCapWarning):
        indptr, indices, data = topology.erdos_renyi(10, 3, 5, np.random.default_rng(0))
    assert indices.shape == (30,)
    _check_csr(indptr, indices, 10, 3)
    assert (_dense(indptr, indices, np.ones(30), 3) == 1).all()


def test_erdos_renyi_cap_without_warning_when_asked():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, indices, _ = topology.erdos_renyi(10, 3, 5, np.random.default_rng(0), warn=False)
    assert indices.shape == (30,)


def test_erdos_renyi_positions_cover_the_layer():
    """Positions are uniform: over 100 draws of 80 out of 400 positions (expected 20 hits each), every
    position is hit and none absurdly often."""
    hits = np.zeros((20, 20))
    rng = np.random.default_rng(1)
    for _ in range(100):
        indptr, indices, _ = topology.erdos_renyi(20, 20, 2, rng)
        hits += _dense(indptr, indices, np.ones(indices.shape[0]), 20)
    assert hits.sum() == 100 * 80
    assert hits.min() > 3 and hits.max() < 45


@pytest.mark.parametrize("init", ["he-uniform", "he-uniform-sparse", "xavier"])
def test_erdos_renyi_uniform_limits(init):
    n_in, n_out = 300, 200
    _, indices, data = topology.erdos_renyi(n_in, n_out, 20, np.random.default_rng(2), init=init)
    limit = {"he-uniform": math.sqrt(6.0 / n_in), "xavier": math.sqrt(6.0 / (n_in + n_out)),
             # the fan-in a neuron has on average: 20 * 500 / 200 = 50 of its 300 possible inputs
             "he-uniform-sparse": math.sqrt(6.0 / (indices.shape[0] / n_out))}[init]
    assert np.abs(data).max() <= limit
    assert np.abs(data).max() > 0.98 * limit  # the whole range is used
    assert abs(data.mean()) < 0.02 * limit
    assert np.std(data) == pytest.approx(limit / math.sqrt(3), rel=0.03)


def test_erdos_renyi_normal_init():
    _, _, data = topology.erdos_renyi(1000, 1000, 20, np.random.default_rng(3), init="normal")
    assert data.shape == (40000,)
    assert abs(data.mean()) < 0.003
    assert np.std(data) == pytest.approx(0.1, rel=0.03)


def test_erdos_renyi_same_seed_same_layer():
    first = topology.erdos_renyi(60, 50, 3, np.random.default_rng(9))
    again = topology.erdos_renyi(60, 50, 3, np.random.default_rng(9))
    other = topology.erdos_renyi(60, 50, 3, np.random.default_rng(10))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])


def test_erdos_renyi_huge_layer_is_fast_and_small():
    n = 200_000
    started = time.perf_counter()
    indptr, indices, data = topology.erdos_renyi(n, n, 1, np.random.default_rng(4))
    elapsed = time.perf_counter() - started
    assert indices.shape == (2 * n,)
    assert elapsed < 2.0, f"{elapsed:.2f} s for a 200000 x 200000 layer"
    keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr)) * n + indices
    assert (np.diff(keys) > 0).all()  # sorted, no duplicates
    del indptr, indices, data, keys
    tracemalloc.start()
    try:
        topology.erdos_renyi(n, n, 1, np.random.default_rng(5))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2 ** 20, f"peak {peak / 2 ** 20:.1f} MiB (a dense layout would be 40 G entries)"


# -- SET evolution ---------------------------------------------------------------------------------------


def _distinct_layer(n_in, n_out, density, seed):
    """A layer whose weights have distinct magnitudes and random signs, with nonzero distinct momentum."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_in, n_out)) < density
    indptr, indices = _csr_from_mask(mask)
    nnz = indices.shape[0]
    magnitudes = (rng.permutation(nnz) + 1).astype(np.float32) * np.float32(1e-3)
    signs = np.where(rng.random(nnz) < 0.4, -1, 1).astype(np.float32)
    velocity = ((rng.permutation(nnz) + 1) * 1e-4).astype(np.float32)
    return indptr, indices, magnitudes * signs, velocity


def _expected_survivors(data, zeta):
    """Per sign, remove floor(zeta * count) weights closest to zero; written with full sorts."""
    survive = np.ones(data.shape[0], dtype=bool)
    for sign in (1, -1):
        where = np.flatnonzero(np.sign(data) == sign)
        count = math.floor(zeta * where.shape[0])
        closest = where[np.argsort(np.abs(data[where]))[:count]]
        survive[closest] = False
    return survive


@pytest.mark.parametrize("n_in,n_out,density,zeta", [(30, 20, 0.25, 0.3), (10, 10, 0.9, 0.3), (40, 25, 0.1, 0.5),
                                                     (12, 9, 0.5, 1.0)])
def test_set_evolution(n_in, n_out, density, zeta):
    indptr, indices, data, velocity = _distinct_layer(n_in, n_out, density, seed=n_in)
    inputs = [a.copy() for a in (indptr, indices, data, velocity)]
    new_indptr, new_indices, new_data, new_velocity = topology.set_evolution(
        indptr, indices, data, velocity, n_out, zeta, np.random.default_rng(0))
    for before, after in zip(inputs, (indptr, indices, data, velocity)):
        np.testing.assert_array_equal(before, after)  # inputs untouched
    nnz = indices.shape[0]
    assert new_indices.shape == new_data.shape == new_velocity.shape == (nnz,)
    _check_csr(new_indptr, new_indices, n_in, n_out)

    survive = _expected_survivors(data, zeta)
    n_pos, n_neg = (data > 0).sum(), (data < 0).sum()
    assert (~survive).sum() == math.floor(zeta * n_pos) + math.floor(zeta * n_neg)

    old_w = _dense(indptr, indices, data, n_out)
    old_v = _dense(indptr, indices, velocity, n_out)
    new_w = _dense(new_indptr, new_indices, new_data, n_out)
    new_v = _dense(new_indptr, new_indices, new_velocity, n_out)
    new_present = _dense(new_indptr, new_indices, np.ones(nnz), n_out) == 1
    rows, cols = _positions(indptr, indices)

    # Survivors keep their position, value and momentum.
    sr, sc = rows[survive], cols[survive]
    assert new_present[sr, sc].all()
    np.testing.assert_array_equal(new_w[sr, sc], old_w[sr, sc])
    np.testing.assert_array_equal(new_v[sr, sc], old_v[sr, sc])
    # Everything else is regrown: zero momentum (every old momentum was nonzero, so this also counts them),
    # fresh He-uniform values; removed positions may be drawn again, but then as new connections.
    regrown = new_present.copy()
    regrown[sr, sc] = False
    assert regrown.sum() == (~survive).sum()
    assert (new_v[regrown] == 0).all()
    assert (np.abs(new_w[regrown]) <= math.sqrt(6.0 / n_in)).all()
    assert (new_velocity != 0).sum() == survive.sum()


def test_set_evolution_removes_the_ones_closest_to_zero_not_the_most_negative():
    # One row, eight weights: positives 0.1 .. 0.4, negatives -0.1 .. -0.4; zeta 0.5 removes +-0.1, +-0.2.
    data = np.array([0.3, -0.1, 0.1, -0.4, 0.4, -0.2, 0.2, -0.3], dtype=np.float32)
    indptr = np.array([0, 8], dtype=np.int64)
    indices = np.arange(8, dtype=np.int32)
    velocity = np.arange(1, 9, dtype=np.float32)
    _, new_indices, new_data, new_velocity = topology.set_evolution(
        indptr, indices, data, velocity, 100, 0.5, np.random.default_rng(0))
    kept = {int(c): (float(w), float(v)) for c, w, v in zip(new_indices, new_data, new_velocity) if v != 0}
    assert kept == {0: (pytest.approx(0.3), 1.0), 3: (pytest.approx(-0.4), 4.0), 4: (pytest.approx(0.4), 5.0),
                    7: (pytest.approx(-0.3), 8.0)}


def test_removal_mask_ties_and_zeros():
    # Three positives tie at 0.1: zeta 0.5 of four positives removes two of them, and no more;
    # exact zeros always go; of the negatives (-0.5, -0.5) zeta 0.5 removes exactly one.
    data = np.array([0.1, 0.0, 0.1, -0.5, 0.2, 0.1, -0.5, 0.0], dtype=np.float32)
    remove = topology.magnitude_removal_mask(data, 0.5)
    assert remove[[1, 7]].all()
    assert remove[[0, 2, 5]].sum() == 2 and not remove[4]
    assert remove[[3, 6]].sum() == 1
    assert remove.sum() == 5
    assert not topology.magnitude_removal_mask(data, 0.0)[[0, 2, 3, 4, 5, 6]].any()
    assert topology.magnitude_removal_mask(data, 1.0).all()


def test_set_evolution_regrows_sparse_init_values_within_the_sparse_limit():
    indptr, indices, data, velocity = _distinct_layer(40, 30, 0.2, seed=3)
    new = topology.set_evolution(indptr, indices, data, velocity, 30, 0.3, np.random.default_rng(0),
                                 init="he-uniform-sparse")
    regrown = new[3] == 0  # every old momentum was nonzero
    limit = math.sqrt(6.0 / (indices.shape[0] / 30))
    assert regrown.sum() > 0 and np.abs(new[2][regrown]).max() <= limit
    assert np.abs(new[2][regrown]).max() > 0.8 * limit  # well above the dense layout's sqrt(6 / 40)


def test_set_evolution_dense_layer_unchanged():
    mask = np.ones((5, 4), dtype=bool)
    indptr, indices = _csr_from_mask(mask)
    data = np.linspace(-1, 1, 20).astype(np.float32)
    velocity = np.linspace(0.1, 2, 20).astype(np.float32)
    out = topology.set_evolution(indptr, indices, data, velocity, 4, 0.3, np.random.default_rng(0))
    for before, after in zip((indptr, indices, data, velocity), out):
        np.testing.assert_array_equal(before, after)


def test_set_evolution_is_seeded():
    layer = _distinct_layer(30, 20, 0.25, seed=1)
    a = topology.set_evolution(*layer, 20, 0.3, np.random.default_rng(7))
    b = topology.set_evolution(*layer, 20, 0.3, np.random.default_rng(7))
    c = topology.set_evolution(*layer, 20, 0.3, np.random.default_rng(8))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])


# -- Importance Pruning ----------------------------------------------------------------------------------


@pytest.mark.parametrize("percentile", [0, 20, 50, 90])
def test_importance_pruning(percentile):
    n_in, n_out = 25, 15
    indptr, indices, data, velocity = _distinct_layer(n_in, n_out, 0.3, seed=3)
    rng = np.random.default_rng(4)
    # Give one column no connections (importance 0) and make importances clearly distinct otherwise.
    keep = indices != 5
    indptr, indices = _csr_from_mask(_dense(indptr, indices, keep.astype(float), n_out) == 1)
    data, velocity = data[keep], velocity[keep]
    data = data * rng.uniform(0.5, 2.0, data.shape[0]).astype(np.float32)
    W = _dense(indptr, indices, data, n_out)
    V = _dense(indptr, indices, velocity, n_out)
    importance = np.abs(W).sum(axis=0)                       # per column: a neuron's incoming weights
    pruned = importance <= np.percentile(importance, percentile)
    assert pruned[5]

    new_indptr, new_indices, new_data, new_velocity, neurons = topology.importance_pruning(
        indptr, indices, data, velocity, n_out, percentile)
    _check_csr(new_indptr, new_indices, n_in, n_out)
    np.testing.assert_array_equal(np.sort(neurons), np.flatnonzero(pruned))
    expected_W, expected_V = W.copy(), V.copy()
    expected_W[:, pruned] = 0
    expected_V[:, pruned] = 0
    np.testing.assert_array_equal(_dense(new_indptr, new_indices, new_data, n_out), expected_W)
    np.testing.assert_array_equal(_dense(new_indptr, new_indices, new_velocity, n_out), expected_V)
    assert new_indices.shape[0] == np.count_nonzero(expected_W)


@pytest.mark.parametrize("enabled,start,every,expected", [
    (True, 3, 2, [4, 6, 8, 10]),     # from ip_start on, on the multiples of ip_every
    (True, 1, 1, list(range(1, 11))),
    (True, 4, 3, [6, 9]),
    (False, 1, 1, []),
])
def test_importance_pruning_is_due_from_ip_start_every_ip_every_epochs(enabled, start, every, expected):
    config = types.SimpleNamespace(importance_pruning=enabled, ip_start=start, ip_every=every)
    assert [epoch for epoch in range(1, 11) if topology.importance_pruning_due(config, epoch)] == expected


# -- averaging, pruning to target, remapping ---------------------------------------------------------


def test_keep_largest():
    rng = np.random.default_rng(5)
    keys = np.sort(rng.choice(1000, size=60, replace=False)).astype(np.int64)
    values = rng.normal(size=60)
    for count in (0, 1, 17, 60, 80):
        kept_keys, kept_values = topology.keep_largest(keys, values, count)
        top = np.argsort(-np.abs(values))[:count]
        expected = np.sort(keys[top])
        np.testing.assert_array_equal(kept_keys, expected)
        np.testing.assert_array_equal(kept_values, values[np.searchsorted(keys, expected)])


def test_keep_largest_ties_go_to_lower_keys():
    keys = np.array([2, 5, 7, 9], dtype=np.int64)
    values = np.array([1.0, -1.0, 0.5, 1.0])
    kept_keys, kept_values = topology.keep_largest(keys, values, 2)
    np.testing.assert_array_equal(kept_keys, [2, 5])
    np.testing.assert_array_equal(kept_values, [1.0, -1.0])


def test_average_layers_then_keep_largest_matches_dense():
    n_in, n_out, replicas = 12, 10, 3
    rng = np.random.default_rng(6)
    dense_sum = np.zeros((n_in, n_out))
    key_sets, value_sets = [], []
    union = np.zeros((n_in, n_out), dtype=bool)
    for _ in range(replicas):
        mask = rng.random((n_in, n_out)) < 0.3
        values = np.where(mask, rng.normal(size=(n_in, n_out)), 0.0)
        dense_sum += values
        rows, cols = np.nonzero(mask)
        key_sets.append((rows * n_out + cols).astype(np.int64))
        value_sets.append(values[rows, cols].astype(np.float32))
        union |= mask
    dense_avg = dense_sum / replicas
    keys, values = topology.average_layers(key_sets, value_sets)
    rows, cols = np.nonzero(union)
    np.testing.assert_array_equal(keys, rows * n_out + cols)
    np.testing.assert_allclose(values, dense_avg[rows, cols], rtol=1e-6, atol=1e-7)

    target = int(np.mean([k.shape[0] for k in key_sets]))
    kept_keys, kept_values = topology.keep_largest(keys, values, target)
    flat = np.where(union, np.abs(dense_avg), -1.0).ravel()
    expected = np.sort(np.argsort(-flat, kind="stable")[:target])
    np.testing.assert_array_equal(kept_keys, expected)
    np.testing.assert_allclose(kept_values, dense_avg.ravel()[expected], rtol=1e-6, atol=1e-7)


def test_remap():
    rng = np.random.default_rng(7)
    old = np.sort(rng.choice(500, size=80, replace=False)).astype(np.int64)
    new = np.sort(np.concatenate([rng.choice(old, size=50, replace=False),
                                  rng.choice(np.setdiff1d(np.arange(500, 700), old), size=30, replace=False)]))
    where = topology.remap(old, new)
    position = {int(k): i for i, k in enumerate(new)}
    np.testing.assert_array_equal(where, [position.get(int(k), -1) for k in old])
    assert (topology.remap(old, np.empty(0, dtype=np.int64)) == -1).all()
    np.testing.assert_array_equal(topology.remap(np.empty(0, dtype=np.int64), new), np.empty(0))


def test_sample_empty_keys():
    rng = np.random.default_rng(8)
    occupied = np.sort(rng.choice(200, size=150, replace=False)).astype(np.int64)
    keys = topology.sample_empty_keys(50, 10, 20, occupied, rng)
    np.testing.assert_array_equal(keys, np.setdiff1d(np.arange(200), occupied))  # all that is left
    keys = topology.sample_empty_keys(20, 10, 20, occupied, rng)
    assert (np.diff(keys) > 0).all() and not np.isin(keys, occupied).any()
    with pytest.raises(ValueError):
        topology.sample_empty_keys(51, 10, 20, occupied, rng)
