"""Memory planned before it is taken: a run's peak resident memory, estimated from its shapes.

:func:`estimate_run` adds up, from layer sizes, epsilon and the data's shape alone
(nothing is allocated), what the sequential trainer (:func:`wasap.train.fit`) holds
at each moment of a run and returns the largest such moment as a
:class:`MemoryEstimate`, by part. :func:`plan_run` checks a run against a memory
budget before its model is built: with no micro-batch asked for, it picks the
largest one that fits; when nothing fits it raises :class:`MemoryBudgetError`,
saying what would fit.

What a run holds, in bytes (``nnz`` weights of a layer of ``n_in`` inputs and ``n_out``
outputs, batch buffers of ``b`` samples):

- a layer (:class:`wasap.model.SparseLayer`): ``20 nnz`` (indices int32, data and
  velocity float32, the column view's rows and permutation int32) plus
  ``8 (n_in + 1) + 8 (n_out + 1)`` (indptr and the column view's indptr, int64) and
  ``8 n_out`` (bias and its velocity);
- without checkpoints (no output folder), :func:`wasap.train.fit` keeps a snapshot of the
  model in memory to fall back on if training diverges: each layer's CSR arrays, values,
  bias and momentum, ``12 nnz + 8 (n_in + 1) + 8 n_out`` (:func:`snapshot_bytes`; the
  column view is rebuilt on a restore), and drops the last snapshot before it takes the next;
- a training workspace (:class:`wasap.model.Workspace`): ``4 b (n_0 + 2 (n_1 + ... + n_L) + n_L)``;
  the model caches one per batch size it has seen, until the next SET step, so
  the batch and the epoch's last, smaller batch (and with micro-batches, every
  part size) coexist, and are still there during evaluation;
- evaluation: an input block and two buffers of the widest layer per inference batch size;
- building a layer, and SET rewiring one, take transients of their own (see
  :func:`init_peak_bytes` and :func:`evolution_transient_bytes`).

With a sparse ``X`` (scipy.sparse CSR, :mod:`wasap.sparse_input`) the data take their nonzeros'
bytes, and no input block of ``n_0 x b`` exists, in training or evaluation: the workspaces lose
their ``4 b n_0``, and each batch takes instead the transients of its nonzeros
(:func:`sparse_batch_bytes`).
"""

import math
import os
import re
from dataclasses import dataclass
from types import SimpleNamespace

import scipy.sparse

from .config import ConfigError
from .model import SparseMLP
from .topology import _DENSE_ENOUGH_TO_ENUMERATE, erdos_renyi_nnz

GIB = 1 << 30
#: The interpreter with numpy, scipy, scikit-learn and numba imported and wasap's
#: kernels loaded from numba's cache, before any model or data exists
#: (``tools/memory_estimate.py --baseline`` measures it).
BASELINE_BYTES = 256 << 20
#: A WASAP-SGD worker's interpreter: it imports the core and numba, not scikit-learn's estimators.
WORKER_BASELINE_BYTES = 160 << 20
#: Of the memory available when a run starts, the share a run plans to use by default:
#: the rest is left to the other processes of the machine and to the estimate's error.
DEFAULT_BUDGET_FRACTION = 0.5
#: The kernels keep 16, 32, 64 or 128 samples of a batch in registers; micro-batches
#: of a multiple of 16 fill those blocks.
MICRO_BATCH_BLOCK = 16
#: Micro-batches below one register block, tried only when no multiple of 16 fits.
_SMALL_MICRO_BATCHES = (8, 4, 2, 1)
#: glibc's malloc serves blocks below its mmap threshold from its heap, and keeps freed heap
#: resident up to its trim threshold: twice the mmap threshold, which grows with the largest
#: block freed, up to this.
_MALLOC_MMAP_THRESHOLD_MAX = 32 << 20
#: Bytes a buffer of :func:`wasap.batches.aligned_empty` allocates beyond its values.
_ALIGNMENT_SLACK = 64

_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_BUDGET_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*(%?)\s*$",
                             re.IGNORECASE)


class MemoryBudgetError(ConfigError):
    """A run would not fit in its memory budget; the message gives the estimate and what would fit."""


@dataclass(frozen=True)
class MemoryEstimate:
    """A run's estimated peak resident memory and what it is made of.

    Attributes
    ----------
    phase : str
        The moment of the run that peaks: ``"initialisation"``, ``"training"``,
        ``"evaluation"`` or ``"evolution"``.
    parts : dict of str to int
        Bytes held at that moment, by part (they add up to :attr:`total`).
    phases : dict of str to int
        The total of every moment considered, for comparison.
    """

    phase: str
    parts: dict
    phases: dict

    @property
    def total(self):
        """Estimated peak resident bytes."""
        return sum(self.parts.values())

    def largest(self, count=3):
        """The ``count`` largest parts, as ``(name, bytes)`` pairs, largest first."""
        return sorted(self.parts.items(), key=lambda item: -item[1])[:count]

    def describe(self, count=3):
        """One line: the total, the phase that peaks and the largest parts."""
        parts = ", ".join(f"{name} {format_bytes(size)}" for name, size in self.largest(count))
        return f"{format_bytes(self.total)} at {self.phase} ({parts})"


def format_bytes(count):
    """``count`` bytes as text in binary units: ``"512 B"``, ``"3.5 MiB"``, ``"12.1 GiB"``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1024


# ---------------------------------------------------------------------------------------------------
# What the parts of a run take
# ---------------------------------------------------------------------------------------------------


def network_nnz(sizes, epsilon):
    """Weights of each Erdős–Rényi layer of a network of ``sizes`` (:func:`wasap.topology.erdos_renyi_nnz`)."""
    return [erdos_renyi_nnz(n_in, n_out, epsilon, warn=False) for n_in, n_out in zip(sizes, sizes[1:])]


def layer_bytes(n_in, n_out, nnz):
    """Bytes of a :class:`wasap.model.SparseLayer`: its nonzeros, column view, bias and momentum.

    The column view's permutation is int32 below ``2**31`` nonzeros and int64 from there
    (:func:`wasap.topology.column_view`).
    """
    per_weight = 20 if nnz < 2**31 else 24
    return per_weight * nnz + 8 * (n_in + 1) + 8 * (n_out + 1) + 8 * n_out


def snapshot_bytes(n_in, n_out, nnz):
    """Bytes of the divergence fallback's snapshot of a layer: its CSR arrays, values, bias and momentum.

    What :func:`wasap.train.fit` keeps to restore a layer from (no column view: it is
    rebuilt on a restore).
    """
    return 12 * nnz + 8 * (n_in + 1) + 8 * n_out


def init_peak_bytes(n_in, n_out, nnz):
    """Peak bytes of building one Erdős–Rényi layer, its own final arrays included.

    The largest of three stages of :func:`wasap.topology.erdos_renyi` and the layer's
    constructor: drawing the positions (in a layer denser than the enumeration
    threshold, every position's key, the empty ones and a permutation of them, 24 bytes
    a position, and the chosen keys); turning sorted int64 keys into CSR (keys, rows,
    a product and a difference, 32 bytes a weight, and the indptr); and the layer
    itself, whose constructor copies the values once more before it builds the column
    view (24 bytes a weight, and int64 arrays of its neurons).
    """
    positions = n_in * n_out
    drawing = 24 * positions + 8 * nnz if nnz > _DENSE_ENOUGH_TO_ENUMERATE * positions else 26 * nnz
    to_csr = 32 * nnz + 8 * (n_in + 1)
    construct = 24 * nnz + 8 * n_in + 24 * n_out
    return max(drawing, to_csr, construct)


def evolution_transient_bytes(n_in, n_out, nnz, zeta):
    """Bytes one SET step (or Importance Pruning) of a layer takes beyond the layer itself.

    :func:`wasap.topology.set_evolution` then :meth:`wasap.model.SparseLayer.set_structure`:
    the new indices, values and momentum, copied once more by the constructor, and a
    new column view beside the old one (16 bytes a weight, int64 arrays of the
    neurons); before that, when the layer is dense enough that free positions are
    enumerated, every position's key and the free ones twice (about 26 bytes a position).
    """
    positions = n_in * n_out
    structure = 16 * nnz + 8 * n_in + 16 * n_out
    removed = int(zeta * nnz)
    kept = nnz - removed
    if nnz == positions or kept + removed <= _DENSE_ENOUGH_TO_ENUMERATE * positions:
        return structure
    free = positions - kept
    return max(structure, 10 * positions + 16 * free + 8 * removed + nnz)


def training_workspace_bytes(sizes, batch, sparse_input=False):
    """Bytes of a training :class:`wasap.model.Workspace` of ``batch`` samples.

    The input block (none for a sparse ``X``), every layer's activations and derivatives, and
    the output's delta.
    """
    values = (0 if sparse_input else sizes[0]) + 2 * sum(sizes[1:]) + sizes[-1]
    buffers = 2 * len(sizes) - (1 if sparse_input else 0)
    return 4 * batch * values + _ALIGNMENT_SLACK * buffers


def evaluation_workspace_bytes(sizes, batch, sparse_input=False):
    """Bytes of an inference :class:`wasap.model.Workspace`: the input (none for a sparse ``X``) and two
    buffers of the widest layer."""
    return 4 * batch * ((0 if sparse_input else sizes[0]) + 2 * max(sizes[1:])) + 3 * _ALIGNMENT_SLACK


def sparse_batch_bytes(sizes, batch, row_nnz):
    """Transient bytes of one batch of a sparse ``X`` in the first layer's kernels (:mod:`wasap.sparse_input`).

    The batch in feature-major order for the weight gradient (keys, their sort order, positions
    and values of its nonzeros: 48 bytes a nonzero at most) and a forward scratch block of
    16 samples of the first layer's outputs.

    Parameters
    ----------
    sizes : sequence of int
    batch : int
    row_nnz : float
        Mean nonzeros of a row of ``X``.
    """
    return int(48 * math.ceil(batch * row_nnz)) + 4 * 16 * sizes[1]


def sparse_data_bytes(row_nnz, n_rows, index_bytes=4):
    """Bytes of ``n_rows`` rows of a CSR ``X`` (float32 values, ``index_bytes`` indices) and their int64 labels."""
    return int(math.ceil((4 + index_bytes) * row_nnz * n_rows)) + (index_bytes + 8) * n_rows


def eval_batch_size(sizes):
    """Rows per inference batch of a network of ``sizes`` (:meth:`wasap.model.SparseMLP.eval_batch_size`)."""
    return SparseMLP.eval_batch_size(SimpleNamespace(sizes=list(sizes)))


def batch_sizes(n_samples, batch):
    """The distinct batch sizes one pass over ``n_samples`` in batches of ``batch`` takes."""
    sizes = {batch} if n_samples >= batch else set()
    if n_samples % batch:
        sizes.add(n_samples % batch)
    return sorted(sizes)


def training_part_sizes(n_train, batch_size, micro_batch=None):
    """Sample counts of the training workspaces one epoch builds.

    The model caches a workspace per count; a batch larger than ``micro_batch`` is
    split into parts of ``micro_batch`` and a remainder (:meth:`wasap.model.SparseMLP.train_batch`).
    """
    parts = set()
    for size in batch_sizes(n_train, batch_size):
        if micro_batch is None or size <= micro_batch:
            parts.add(size)
        else:
            parts.add(micro_batch)
            if size % micro_batch:
                parts.add(size % micro_batch)
    return sorted(parts)


# ---------------------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------------------


def estimate_run(sizes, *, epsilon, batch_size, n_train, n_test, micro_batch=None, epochs=1, zeta=0.3,
                 fallback_copy=False, data_bytes=None, baseline=BASELINE_BYTES, sparse_row_nnz=None):
    """Estimated peak resident memory of a sequential run, from its shapes alone.

    The peak is the largest of the moments a run goes through: building the model
    layer by layer; training an epoch (the model, the fallback snapshot, the training
    workspaces, gradient accumulators when batches are split); evaluating the test
    split with the training workspaces still cached; and SET evolution of the largest
    layer (when more than one epoch runs).

    Parameters
    ----------
    sizes : sequence of int
        ``[n_features, hidden..., n_outputs]``.
    epsilon : float
    batch_size : int
    n_train, n_test : int
        Samples of the two splits.
    micro_batch : int, optional
        Samples per part when batches are split; None: whole batches.
    epochs : int
        SET evolution runs between epochs, so only when ``epochs > 1``.
    zeta : float
        SET's rewired fraction.
    fallback_copy : bool
        Whether :func:`wasap.train.fit` keeps a snapshot of the model in memory to fall
        back on (it does without an output folder; with one, its checkpoints serve).
    data_bytes : int, optional
        Bytes of the loaded data; default: float32 features and int64 labels of both splits (the
        CSR arrays of :func:`sparse_data_bytes` for a sparse ``X``).
    baseline : int
        Bytes of the interpreter and its libraries.
    sparse_row_nnz : float, optional
        For a sparse ``X`` (CSR), the mean nonzeros of its rows; None for dense ``X``.

    Returns
    -------
    MemoryEstimate
    """
    sizes = [int(n) for n in sizes]
    sparse = sparse_row_nnz is not None
    layers = list(zip(sizes, sizes[1:], network_nnz(sizes, epsilon)))
    weights = sum(layer_bytes(*layer) for layer in layers)
    split = micro_batch is not None and micro_batch < batch_size
    if data_bytes is None:
        data_bytes = (sparse_data_bytes(sparse_row_nnz, n_train + n_test) if sparse
                      else (4 * sizes[0] + 8) * (n_train + n_test))
    # The largest blocks freed are a layer's int64 keys and rows (at initialisation and SET).
    kept_heap = 2 * min(_MALLOC_MMAP_THRESHOLD_MAX, 8 * max(nnz for _, _, nnz in layers))
    held = {"baseline": baseline, "data": data_bytes, "freed heap malloc keeps": kept_heap}

    # Layers are built one after the other: the earlier ones exist while the next is drawn.
    building = [init_peak_bytes(*layer) for layer in layers]
    built_before = [sum(layer_bytes(*below) for below in layers[:l]) for l in range(len(layers))]
    worst = max(range(len(layers)), key=lambda l: built_before[l] + building[l])
    phases = {"initialisation": dict(held, **{"weights": built_before[worst], "building a layer": building[worst]})}

    model = dict(held, weights=weights)
    if fallback_copy:
        model["fallback copy"] = sum(snapshot_bytes(*layer) for layer in layers)
    training = dict(model)
    parts = training_part_sizes(n_train, batch_size, micro_batch)
    training["training buffers"] = sum(training_workspace_bytes(sizes, part, sparse) for part in parts)
    if split and any(size > micro_batch for size in batch_sizes(n_train, batch_size)):
        training["gradient accumulators"] = 4 * sum(nnz for _, _, nnz in layers) + 4 * sum(sizes[1:])
    # The shuffled order, and with split batches a gathered batch beside the next one (a sparse batch
    # is its row numbers: its nonzeros' transients instead).
    if sparse:
        training["batch gathering"] = 8 * n_train + sparse_batch_bytes(sizes, max(parts), sparse_row_nnz)
    else:
        training["batch gathering"] = 8 * n_train + (2 * 4 * sizes[0] * batch_size if split else 0)
    phases["training"] = training

    evaluation = dict(training)
    evaluation["evaluation buffers"] = (
        sum(evaluation_workspace_bytes(sizes, rows, sparse) for rows in batch_sizes(n_test, eval_batch_size(sizes)))
        + 4 * n_test * sizes[-1] + 16 * n_test
    )
    phases["evaluation"] = evaluation

    if epochs > 1:
        phases["evolution"] = dict(model, **{"rewiring a layer": max(
            evolution_transient_bytes(n_in, n_out, nnz, zeta) for n_in, n_out, nnz in layers)})

    totals = {name: sum(parts.values()) for name, parts in phases.items()}
    peak = max(totals, key=totals.get)
    return MemoryEstimate(peak, phases[peak], totals)


def estimate_config(config, n_features, n_outputs, n_train, n_test, *, fallback_copy=False, data_bytes=None,
                    baseline=BASELINE_BYTES, sparse_row_nnz=None):
    """:func:`estimate_run` of a :class:`wasap.config.TrainConfig` on data of the given shape."""
    return estimate_run(
        [n_features, *config.hidden, n_outputs], epsilon=config.epsilon, batch_size=config.batch_size,
        n_train=n_train, n_test=n_test, micro_batch=config.micro_batch, epochs=config.epochs, zeta=config.zeta,
        fallback_copy=fallback_copy, data_bytes=data_bytes, baseline=baseline, sparse_row_nnz=sparse_row_nnz,
    )


def estimate_parallel_config(config, n_features, n_outputs, n_train, n_test, *, data_bytes=None,
                             baseline=BASELINE_BYTES, worker_baseline=WORKER_BASELINE_BYTES, keep_versions=8,
                             sparse_row_nnz=None):
    """Estimated peak memory of a WASAP-SGD run (:func:`wasap.parallel.fit_parallel`), all its processes together.

    The server holds the model, the last good snapshot and the one being evaluated,
    the served layers, the training data and every worker's gradient slots in shared
    blocks (plus the replicas' blocks with a phase two), and the keys of the last
    ``keep_versions`` topologies; each of the ``config.workers`` workers holds its
    working copy of the model and its batch buffers (in phase two its replica's
    trainer and one SET step). Each process counts its interpreter's baseline.

    Parameters
    ----------
    config : wasap.config.TrainConfig
        ``workers`` an int.
    n_features, n_outputs, n_train, n_test : int
    data_bytes : int, optional
        Bytes of the data set in the server (default: float32 features and int64 labels).
    sparse_row_nnz : float, optional
        For a sparse ``X`` (CSR), the mean nonzeros of its rows: the shared copy and the batches
        take its nonzeros; None for dense ``X``.

    Returns
    -------
    MemoryEstimate
    """
    workers = int(config.workers)
    sparse = sparse_row_nnz is not None
    sizes = [n_features, *config.hidden, n_outputs]
    nnz = network_nnz(sizes, config.epsilon)
    layers = list(zip(sizes, sizes[1:], nnz))
    weights = sum(layer_bytes(n_in, n_out, count) for n_in, n_out, count in layers)
    total_nnz, total_out = sum(nnz), sum(sizes[1:])
    if data_bytes is None:
        data_bytes = (sparse_data_bytes(sparse_row_nnz, n_train + n_test) if sparse
                      else 4 * (n_train + n_test) * n_features + 8 * (n_train + n_test))
    shared_data = sparse_data_bytes(sparse_row_nnz, n_train) if sparse else 4 * n_train * n_features + 8 * n_train
    slots = 1 if config.sync else 2
    # Served layer: int64 indptr, int32 indices, float32 values and momentum; biases and their momentum.
    served = 12 * total_nnz + 8 * sum(n_in + 1 for n_in in sizes[:-1]) + 8 * total_out
    phase2 = config.phase2_start is not None and config.phase2_start <= config.epochs
    shared = served + shared_data + workers * slots * 4 * (total_nnz + total_out)
    if phase2:
        shared += workers * served
    partition = -(-n_train // workers)
    parts = {
        "server: model, last good and evaluated copies": 3 * weights,
        "server: evaluation buffers": sum(evaluation_workspace_bytes(sizes, rows, sparse)
                                          for rows in batch_sizes(n_test, eval_batch_size(sizes))),
        "server: topologies kept for stale gradients": 8 * total_nnz * min(keep_versions, max(1, config.epochs)),
        "server: data set": data_bytes,
        "shared blocks": shared,
        f"{workers} workers: model copies and batch buffers": workers * (weights + sum(
            training_workspace_bytes(sizes, size, sparse) for size in batch_sizes(partition, config.batch_size))
            + (sparse_batch_bytes(sizes, config.batch_size, sparse_row_nnz) if sparse else 0)),
        "interpreters": baseline + workers * worker_baseline,
    }
    if phase2:
        parts[f"{workers} workers: replicas in phase two"] = workers * (weights + max(
            evolution_transient_bytes(n_in, n_out, count, config.zeta) for n_in, n_out, count in layers))
    total = sum(parts.values())
    return MemoryEstimate("parallel training", parts, {"parallel training": total})


# ---------------------------------------------------------------------------------------------------
# The budget
# ---------------------------------------------------------------------------------------------------


def available_bytes():
    """Memory this process can still take: the system's available memory, or less under a cgroup limit."""
    import psutil

    available = psutil.virtual_memory().available
    headroom = cgroup_headroom_bytes()
    return available if headroom is None else min(available, headroom)


def cgroup_headroom_bytes():
    """What this process's memory cgroup still allows (limit minus usage less reclaimable cache); None: no limit."""
    for limit_file, usage_file, cache_key in (("memory.max", "memory.current", "inactive_file"),
                                              ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                               "total_inactive_file")):
        for folder in _cgroup_folders():
            limit = _read_int(os.path.join(folder, limit_file))
            if limit is None:
                continue
            if limit >= 1 << 60:  # "max", or cgroup v1's page-rounded 2**63
                return None
            usage = _read_int(os.path.join(folder, usage_file)) or 0
            cache = _read_stat(os.path.join(folder, "memory.stat"), cache_key)
            return max(0, limit - max(0, usage - cache))
    return None


def _cgroup_folders():
    """Where this process's memory cgroup may be mounted: its own path, then the mount's root."""
    roots = ("/sys/fs/cgroup", "/sys/fs/cgroup/memory")
    own = []
    try:
        with open("/proc/self/cgroup") as stream:
            for line in stream:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers in ("", "memory") or "memory" in controllers.split(","):
                    own.extend(os.path.join(root, path.lstrip("/")) for root in roots)
    except OSError:
        pass
    return [folder for folder in dict.fromkeys(own + list(roots)) if os.path.isdir(folder)]


def _read_int(path):
    try:
        with open(path) as stream:
            text = stream.read().strip()
    except OSError:
        return None
    if text == "max":
        return 1 << 62
    try:
        return int(text)
    except ValueError:
        return None


def _read_stat(path, key):
    try:
        with open(path) as stream:
            for line in stream:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


@dataclass(frozen=True)
class MemoryBudget:
    """A memory budget as the user gave it: bytes, or a fraction of the memory available.

    Attributes
    ----------
    bytes : int or None
    fraction : float or None
        Exactly one of the two is set.
    """

    bytes: int = None
    fraction: float = None

    def resolve(self, available=None):
        """The budget in bytes; ``available`` (default: :func:`available_bytes`) scales a fraction."""
        if self.bytes is not None:
            return self.bytes
        return int(self.fraction * (available_bytes() if available is None else available))

    def __str__(self):
        if self.bytes is not None:
            return format_bytes(self.bytes)
        return f"{self.fraction:.0%} of the memory available"


DEFAULT_BUDGET = MemoryBudget(fraction=DEFAULT_BUDGET_FRACTION)


def parse_budget(text):
    """Read a memory budget: ``"8G"``, ``"500M"``, ``"1.5GiB"``, ``"64GB"`` (powers of 1024), or a fraction
    of the memory available, ``"0.5"`` or ``"50%"``.

    Returns
    -------
    MemoryBudget

    Raises
    ------
    ValueError
        The text is none of these; the message shows the forms accepted.
    """
    match = _BUDGET_PATTERN.match(str(text))
    forms = "an amount with a unit, like 8G, 500M or 1.5GiB, or a fraction of the memory available, like 0.5 or 50%"
    if match is None:
        raise ValueError(f"a memory budget is {forms}; got {text!r}.")
    number, unit, percent = float(match.group(1)), match.group(2).lower(), match.group(3)
    if percent and unit:
        raise ValueError(f"a memory budget is {forms}, not both a unit and a percent; got {text!r}.")
    if unit:
        if number <= 0:
            raise ValueError(f"a memory budget must be positive, got {text!r}.")
        return MemoryBudget(bytes=int(number * _UNITS[unit]))
    fraction = number / 100 if percent else number
    if not 0 < fraction <= 1:
        hint = " (add a unit for an amount: 8G, 500M)" if fraction > 1 and not percent else ""
        raise ValueError(f"a fraction of the memory available must lie in (0, 1], i.e. 0-100%, "
                         f"got {text!r}{hint}.")
    return MemoryBudget(fraction=fraction)


# ---------------------------------------------------------------------------------------------------
# Planning a run
# ---------------------------------------------------------------------------------------------------


def micro_batch_candidates(batch_size):
    """Micro-batches to try, largest first: whole batches (None), multiples of 16 below, then 8, 4, 2, 1.

    Of the multiples of 16, only those that divide the batch when there are any: a part
    size that does not divide it leaves a remainder part, whose buffers come on top
    (parts of 48 of a batch of 128 hold buffers for 48 + 32 samples, more than parts of 64).
    """
    blocks = [m for m in range(batch_size - batch_size % MICRO_BATCH_BLOCK, 0, -MICRO_BATCH_BLOCK) if m < batch_size]
    divisors = [m for m in blocks if batch_size % m == 0]
    smaller = [m for m in _SMALL_MICRO_BATCHES if m < min(batch_size, MICRO_BATCH_BLOCK)]
    return [None] + (divisors or blocks) + smaller


def choose_micro_batch(estimate, batch_size, budget_bytes):
    """The largest micro-batch whose estimate fits ``budget_bytes``.

    Parameters
    ----------
    estimate : callable
        ``estimate(micro_batch) -> MemoryEstimate`` (micro_batch None: whole batches).
    batch_size : int
    budget_bytes : int

    Returns
    -------
    micro_batch : int or None or False
        None when whole batches fit; False when nothing fits.
    estimate : MemoryEstimate
        Of that choice (of the smallest micro-batch tried when nothing fits).
    """
    tried = None
    for micro_batch in micro_batch_candidates(batch_size):
        tried = estimate(micro_batch)
        if tried.total <= budget_bytes:
            return micro_batch, tried
    return False, tried


@dataclass(frozen=True)
class DataShape:
    """What the estimate needs to know of a data set: its shape and its bytes.

    Attributes
    ----------
    n_features, n_classes, n_train, n_test : int
    nbytes : int
        Bytes of the features and labels of both splits (of their CSR arrays when sparse).
    sparse_row_nnz : float or None
        Mean nonzeros of a training row when the features are sparse (CSR); None when dense.
    """

    n_features: int
    n_classes: int
    n_train: int
    n_test: int
    nbytes: int
    sparse_row_nnz: float = None

    @classmethod
    def of(cls, data):
        """The shape of a :class:`wasap.data.Dataset`."""
        arrays = [data.y_train, data.y_test]
        row_nnz = None
        for X in (data.X_train, data.X_test):
            arrays.extend((X.data, X.indices, X.indptr) if scipy.sparse.issparse(X) else (X,))
        if scipy.sparse.issparse(data.X_train):
            row_nnz = data.X_train.nnz / data.n_train
        return cls(data.n_features, data.n_classes, data.n_train, data.n_test,
                   sum(array.nbytes for array in arrays), row_nnz)


def plan_run(config, data, *, budget=None, fallback_copy=False, log=None, available=None):
    """Check a run against its memory budget before anything big is allocated.

    With ``config.micro_batch`` None, picks the largest micro-batch whose estimate fits
    (none if whole batches do). Says the estimate in one line through ``log``.

    Parameters
    ----------
    config : wasap.config.TrainConfig
    data : wasap.data.Dataset or DataShape
    budget : MemoryBudget, optional
        Default :data:`DEFAULT_BUDGET`.
    fallback_copy : bool
        Whether training keeps a copy of the model in memory (:func:`estimate_run`).
    log : callable, optional
        Receives the line.
    available : int, optional
        Bytes available (default: :func:`available_bytes`).

    Returns
    -------
    wasap.config.TrainConfig
        ``config``, with the micro-batch chosen.

    Raises
    ------
    MemoryBudgetError
        Nothing fits: the message gives the estimate, its largest parts, the budget
        and settings that would fit.
    """
    budget = budget or DEFAULT_BUDGET
    available = available_bytes() if available is None else available
    budget_bytes = budget.resolve(available)
    budget_text = f"budget of {format_bytes(budget_bytes)} (" + (
        f"{budget.fraction:.0%} of the {format_bytes(available)} available; " if budget.fraction is not None else "")
    budget_text += "--memory-budget sets it)"
    shape = data if isinstance(data, DataShape) else DataShape.of(data)

    def estimate(cfg):
        if cfg.workers > 1:
            return estimate_parallel_config(cfg, shape.n_features, shape.n_classes, shape.n_train, shape.n_test,
                                            data_bytes=shape.nbytes, sparse_row_nnz=shape.sparse_row_nnz)
        return estimate_config(cfg, shape.n_features, shape.n_classes, shape.n_train, shape.n_test,
                               fallback_copy=fallback_copy, data_bytes=shape.nbytes,
                               sparse_row_nnz=shape.sparse_row_nnz)

    # The parallel trainer does not split batches.
    if config.micro_batch is not None or config.workers > 1:
        planned = estimate(config)
        if planned.total > budget_bytes:
            raise MemoryBudgetError(_refusal(config, planned, budget_bytes, budget_text, estimate))
        _say(log, f"memory: estimated peak {planned.describe()}; {budget_text}")
        return config
    micro_batch, planned = choose_micro_batch(lambda m: estimate(config.replace(micro_batch=m)), config.batch_size,
                                              budget_bytes)
    if micro_batch is False:
        raise MemoryBudgetError(_refusal(config, planned, budget_bytes, budget_text, estimate))
    if micro_batch is None:
        _say(log, f"memory: estimated peak {planned.describe()}; {budget_text}")
        return config
    whole = estimate(config)
    _say(log, f"memory: micro-batches of {micro_batch} (batches of {config.batch_size} would peak at "
              f"{format_bytes(whole.total)}, over the {budget_text}); estimated peak {planned.describe()}")
    return config.replace(micro_batch=micro_batch)


def _say(log, line):
    if log is not None:
        log(line)


def _refusal(config, planned, budget_bytes, budget_text, estimate):
    """The message of a run that does not fit: estimate, largest parts, budget, and what would fit."""
    lines = [f"this run needs an estimated {planned.describe()}, over the memory {budget_text}."]
    if config.workers > 1:
        lines.append(f"That is all {config.workers} workers and the server together; fewer workers need less.")
    smallest = micro_batch_candidates(config.batch_size)[-1] if config.workers == 1 else None

    def fits(cfg):
        return estimate(cfg.replace(micro_batch=smallest)).total <= budget_bytes

    options = []
    if config.micro_batch is not None and config.workers == 1:
        micro_batch, _ = choose_micro_batch(lambda m: estimate(config.replace(micro_batch=m)), config.batch_size,
                                            budget_bytes)
        if micro_batch not in (False, None):
            options.append(f"--micro-batch {micro_batch}")
    epsilon = _largest_fitting(lambda value: fits(config.replace(epsilon=value)), config.epsilon)
    if epsilon is not None:
        options.append(f"--epsilon {_round_down(epsilon)}")
    factor = _largest_fitting(lambda f: fits(config.replace(hidden=_scaled(config.hidden, f))), 1.0)
    if factor is not None:
        options.append(f"--hidden {','.join(str(n) for n in _scaled(config.hidden, factor))}")
    if options:
        lines.append(f"Would fit: {' or '.join(options)} (leave --micro-batch out to let wasap choose one); or, "
                     "if more memory is free than the budget assumes, a larger --memory-budget.")
    elif planned.parts["baseline"] + planned.parts["data"] > budget_bytes:
        lines.append(f"The data alone take {format_bytes(planned.parts['data'])}: use fewer samples or features, "
                     "or a machine with more memory.")
    else:
        lines.append("No smaller epsilon or hidden size fits either: give a larger --memory-budget, or use a "
                     "machine with more memory.")
    return " ".join(lines)


def _largest_fitting(fits, upper, steps=40):
    """The largest value in (0, ``upper``) for which ``fits`` holds, by bisection (smaller values fit better).

    None when ``upper`` itself fits (nothing to suggest) or when even a millionth of it does not.
    """
    low = upper * 1e-6
    if fits(upper) or not fits(low):
        return None
    high = upper
    for _ in range(steps):
        middle = math.sqrt(low * high)
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def _scaled(hidden, factor):
    """Hidden sizes times ``factor``, rounded down, at least 1."""
    return tuple(max(1, int(n * factor)) for n in hidden)


def _round_down(value):
    """``value`` to two significant digits, rounded down (a suggestion that still fits)."""
    digits = 1 - int(math.floor(math.log10(value)))
    scale = 10.0 ** digits
    return f"{math.floor(value * scale) / scale:.{max(digits, 0)}f}"
