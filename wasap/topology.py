"""Sparse topologies: their CSR structure, Erdős–Rényi initialisation, SET evolution, Importance Pruning.

Everything here is O(nnz) in time and memory: a connection is identified by its
*key* ``row * n_out + col`` (int64, so layers beyond 2**31 positions work), and
no structure of size ``n_in x n_out`` is ever built. Functions take and return
plain arrays in row order (CSR: ``indptr``, ``indices``, values), which is also
ascending key order, and never modify their inputs; nothing here knows about
processes or shared memory.

The CSR structure: keys to and from CSR (:func:`keys_from_csr`, :func:`csr_from_keys`),
the column view the forward kernel walks (:func:`column_view`), and the merge of two
sorted key sets (:func:`merge_sorted_keys`).
"""

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

if TYPE_CHECKING:
    from .config import TrainConfig

INIT_SCHEMES = ("he-uniform", "he-uniform-sparse", "xavier", "normal")

#: Above this density, empty positions are enumerated instead of drawn by
#: rejection: the complement then has at most as many keys as the layer.
_DENSE_ENOUGH_TO_ENUMERATE = 0.5


class DensityCapWarning(UserWarning):
    """epsilon asked for more connections than a layer can hold."""


def erdos_renyi_nnz(n_in, n_out, epsilon, *, warn=True):
    """Number of connections of an Erdős–Rényi sparse layer (SET).

    The density is ``epsilon * (n_in + n_out) / (n_in * n_out)``, capped at 1.

    Parameters
    ----------
    n_in, n_out : int
    epsilon : float
    warn : bool
        Emit a :class:`DensityCapWarning` when the cap applies.

    Returns
    -------
    int
        Connections, at least 1 and at most ``n_in * n_out``.
    """
    total = n_in * n_out
    wanted = epsilon * (n_in + n_out)
    if wanted >= total:
        if warn and wanted > total:
            warnings.warn(
                f"epsilon={epsilon} asks for {wanted:.0f} connections in a {n_in}x{n_out} layer that holds "
                f"{total}: the layer is dense (density capped at 1). Lower epsilon below "
                f"{total / (n_in + n_out):.3g} to keep it sparse.",
                DensityCapWarning,
                stacklevel=3,
            )
        return total
    return max(1, int(round(wanted)))


def initial_values(count, n_in, n_out, scheme, rng, *, nnz=None):
    """Draw initial weight values.

    Parameters
    ----------
    count : int
    n_in, n_out : int
        Fan-in and fan-out of the dense layout.
    scheme : {"he-uniform", "he-uniform-sparse", "xavier", "normal"}
        He-uniform: U(-sqrt(6/n_in), sqrt(6/n_in)); He-uniform-sparse: the
        same with the fan-in a neuron has on average in the sparse layer,
        ``nnz / n_out``, instead of ``n_in`` (Evci et al. 2022, "Gradient flow
        in sparse neural networks"): with ``n_in`` a layer of 5M inputs and
        10 connections a neuron shrinks its signal by ``sqrt(5M / 10)``, about
        700-fold, and a deep stack of them outputs zeros; Xavier (Glorot) uniform:
        U(-sqrt(6/(n_in+n_out)), ...); normal: N(0, 0.1).
    rng : numpy.random.Generator
    nnz : int, optional
        Connections of the layer; needed by he-uniform-sparse.

    Returns
    -------
    (count,) float32
    """
    if scheme == "he-uniform":
        limit = math.sqrt(6.0 / n_in)
    elif scheme == "he-uniform-sparse":
        if nnz is None:
            raise ValueError("he-uniform-sparse needs the layer's nnz.")
        limit = math.sqrt(6.0 * n_out / max(nnz, 1))
    elif scheme == "xavier":
        limit = math.sqrt(6.0 / (n_in + n_out))
    elif scheme == "normal":
        return (rng.standard_normal(count, dtype=np.float32) * np.float32(0.1)).astype(np.float32)
    else:
        raise ValueError(f"Unknown init {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}.")
    values = rng.random(count, dtype=np.float32)
    values *= np.float32(2.0 * limit)
    values -= np.float32(limit)
    return values


def sample_empty_keys(count, n_in, n_out, occupied, rng):
    """Draw ``count`` distinct positions, uniformly among those not occupied.

    Parameters
    ----------
    count : int
    n_in, n_out : int
    occupied : (m,) int64, sorted
        Keys already taken.
    rng : numpy.random.Generator

    Returns
    -------
    (count,) int64, sorted
    """
    return _sample_free_keys(count, n_in, n_out, occupied.shape[0], lambda keys: _contains(occupied, keys), rng)


def _sample_free_keys(count, n_in, n_out, n_occupied, is_occupied, rng):
    """:func:`sample_empty_keys` with occupancy given as a test: ``is_occupied(keys) -> (len(keys),) bool``."""
    total = n_in * n_out
    free = total - n_occupied
    if count > free:
        raise ValueError(f"cannot place {count} connections: only {free} empty positions in a {n_in}x{n_out} layer.")
    if count == 0:
        return np.empty(0, dtype=np.int64)
    if n_occupied + count > _DENSE_ENOUGH_TO_ENUMERATE * total:
        # Nearly full: rejection would spin; the complement is O(nnz) here.
        every = np.arange(total, dtype=np.int64)
        empty = every[~is_occupied(every)]
        return np.sort(rng.choice(empty, size=count, replace=False))
    chosen = np.empty(0, dtype=np.int64)
    while chosen.shape[0] < count:
        missing = count - chosen.shape[0]
        # Oversample so that one round nearly always suffices.
        draw = rng.integers(0, total, size=int(missing * 1.1) + 16, dtype=np.int64)
        # sort + neighbour test: np.unique is many times slower on large int arrays
        draw.sort()
        draw = draw[np.concatenate(([True], draw[1:] != draw[:-1]))]
        draw = draw[~is_occupied(draw)]
        draw = draw[~_contains(chosen, draw)]
        if draw.shape[0] > missing:
            # Dropping a uniform random subset of the surplus keeps a uniform random subset, in order
            # (choosing the keepers instead would need a sort of tens of millions of keys again).
            surplus = np.ones(draw.shape[0], dtype=bool)
            surplus[rng.choice(draw.shape[0], size=draw.shape[0] - missing, replace=False)] = False
            draw = draw[surplus]
        chosen = merge_sorted_keys(chosen, draw)[0]
    return chosen


def _locate(sorted_keys, queries):
    """Binary search: the position of each query in ``sorted_keys`` and whether it is there."""
    if sorted_keys.shape[0] == 0:
        return np.zeros(queries.shape[0], dtype=np.int64), np.zeros(queries.shape[0], dtype=bool)
    where = np.searchsorted(sorted_keys, queries)
    where[where == sorted_keys.shape[0]] = 0
    return where, sorted_keys[where] == queries


def _contains(sorted_keys, queries):
    """Boolean mask: which ``queries`` are in ``sorted_keys``."""
    return _locate(sorted_keys, queries)[1]


def keys_from_csr(indptr, indices, n_out):
    """Keys ``row * n_out + col`` of a CSR layer, ascending.

    Parameters
    ----------
    indptr : (n_in + 1,) int64
    indices : (nnz,) int32
    n_out : int

    Returns
    -------
    (nnz,) int64
    """
    rows = np.repeat(np.arange(indptr.shape[0] - 1, dtype=np.int64), np.diff(indptr))
    return rows * np.int64(n_out) + indices.astype(np.int64)


def csr_from_keys(keys, n_in, n_out):
    """CSR structure of ascending keys.

    Parameters
    ----------
    keys : (nnz,) int64, sorted
    n_in, n_out : int

    Returns
    -------
    indptr : (n_in + 1,) int64
    indices : (nnz,) int32
    """
    rows = keys // np.int64(n_out)
    indices = (keys - rows * np.int64(n_out)).astype(np.int32)
    indptr = np.zeros(n_in + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_in), out=indptr[1:])
    return indptr, indices


def column_view(indptr, indices, n_out):
    """Counting-sort the row-ordered nonzeros by column, O(nnz + n).

    Parameters
    ----------
    indptr : (n_in + 1,) int64
    indices : (nnz,) int32
    n_out : int

    Returns
    -------
    col_indptr : (n_out + 1,) int64
    col_rows : (nnz,) int32
        Row of each nonzero in column order (rows ascending within a column).
    col_perm : (nnz,) int32, or int64 from 2**31 nonzeros on
        Index into the row-ordered arrays of each nonzero in column order. int32 saves
        4 of the 24 bytes a weight would take (``tools/scale.py --rows 10M --recipe
        width-aware`` shows the peak it saves); the training speed does not change.
    """
    nnz = indices.shape[0]
    col_indptr = np.zeros(n_out + 1, dtype=np.int64)
    col_rows = np.empty(nnz, dtype=np.int32)
    col_perm = np.empty(nnz, dtype=np.int32 if nnz < 2**31 else np.int64)
    _fill_column_view(indptr, indices, col_indptr, col_rows, col_perm)
    return col_indptr, col_rows, col_perm


@njit(cache=True, nogil=True)
def _fill_column_view(indptr, indices, col_indptr, col_rows, col_perm):
    """:func:`column_view` into arrays given (``col_indptr`` zeroed)."""
    nnz = indices.shape[0]
    n_in = indptr.shape[0] - 1
    n_out = col_indptr.shape[0] - 1
    for k in range(nnz):
        col_indptr[indices[k] + 1] += 1
    for j in range(n_out):
        col_indptr[j + 1] += col_indptr[j]
    fill = col_indptr[:-1].copy()
    for i in range(n_in):
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            p = fill[j]
            col_rows[p] = i
            col_perm[p] = k
            fill[j] = p + 1


@njit(cache=True, nogil=True)
def merge_sorted_keys(old_keys, new_keys):
    """Merge two sorted, disjoint int64 key arrays in O(n).

    Parameters
    ----------
    old_keys : (n_old,) int64, sorted
    new_keys : (n_new,) int64, sorted

    Returns
    -------
    keys : (n_old + n_new,) int64, sorted
    source : (n_old + n_new,) int64
        ``source[p] = i`` when ``keys[p]`` is ``old_keys[i]``, and
        ``-(i + 1)`` when it is ``new_keys[i]``.
    """
    n_old = old_keys.shape[0]
    n_new = new_keys.shape[0]
    keys = np.empty(n_old + n_new, dtype=np.int64)
    source = np.empty(n_old + n_new, dtype=np.int64)
    i = 0
    j = 0
    p = 0
    while i < n_old and j < n_new:
        if old_keys[i] < new_keys[j]:
            keys[p] = old_keys[i]
            source[p] = i
            i += 1
        else:
            keys[p] = new_keys[j]
            source[p] = -(j + 1)
            j += 1
        p += 1
    while i < n_old:
        keys[p] = old_keys[i]
        source[p] = i
        i += 1
        p += 1
    while j < n_new:
        keys[p] = new_keys[j]
        source[p] = -(j + 1)
        j += 1
        p += 1
    return keys, source


def erdos_renyi(n_in, n_out, epsilon, rng, *, init="he-uniform", warn=True):
    """A random sparse layer with Erdős–Rényi topology, in O(nnz).

    Parameters
    ----------
    n_in, n_out : int
    epsilon : float
        Sparsity parameter (see :func:`erdos_renyi_nnz`).
    rng : numpy.random.Generator
    init : str
        Initial values, see :func:`initial_values`.
    warn : bool

    Returns
    -------
    indptr : (n_in + 1,) int64
    indices : (nnz,) int32
    data : (nnz,) float32
    """
    nnz = erdos_renyi_nnz(n_in, n_out, epsilon, warn=warn)
    keys = sample_empty_keys(nnz, n_in, n_out, np.empty(0, dtype=np.int64), rng)
    indptr, indices = csr_from_keys(keys, n_in, n_out)
    return indptr, indices, initial_values(nnz, n_in, n_out, init, rng, nnz=nnz)


def magnitude_removal_mask(data, zeta):
    """Which connections SET removes: per sign, the ``zeta`` fraction closest to zero.

    Among the ``P`` positive weights the ``floor(zeta * P)`` smallest go, among
    the ``N`` negative weights the ``floor(zeta * N)`` largest (closest to zero)
    go, and exact zeros always go (they carry nothing). Among weights tied at
    the cut, the first ones in storage order go.

    Memory: the mask and a float32 copy of one sign's magnitudes (the largest
    layers hold tens of millions of weights; index arrays would cost 8 bytes each).

    Parameters
    ----------
    data : (nnz,) float
    zeta : float in [0, 1]

    Returns
    -------
    (nnz,) bool
        True where the connection is removed.
    """
    cuts = []
    for sign in (1.0, -1.0):
        magnitudes = data[data > 0] if sign > 0 else -data[data < 0]
        count = int(zeta * magnitudes.shape[0])
        if count == 0:
            cuts.append((0.0, 0))  # nothing is below a cut at zero
        elif count == magnitudes.shape[0]:
            cuts.append((np.inf, 0))
        else:
            magnitudes.partition(count - 1)
            cut = magnitudes[count - 1]
            # Of the weights equal to the cut, only as many go as the count still needs.
            cuts.append((float(cut), count - int(np.count_nonzero(magnitudes[:count] < cut))))
        del magnitudes
    remove = np.empty(data.shape[0], dtype=bool)
    _mark_removed(data, cuts[0][0], cuts[0][1], cuts[1][0], cuts[1][1], remove)
    return remove


@njit(cache=True, nogil=True)
def _mark_removed(data, positive_cut, positive_ties, negative_cut, negative_ties, remove):
    """Mark weights strictly inside (-negative_cut, positive_cut), zeros, and the first ties at each cut."""
    for k in range(data.shape[0]):
        value = data[k]
        if value > 0:
            if value < positive_cut:
                remove[k] = True
            elif value == positive_cut and positive_ties > 0:
                remove[k] = True
                positive_ties -= 1
            else:
                remove[k] = False
        elif value < 0:
            if -value < negative_cut:
                remove[k] = True
            elif -value == negative_cut and negative_ties > 0:
                remove[k] = True
                negative_ties -= 1
            else:
                remove[k] = False
        else:
            remove[k] = True


@njit(cache=True, nogil=True)
def _kept_in_csr(indptr, indices, keep, n_out, keys, out):
    """``out[q]``: whether position ``keys[q]`` holds a kept connection (binary search in its row)."""
    for q in range(keys.shape[0]):
        row = keys[q] // n_out
        col = keys[q] - row * n_out
        lo = indptr[row]
        hi = indptr[row + 1]
        end = hi
        while lo < hi:
            mid = (lo + hi) >> 1
            if indices[mid] < col:
                lo = mid + 1
            else:
                hi = mid
        out[q] = lo < end and indices[lo] == col and keep[lo]


@njit(cache=True, nogil=True)
def _merge_into_csr(indptr, indices, data, velocity, keep, new_keys, new_data, n_out,
                    out_indptr, out_indices, out_data, out_velocity):
    """Kept connections and new ones (sorted keys, zero momentum) merged row by row into the ``out_`` arrays."""
    n_in = indptr.shape[0] - 1
    n_new = new_keys.shape[0]
    out_indptr[0] = 0
    j = 0
    for row in range(n_in):
        count = 0
        for k in range(indptr[row], indptr[row + 1]):
            if keep[k]:
                count += 1
        while j < n_new and new_keys[j] // n_out == row:
            count += 1
            j += 1
        out_indptr[row + 1] = out_indptr[row] + count
    j = 0
    for row in range(n_in):
        o = out_indptr[row]
        k = indptr[row]
        end = indptr[row + 1]
        base = row * n_out
        while True:
            while k < end and not keep[k]:
                k += 1
            has_old = k < end
            has_new = j < n_new and new_keys[j] < base + n_out
            if not has_old and not has_new:
                break
            if has_new and (not has_old or new_keys[j] - base < indices[k]):
                out_indices[o] = new_keys[j] - base
                out_data[o] = new_data[j]
                out_velocity[o] = 0.0
                j += 1
            else:
                out_indices[o] = indices[k]
                out_data[o] = data[k]
                out_velocity[o] = velocity[k]
                k += 1
            o += 1


def set_evolution(indptr, indices, data, velocity, n_out, zeta, rng, *, init="he-uniform"):
    """One SET step: remove by magnitude per sign, regrow as many at random.

    Removes :func:`magnitude_removal_mask`'s connections and regrows the same
    number at positions drawn uniformly among the empty ones (the just-removed
    positions are empty again and may be drawn), with fresh initial values and
    zero momentum. Survivors keep their value and momentum; nnz is unchanged.
    A dense layer (no empty position ever) is returned as it is.

    Works on the CSR arrays directly (no per-connection keys): besides the new
    layer (12 bytes a weight) it holds a removal mask (1 byte a weight) and the
    regrown keys, so the step fits beside layers of tens of millions of weights.

    Parameters
    ----------
    indptr : (n_in + 1,) int64
    indices : (nnz,) int32, ascending within each row
    data : (nnz,) float32
    velocity : (nnz,) float32
        Momentum aligned with ``data``.
    n_out : int
    zeta : float
    rng : numpy.random.Generator
    init : str

    Returns
    -------
    indptr, indices, data, velocity
        The new layer, in row order.
    """
    n_in = indptr.shape[0] - 1
    nnz = indices.shape[0]
    if nnz == n_in * n_out:
        return indptr, indices, data, velocity
    keep = ~magnitude_removal_mask(data, zeta)
    n_kept = int(np.count_nonzero(keep))

    def is_kept(keys):
        found = np.empty(keys.shape[0], dtype=bool)
        _kept_in_csr(indptr, indices, keep, np.int64(n_out), keys, found)
        return found

    new_keys = _sample_free_keys(nnz - n_kept, n_in, n_out, n_kept, is_kept, rng)
    # Fresh values are laid out in key order of the new connections.
    fresh = initial_values(new_keys.shape[0], n_in, n_out, init, rng, nnz=nnz)
    new_indptr = np.empty(n_in + 1, dtype=np.int64)
    new_indices = np.empty(nnz, dtype=np.int32)
    new_data = np.empty(nnz, dtype=np.float32)
    new_velocity = np.empty(nnz, dtype=np.float32)
    _merge_into_csr(indptr, indices, np.asarray(data, dtype=np.float32), np.asarray(velocity, dtype=np.float32),
                    keep, new_keys, fresh, np.int64(n_out), new_indptr, new_indices, new_data, new_velocity)
    return new_indptr, new_indices, new_data, new_velocity


def neuron_importance(indices, data, n_out):
    """Importance of each output neuron: the sum of |w| of its incoming connections (paper eq. 4).

    Parameters
    ----------
    indices : (nnz,) int32
    data : (nnz,) float
    n_out : int

    Returns
    -------
    (n_out,) float64
    """
    return np.bincount(indices, weights=np.abs(data), minlength=n_out)


def importance_pruning(indptr, indices, data, velocity, n_out, percentile):
    """Importance Pruning (Algorithm 2): cut the incoming weights of unimportant neurons.

    Neurons whose importance is at or below the ``percentile``-th percentile of
    the layer's importances (numpy's linear interpolation; neurons already
    without connections count, with importance 0) lose every incoming
    connection. nnz shrinks for good.

    Parameters
    ----------
    indptr : (n_in + 1,) int64
    indices : (nnz,) int32
    data, velocity : (nnz,) float32
    n_out : int
    percentile : float in [0, 100]

    Returns
    -------
    indptr, indices, data, velocity
        The pruned layer.
    pruned : (n_pruned,) int64
        The neurons at or below the threshold.
    """
    importance = neuron_importance(indices, data, n_out)
    threshold = np.percentile(importance, percentile)
    pruned = np.flatnonzero(importance <= threshold)
    is_pruned = np.zeros(n_out, dtype=bool)
    is_pruned[pruned] = True
    keep = ~is_pruned[indices]
    return (*_select(indptr, indices, keep), data[keep], velocity[keep], pruned)


def importance_pruning_due(config: "TrainConfig", epoch: int) -> bool:
    """Whether Importance Pruning runs after ``epoch``: the one schedule of every trainer.

    Parameters
    ----------
    config : wasap.config.TrainConfig
        Its ``importance_pruning`` (on or off), ``ip_start`` and ``ip_every``.
    epoch : int
        The epoch just finished, 1-based.

    Returns
    -------
    bool
        True from epoch ``ip_start`` on, every ``ip_every`` epochs, when pruning is on.
    """
    return config.importance_pruning and epoch >= config.ip_start and epoch % config.ip_every == 0


def _select(indptr, indices, keep):
    """CSR structure of the kept nonzeros (order preserved)."""
    n_in = indptr.shape[0] - 1
    rows = np.repeat(np.arange(n_in, dtype=np.int64), np.diff(indptr))
    new_indptr = np.zeros(n_in + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows[keep], minlength=n_in), out=new_indptr[1:])
    return new_indptr, indices[keep]


def keep_largest(keys, values, count):
    """Keep the ``count`` largest-magnitude entries (ties broken by lower key).

    Parameters
    ----------
    keys : (m,) int64, sorted
    values : (m,) float
    count : int

    Returns
    -------
    keys : (min(m, count),) int64, sorted
    values : (min(m, count),) float
    """
    if count >= keys.shape[0]:
        return keys, values
    order = np.lexsort((keys, -np.abs(values)))[:count]
    order.sort()
    return keys[order], values[order]


def average_layers(key_sets, value_sets):
    """Average layers over the union of their topologies; a missing connection counts as 0.

    Parameters
    ----------
    key_sets : list of (m_i,) int64, each sorted
    value_sets : list of (m_i,) float

    Returns
    -------
    keys : (m,) int64, sorted union
    values : (m,) float32
        Sum of each key's values divided by the number of layers.
    """
    keys = np.unique(np.concatenate(key_sets))
    total = np.zeros(keys.shape[0], dtype=np.float64)
    for layer_keys, layer_values in zip(key_sets, value_sets):
        total[np.searchsorted(keys, layer_keys)] += layer_values
    return keys, (total / len(key_sets)).astype(np.float32)


def remap(old_keys, new_keys):
    """Where each old connection sits in the new topology.

    Parameters
    ----------
    old_keys : (m_old,) int64, sorted
    new_keys : (m_new,) int64, sorted

    Returns
    -------
    (m_old,) int64
        Index into the new order, or -1 where the connection no longer exists.
    """
    where, found = _locate(new_keys, old_keys)
    return np.where(found, where, -1)
