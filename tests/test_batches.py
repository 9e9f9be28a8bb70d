"""Batches in the kernels' layout: the gathered block against numpy's take-and-transpose, aligned buffers."""

import numba
import numpy as np
import pytest

from wasap.batches import WIDE_INPUT, aligned_empty, gather_transposed
from wasap.threads import get_threads, set_threads


@pytest.mark.parametrize("shape", [(3, 16), (1000, 128), (7,), 5])
def test_aligned_empty_starts_on_64_bytes_with_the_shape_asked_for(shape):
    out = aligned_empty(shape)
    assert out.ctypes.data % 64 == 0
    assert out.shape == ((shape,) if isinstance(shape, int) else shape)
    assert out.dtype == np.float32 and out.flags.c_contiguous


@pytest.mark.parametrize("n_features,batch", [(4096, 128), (5000, 13), (4100, 1), (4097, 33)])
def test_wide_gather_equals_numpy_take_and_transpose(n_features, batch):
    assert n_features >= WIDE_INPUT  # the kernel's path, not numpy's
    rng = np.random.default_rng(n_features + batch)
    X = rng.standard_normal((300, n_features), dtype=np.float32)
    rows = rng.choice(300, size=batch, replace=False)
    expected = np.ascontiguousarray(X[rows].T)
    np.testing.assert_array_equal(gather_transposed(X, rows), expected)
    out = aligned_empty((n_features, batch))
    assert gather_transposed(X, rows, out) is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_features,batch", [(784, 128), (13, 37), (50, 1)])
def test_narrow_gather_equals_numpy_on_one_and_two_threads(n_features, batch, threads):
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"numba was started with {numba.config.NUMBA_NUM_THREADS} thread(s)")
    rng = np.random.default_rng(n_features * batch)
    X = rng.standard_normal((400, n_features), dtype=np.float32)
    rows = rng.choice(400, size=batch, replace=False)
    before = get_threads()
    set_threads(threads)  # two threads take the numba kernel, one numpy's copy
    try:
        out = aligned_empty((n_features, batch))
        assert gather_transposed(X, rows, out) is out
        np.testing.assert_array_equal(out, X[rows].T)
        np.testing.assert_array_equal(gather_transposed(X, slice(3, 3 + batch)), X[3:3 + batch].T)
    finally:
        set_threads(before)


@pytest.mark.parametrize("n_features", [784, 4096])
def test_gather_of_a_slice_equals_the_rows_it_names(n_features):
    X = np.random.default_rng(1).standard_normal((50, n_features), dtype=np.float32)
    np.testing.assert_array_equal(gather_transposed(X, slice(7, 23)), np.ascontiguousarray(X[7:23].T))
    out = aligned_empty((n_features, 16))
    assert gather_transposed(X, slice(7, 23), out) is out
    np.testing.assert_array_equal(out, X[7:23].T)
