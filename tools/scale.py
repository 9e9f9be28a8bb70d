"""Scale test: the paper's record networks (Table 5) trained for a few batches on the machine it runs on.

Each row builds one network, trains ``--max-batches`` batches of 128 on make_classification-like data
(10000 samples x 65536 features, 70/30 split, as the paper), evaluates ``--eval-samples`` test rows and
runs one SET evolution of every layer, and reports

- the architecture, epsilon, hidden neurons and weights (nnz);
- initialisation seconds; training seconds per epoch (7000 samples = 55 batches, extrapolated from the
  measured batches when fewer ran); evaluation seconds (extrapolated to the 3000 test rows); evolution
  seconds;
- the training loss of the first and of the last measured batches (does the big network learn?);
- peak resident memory of the row's process, beside what the dense float32 weights alone would need.

Rows (``--rows``, comma-separated):

===========  =====================================  =======  ==========================================
name         architecture                           epsilon  paper: init / train / test / evolve
===========  =====================================  =======  ==========================================
1M           65536-0.5M-0.5M-2                      10       ~1 / ~6 / ~2.5 / ~1 min, 16 workers
5M           65536-2.5M-2.5M-2                      5        ~2 / ~10 / ~6 / ~2 min, 16 workers
10M          65536-5M-5M-2                          5        ~3 / ~20 / ~11 / ~5 min, 16 workers
20M          65536-5M x4-2                          1        ~5 / ~26 / ~18 / ~6 min, 8 workers
50M          65536-5M x10-2                         1        ~9 / ~52 / ~20 / ~6 min, 8 workers
leukemia     54675-27500-27500-18, random normal    20       dense version: 2.26 billion weights
             data, 1397/699 samples, 18 classes
wide         65536-50000-50000-2, 1 and 2 threads   1        effective GFLOP/s beside the Fashion-MNIST
             + 784-1000-1000-1000-10 (eps 20)                shape measured the same way
===========  =====================================  =======  ==========================================

Every row runs in a fresh subprocess (``--worker-row``) so that its peak memory is its own and numba's
thread pool has the row's size. The data are generated once per run and feature count into .npy files
in a temporary folder; a row reads its batches from there (so the data set does not count in the row's
memory, as the model and its buffers do). Before a row, its memory need is estimated and compared with
``/proc/meminfo``'s MemAvailable; a row that would not fit is refused, not started.

A batch's activations take ``2 x sum of layer widths x batch x 4`` bytes (10 GB for 65536-5M-5M-2 at
batch 128). When ``TrainConfig`` has ``micro_batch``, each batch is split into micro-batches of
``--micro-batch`` samples (default: as many as fit in ``--activation-budget`` GiB) whose gradients add
up to one update; without it a row whose batch activations exceed the budget is refused.

``--recipe paper`` trains with the paper's Table 5 settings; ``--recipe width-aware`` with tanh, weights
sized for the connections a neuron has, a zeroed output layer and learning rates scaled with the output
layer's fan-in (see :func:`training_hyper`), under which these networks learn in their first epoch.

Usage::

    python tools/scale.py --rows 1M --max-batches 3 --eval-samples 200
    python tools/scale.py --rows 1M --recipe width-aware
    python tools/scale.py --rows wide
    python tools/scale.py --rows leukemia --max-batches 2
    python tools/scale.py --rows 10M --max-batches 5 --eval-samples 500 --json scale.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TOOLS_DIR)
sys.path.insert(0, REPO_DIR)  # measure this checkout's wasap, installed or not

from wasap.config import WIDTH_AWARE_KEYS, TrainConfig  # noqa: E402  (needs the path above)
from wasap.threads import available_cores  # noqa: E402
from wasap.topology import INIT_SCHEMES  # noqa: E402

GIB = 1 << 30
BATCH_SIZE = 128
HYPER = dict(dropout=0.4, lr=0.01, momentum=0.9)  # the paper's Table 5 settings
THREAD_ENV = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
WIDE_THREADS = (1, 2)
#: Python, numpy, numba and the compiled kernels, before any model exists (with some headroom).
BASE_BYTES = 300 << 20
#: Bytes per weight held by a layer: indices, data, velocity, column rows and column permutation
#: (int32/float32; the permutation is int64 only in a layer of 2**31 weights or more).
BYTES_PER_WEIGHT = 20
#: Transient bytes per weight of the largest layer during a SET step: the new indices, data and
#: velocity, the removal mask, one sign's magnitudes and the regrown keys (rounded up from what the
#: parts add up to).
EVOLVE_BYTES_PER_WEIGHT = 20


@dataclass(frozen=True)
class DataSpec:
    """A data set the rows train on: make_classification-like (``synthetic``) or random normal."""

    kind: str
    n_features: int
    n_train: int
    n_test: int
    n_classes: int
    paper_train: int  # samples per epoch and test set the times are scaled to
    paper_test: int
    n_informative: int = 0  # synthetic only

    @property
    def key(self):
        informative = f"-{self.n_informative}inf" if self.kind == "synthetic" else ""
        return f"{self.kind}-{self.n_features}x{self.n_train + self.n_test}-{self.n_classes}{informative}"


@dataclass(frozen=True)
class Row:
    """One network of the scale test."""

    name: str
    label: str
    sizes: tuple
    epsilon: float
    paper: str  # what the paper reports for it


def split_samples(n_samples):
    """Train and test sizes of a 70/30 split, as :func:`wasap.load_dataset` makes them."""
    n_test = max(1, round(0.3 * n_samples))
    return n_samples - n_test, n_test


def make_rows():
    """The rows by name (the ``wide`` row's Fashion-MNIST companion is ``fashion``)."""
    five = 5_000_000
    table = [
        Row("1M", "65536-0.5M-0.5M-2", (65536, 500_000, 500_000, 2), 10,
            "16 workers: init ~1, train ~6, test ~2.5, evolve ~1 min"),
        Row("5M", "65536-2.5M-2.5M-2", (65536, 2_500_000, 2_500_000, 2), 5,
            "16 workers: init ~2, train ~10, test ~6, evolve ~2 min"),
        Row("10M", "65536-5M-5M-2", (65536, five, five, 2), 5,
            "16 workers: init ~3, train ~20, test ~11, evolve ~5 min"),
        Row("20M", "65536-5Mx4-2", (65536,) + (five,) * 4 + (2,), 1,
            "8 workers: init ~5, train ~26, test ~18, evolve ~6 min"),
        Row("50M", "65536-5Mx10-2", (65536,) + (five,) * 10 + (2,), 1,
            "8 workers: init ~9, train ~52, test ~20, evolve ~6 min"),
        Row("leukemia", "54675-27500-27500-18", (54675, 27500, 27500, 18), 20,
            "sequential; the dense version (2.26e9 weights) did not fit in 32 GB"),
        Row("wide", "65536-50000-50000-2", (65536, 50000, 50000, 2), 1, "-"),
        Row("fashion", "784-1000-1000-1000-10", (784, 1000, 1000, 1000, 10), 20, "-"),
    ]
    return {row.name: row for row in table}


ROWS = make_rows()
ROW_CHOICES = ("1M", "5M", "10M", "20M", "50M", "leukemia", "wide")


def training_hyper(row, args):
    """``TrainConfig`` keyword arguments of a row's training under ``--recipe``.

    ``paper``: the paper's Table 5 settings (lr 0.01 for every layer, dropout 0.4), with ``--init`` and
    ``--lr-fan-in``. ``width-aware``: :meth:`wasap.TrainConfig.width_aware` (tanh, weights for the
    fan-in a neuron has, a zeroed output layer, rates scaled with the output layer's fan-in, no
    dropout). ``--dropout`` overrides either's dropout.
    """
    if args.recipe == "paper":
        hyper = dict(init=args.init, lr_fan_in=args.lr_fan_in, **HYPER)
    else:
        recipe = TrainConfig.width_aware(row.sizes[1:-1], row.sizes[-1], epsilon=row.epsilon)
        hyper = {name: getattr(recipe, name) for name in (*WIDTH_AWARE_KEYS, "momentum")}
    if args.dropout is not None:
        hyper["dropout"] = args.dropout
    return hyper


def data_spec(row, args):
    """The data a row trains on."""
    if row.name == "leukemia":
        return DataSpec("normal", row.sizes[0], 1397, 699, row.sizes[-1], 1397, 699)
    if row.name == "fashion":
        # Random data of the Fashion-MNIST shape: only as many samples as the measurement reads.
        n_train = min(60000, args.max_batches * BATCH_SIZE)
        return DataSpec("normal", row.sizes[0], n_train, min(10000, args.eval_samples), row.sizes[-1], 60000, 10000)
    n_train, n_test = split_samples(args.samples)
    return DataSpec("synthetic", row.sizes[0], n_train, n_test, row.sizes[-1], 7000, 3000, args.informative)


# ---------------------------------------------------------------------------------------------------
# Sizes and memory estimates (no wasap import needed).


def row_nnz(row):
    """Weights of each layer of ``row`` (:func:`wasap.topology.erdos_renyi_nnz`)."""
    from wasap.topology import erdos_renyi_nnz

    return [erdos_renyi_nnz(n_in, n_out, row.epsilon, warn=False) for n_in, n_out in zip(row.sizes, row.sizes[1:])]


def dense_weights(sizes):
    """Weights of the fully connected network of ``sizes``."""
    return sum(n_in * n_out for n_in, n_out in zip(sizes, sizes[1:]))


def dense_bytes(sizes):
    """Bytes of the dense float32 weight matrices of ``sizes`` (weights only)."""
    return 4 * dense_weights(sizes)


def activation_bytes(sizes, micro_batch):
    """Bytes of one training micro-batch's buffers: activations and derivatives of every layer."""
    return 2 * sum(sizes) * micro_batch * 4


def choose_micro_batch(sizes, budget_bytes):
    """Largest micro-batch whose buffers stay within ``budget_bytes``; 0 if none does.

    A power of two, so that it divides the batch: parts of one size share one cached workspace (a
    remainder part would get buffers of its own) and fill the kernels' register blocks evenly.
    """
    fits = min(BATCH_SIZE, int(budget_bytes // activation_bytes(sizes, 1)))
    return 1 << (fits.bit_length() - 1) if fits >= 1 else 0


def eval_batch_size(sizes):
    """Rows per inference batch, as :meth:`wasap.model.SparseMLP.eval_batch_size` picks them."""
    rows = int(min(128, (64 << 20) // max(sizes)))
    return max(16, rows - rows % 16)


def estimate_memory(row, nnz, micro_batch, splits_batches):
    """Estimated peak resident bytes of a row's process, by part.

    Parameters
    ----------
    row : Row
    nnz : list of int
        Weights per layer.
    micro_batch : int
        Samples whose buffers exist at once in training.
    splits_batches : bool
        Whether batches are split (gradient buffers of every weight are then kept).

    Returns
    -------
    dict
        Bytes of ``model``, ``activations``, ``evaluation``, ``evolution`` (transient), ``batch_data``,
        ``base`` and their ``total``.
    """
    sizes = row.sizes
    per_weight = BYTES_PER_WEIGHT + (4 if splits_batches else 0)
    parts = {
        "model": per_weight * sum(nnz) + 16 * sum(sizes) + 8 * sum(sizes[1:]),
        "activations": activation_bytes(sizes, micro_batch) + 4 * sizes[0] * BATCH_SIZE,
        # A full inference batch and the remainder batch of a block each keep a workspace: the input
        # and two buffers of the widest layer.
        "evaluation": 2 * 4 * (sizes[0] + 2 * max(sizes[1:])) * eval_batch_size(sizes),
        "evolution": EVOLVE_BYTES_PER_WEIGHT * max(nnz),
        "batch_data": 2 * 4 * sizes[0] * BATCH_SIZE,
        "base": BASE_BYTES,
    }
    parts["total"] = sum(parts.values())
    return parts


def mem_available_bytes():
    """MemAvailable of ``/proc/meminfo`` in bytes (psutil's figure where /proc is missing)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().available)


def micro_batch_supported():
    """Whether this checkout's ``TrainConfig`` splits batches into micro-batches."""
    from wasap.config import TrainConfig

    return "micro_batch" in TrainConfig.__dataclass_fields__


# ---------------------------------------------------------------------------------------------------
# Data: generated once per run and data set, read back a batch at a time.


def generate_data(spec, folder, seed):
    """Write a data set as X_train.npy, y_train.npy, X_test.npy, y_test.npy under ``folder``.

    ``synthetic`` is :func:`wasap.load_dataset`'s make_classification-like chunked float32 generator,
    standardised; ``normal`` is standard normal features with uniformly random labels.

    Returns
    -------
    float
        Seconds taken to generate (writing the files excluded).
    """
    import numpy as np

    os.makedirs(folder, exist_ok=True)
    started = time.perf_counter()
    if spec.kind == "synthetic":
        from wasap import load_dataset

        data = load_dataset("synthetic", n_samples=spec.n_train + spec.n_test, n_features=spec.n_features,
                            n_informative=spec.n_informative,
                            n_classes=spec.n_classes, seed=seed, chunk_rows=256)
        arrays = dict(X_train=data.X_train, y_train=data.y_train, X_test=data.X_test, y_test=data.y_test)
    else:
        rng = np.random.default_rng(seed)
        arrays = {}
        for split, n in (("train", spec.n_train), ("test", spec.n_test)):
            arrays[f"X_{split}"] = rng.standard_normal((n, spec.n_features), dtype=np.float32)
            arrays[f"y_{split}"] = rng.integers(0, spec.n_classes, n)
    seconds = time.perf_counter() - started
    for name, array in arrays.items():
        np.save(os.path.join(folder, f"{name}.npy"), array)
    return seconds


class RowFile:
    """Rows of a 2-D float32 .npy file, read with ``readinto`` instead of a memory map.

    Pages of a memory map count in the process's resident set once touched; reading copies only the
    asked rows, so a row's peak memory is that of its model and buffers, not of the data set.
    """

    def __init__(self, path):
        import numpy as np

        self._file = open(path, "rb", buffering=0)
        version = np.lib.format.read_magic(self._file)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        self.shape, fortran_order, dtype = reader(self._file)
        if fortran_order or dtype != np.float32 or len(self.shape) != 2:
            raise ValueError(f"{path} must hold a C-ordered 2-D float32 array.")
        self._offset = self._file.tell()
        self._row_bytes = self.shape[1] * 4

    def read(self, rows):
        """The given rows as a ``(len(rows), n_features)`` float32 array."""
        import numpy as np

        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        for i, row in enumerate(rows):
            self._file.seek(self._offset + int(row) * self._row_bytes)
            self._file.readinto(memoryview(out[i]).cast("B"))
        return out

    def close(self):
        self._file.close()


# ---------------------------------------------------------------------------------------------------
# Worker side: one row in this process.


def rss_bytes():
    """Current resident memory of this process."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss():
    """Peak resident memory of this row's process, in bytes (``VmHWM``: it starts afresh at exec)."""
    from wasap.records import peak_rss_bytes

    return peak_rss_bytes()


def warm_up(depth, n_classes, config_kwargs, seed):
    """Compile (or load from numba's cache) every kernel a row uses, on a tiny network of its depth.

    Returns
    -------
    float
        Seconds taken, so that first-call compilation stays out of the row's timings.
    """
    import numpy as np

    from wasap.config import TrainConfig
    from wasap.model import SparseMLP
    from wasap.train import SequentialTrainer

    started = time.perf_counter()
    sizes = [64] + [256] * (depth - 1) + [n_classes]
    model = SparseMLP.random(sizes, epsilon=1, activation=config_kwargs.get("activation", "all-relu"), seed=seed,
                             warn=False)
    trainer = SequentialTrainer(model, TrainConfig(**config_kwargs))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((BATCH_SIZE, sizes[0]), dtype=np.float32)
    y = rng.integers(0, n_classes, BATCH_SIZE)
    trainer.train_epoch(X, y)
    model.evaluate(X, y)
    trainer.evolve()
    return time.perf_counter() - started


def run_row(args):
    """Worker: build, train, evaluate and evolve one row; return its measurements as a dict."""
    import numpy as np

    from wasap.batches import gather_transposed
    from wasap.config import TrainConfig
    from wasap.model import SparseMLP
    from wasap.threads import set_threads
    from wasap.train import SequentialTrainer

    row = ROWS[args.worker_row]
    spec = data_spec(row, args)
    set_threads(args.threads)
    config_kwargs = dict(hidden=row.sizes[1:-1], epsilon=row.epsilon, batch_size=BATCH_SIZE, seed=args.seed,
                         **training_hyper(row, args))
    if micro_batch_supported():
        config_kwargs["micro_batch"] = args.micro_batch
    result = {"row": row.name, "hyper": {key: config_kwargs[key] for key in training_hyper(row, args)},
              "threads": args.threads, "micro_batch": config_kwargs.get("micro_batch"),
              "compile_s": warm_up(len(row.sizes) - 1, row.sizes[-1], config_kwargs, args.seed),
              "rss_before_model": rss_bytes()}

    started = time.perf_counter()
    model = SparseMLP.random(row.sizes, epsilon=row.epsilon, activation=config_kwargs.get("activation", "all-relu"),
                             alpha=TrainConfig.alpha, init=config_kwargs["init"],
                             seed=args.seed, warn=False, zero_output=config_kwargs.get("zero_output", False))
    result["init_s"] = time.perf_counter() - started
    result["nnz_per_layer"] = model.nnz_per_layer()
    result["model_bytes"] = int(sum(array.nbytes for layer in model.layers for array in vars(layer).values()
                                    if isinstance(array, np.ndarray)))
    result["peak_rss_after_init"] = peak_rss()
    _log(f"{row.name}: init {result['init_s']:.1f} s, {model.nnz:,} weights, "
         f"peak RSS {peak_rss() / GIB:.2f} GiB")

    trainer = SequentialTrainer(model, TrainConfig(**config_kwargs))
    folder = os.path.join(args.data_dir, spec.key)
    X_train = RowFile(os.path.join(folder, "X_train.npy"))
    y_train = np.load(os.path.join(folder, "y_train.npy"))
    rng = np.random.default_rng(args.seed)
    order = np.empty(0, dtype=np.int64)
    losses, batch_seconds, gather_seconds = [], [], []
    last_report = time.perf_counter()
    for batch in range(args.max_batches):
        if order.shape[0] < BATCH_SIZE:  # a new pass over the training rows when too few are left
            order = np.concatenate([order, rng.permutation(spec.n_train)])
        rows, order = np.sort(order[:BATCH_SIZE]), order[BATCH_SIZE:]
        X, y = X_train.read(rows), y_train[rows]
        # The batch's gather into the kernels' transposed layout, timed alone: for a 65536-wide input
        # it moves 32 MB per batch and can outweigh the sparse products.
        started = time.perf_counter()
        gather_transposed(X, np.arange(X.shape[0]))
        gather_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        loss, _ = trainer.train_epoch(X, y)
        batch_seconds.append(time.perf_counter() - started)
        losses.append(loss)
        if time.perf_counter() - last_report > 5 or batch == args.max_batches - 1:
            _log(f"{row.name}: batch {batch + 1}/{args.max_batches}, loss {loss:.4f}, "
                 f"{batch_seconds[-1]:.2f} s, peak RSS {peak_rss() / GIB:.2f} GiB")
            last_report = time.perf_counter()
    X_train.close()
    measured = args.max_batches * BATCH_SIZE
    # Mean loss of each pass over the training rows (batch b belongs to pass b * 128 // n_train).
    passes = {}
    for batch, loss in enumerate(losses):
        passes.setdefault(batch * BATCH_SIZE // spec.n_train, []).append(loss)
    result["pass_losses"] = [float(np.mean(values)) for _, values in sorted(passes.items())]
    result.update(losses=losses, batch_seconds=batch_seconds, gather_measured_s=sum(gather_seconds),
                  train_samples=measured,
                  train_measured_s=sum(batch_seconds),
                  train_epoch_s=sum(batch_seconds) * spec.paper_train / measured,
                  epoch_samples=spec.paper_train, peak_rss_after_train=peak_rss())

    result.update(evaluate(model, folder, min(args.eval_samples, spec.n_test), spec.paper_test))
    result["peak_rss_after_eval"] = peak_rss()
    _log(f"{row.name}: evaluation of {result['eval_samples']} rows {result['eval_measured_s']:.1f} s")

    started = time.perf_counter()
    trainer.evolve()
    result["evolve_s"] = time.perf_counter() - started
    result["peak_rss"] = peak_rss()
    _log(f"{row.name}: evolution {result['evolve_s']:.1f} s, peak RSS {result['peak_rss'] / GIB:.2f} GiB")
    return result


def evaluate(model, folder, n_eval, paper_test):
    """Loss, accuracy and time on the first ``n_eval`` test rows, read in blocks of whole inference batches.

    Returns
    -------
    dict
        ``eval_samples``, ``eval_measured_s`` (evaluation calls only, not the reading), ``eval_s``
        (scaled to ``paper_test`` rows), ``test_loss``, ``test_accuracy``.
    """
    import numpy as np

    X_test = RowFile(os.path.join(folder, "X_test.npy"))
    y_test = np.load(os.path.join(folder, "y_test.npy"))
    step = model.eval_batch_size() * max(1, 256 // model.eval_batch_size())
    seconds = total_loss = total_correct = 0.0
    for start in range(0, n_eval, step):
        rows = np.arange(start, min(start + step, n_eval))
        X = X_test.read(rows)
        started = time.perf_counter()
        loss, accuracy = model.evaluate(X, y_test[rows])
        seconds += time.perf_counter() - started
        total_loss += loss * rows.shape[0]
        total_correct += accuracy * rows.shape[0]
    X_test.close()
    return {"eval_samples": n_eval, "eval_measured_s": seconds, "eval_s": seconds * paper_test / n_eval,
            "test_loss": total_loss / n_eval, "test_accuracy": total_correct / n_eval}


def _log(line):
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# Parent side: plans the rows, generates the data, launches one worker per row, reports.


def plan_row(row, args, threads, has_micro_batch):
    """Decide a row's micro-batch and check its memory; returns a dict with ``refused`` set when it must not run."""
    nnz = row_nnz(row)
    budget = args.activation_budget * GIB
    if args.micro_batch is not None:
        micro_batch = min(args.micro_batch, BATCH_SIZE)
    else:
        micro_batch = choose_micro_batch(row.sizes, budget)
    plan = {"row": row.name, "threads": threads, "nnz": sum(nnz), "micro_batch": micro_batch, "refused": None}
    if micro_batch < 1:
        plan["refused"] = (f"one sample's buffers ({activation_bytes(row.sizes, 1) / GIB:.2f} GiB) exceed "
                           f"--activation-budget {args.activation_budget} GiB")
        return plan
    if not has_micro_batch and micro_batch < BATCH_SIZE:
        plan["refused"] = (f"a batch of {BATCH_SIZE} needs {activation_bytes(row.sizes, BATCH_SIZE) / GIB:.1f} GiB "
                           f"of activations, over --activation-budget {args.activation_budget} GiB, and this "
                           "wasap's TrainConfig has no micro_batch to split batches")
        plan["micro_batch"] = None
        return plan
    if not has_micro_batch:
        plan["micro_batch"] = None
    memory = estimate_memory(row, nnz, micro_batch, has_micro_batch and micro_batch < BATCH_SIZE)
    available = mem_available_bytes()
    plan.update(estimate=memory, mem_available=available)
    if memory["total"] > available:
        parts = ", ".join(f"{name} {value / GIB:.1f}" for name, value in memory.items() if name != "total")
        plan["refused"] = (f"needs about {memory['total'] / GIB:.1f} GiB ({parts} GiB) but MemAvailable is "
                           f"{available / GIB:.1f} GiB")
    return plan


def spawn_row(row, plan, args, data_dir):
    """Run one row in a fresh interpreter pinned to ``plan['threads']`` threads; its result dict or an error."""
    env = dict(os.environ, **{name: str(plan["threads"]) for name in THREAD_ENV})
    with tempfile.TemporaryDirectory(prefix="wasap-scale-result-") as tmp:
        result_path = os.path.join(tmp, "result.json")
        command = [sys.executable, os.path.abspath(__file__), "--worker-row", row.name,
                   "--threads", str(plan["threads"]), "--result", result_path, "--data-dir", data_dir,
                   "--max-batches", str(args.max_batches), "--eval-samples", str(args.eval_samples),
                   "--samples", str(args.samples), "--seed", str(args.seed), "--init", args.init,
                   "--informative", str(args.informative), "--micro-batch", str(plan["micro_batch"] or BATCH_SIZE)]
        command += ["--recipe", args.recipe]
        for name in ("lr_fan_in", "dropout"):
            if getattr(args, name) is not None:
                command += ["--" + name.replace("_", "-"), str(getattr(args, name))]
        started = time.perf_counter()
        returncode = subprocess.run(command, env=env, stdout=sys.stderr).returncode
        if returncode != 0:
            return {"error": f"worker exited with status {returncode} (its output is above)"}
        with open(result_path) as f:
            result = json.load(f)
        result["wall_s"] = time.perf_counter() - started
        return result


def run_rows(args):
    """Plan, generate data for and run every requested row; returns the report dict."""
    has_micro_batch = micro_batch_supported()
    names = []
    for name in args.rows:
        names.extend(["wide", "fashion"] if name == "wide" else [name])
    row_threads = args.threads or available_cores()
    jobs = [(ROWS[name], threads) for name in names
            for threads in (WIDE_THREADS if name in ("wide", "fashion") else (row_threads,))]

    report = {"settings": {key: getattr(args, key) for key in ("rows", "max_batches", "eval_samples", "samples",
                                                               "seed", "init", "activation_budget",
                                                               "micro_batch")},
              "micro_batch_supported": has_micro_batch, "cpu_count": os.cpu_count(), "data": {}, "rows": []}
    with tempfile.TemporaryDirectory(prefix="wasap-scale-data-") as data_dir:
        for row, threads in jobs:
            plan = plan_row(row, args, threads, has_micro_batch)
            entry = {**plan, "label": row.label, "epsilon": row.epsilon, "sizes": list(row.sizes),
                     "neurons": sum(row.sizes[1:-1]), "dense_bytes": dense_bytes(row.sizes), "paper": row.paper,
                     "load_before": os.getloadavg()[0]}
            if plan["refused"]:
                _log(f"{row.name}: refused: {plan['refused']}.")
                report["rows"].append(entry)
                continue
            spec = data_spec(row, args)
            if spec.key not in report["data"]:
                data_bytes = 4 * spec.n_features * (spec.n_train + spec.n_test)
                # The generator holds the whole data set plus a few blocks while it standardises.
                if 1.1 * data_bytes + BASE_BYTES > mem_available_bytes():
                    entry["refused"] = (f"generating its data needs about {1.1 * data_bytes / GIB:.1f} GiB but "
                                        f"MemAvailable is {mem_available_bytes() / GIB:.1f} GiB")
                    _log(f"{row.name}: refused: {entry['refused']}.")
                    report["rows"].append(entry)
                    continue
                _log(f"generating {spec.key} ({spec.n_train} train / {spec.n_test} test) ...")
                seconds = generate_data(spec, os.path.join(data_dir, spec.key), args.seed)
                report["data"][spec.key] = {"generate_s": seconds, "bytes": data_bytes}
                _log(f"generated {spec.key} in {seconds:.1f} s")
                # The check before generating could not see the data's page cache pressure: check again.
                entry.update(plan_row(row, args, threads, has_micro_batch))
                if entry["refused"]:
                    _log(f"{row.name}: refused: {entry['refused']}.")
                    report["rows"].append(entry)
                    continue
            _log(f"{row.name} ({row.label}, epsilon {row.epsilon}), {threads} thread(s), micro-batch "
                 f"{entry['micro_batch'] or 'n/a'}, load {entry['load_before']:.2f}, estimated "
                 f"{entry['estimate']['total'] / GIB:.1f} GiB of {entry['mem_available'] / GIB:.1f} available ...")
            entry.update(spawn_row(row, entry, args, data_dir))
            report["rows"].append(entry)
    return report


def _gib(value):
    return f"{value / GIB:.2f}" if value is not None else "-"


def _size(value):
    """Bytes with a unit that keeps the number short."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value / 1e3:.1f} kB"


def loss_trend(losses):
    """Mean loss of the first and of the last measured batches (a third of them each, at most 5)."""
    k = max(1, min(5, len(losses) // 3))
    return sum(losses[:k]) / k, sum(losses[-k:]) / k, k


def print_report(report, args):
    """The results table, the notes under it and the GFLOP/s comparison of the ``wide`` row."""
    print()
    print(f"Scale test: batch {BATCH_SIZE}, recipe {args.recipe}, {args.informative} informative "
          f"features; {args.max_batches} batch(es) measured per row; "
          f"{os.cpu_count()} logical CPUs; "
          f"micro_batch {'supported' if report['micro_batch_supported'] else 'not in this wasap'}")
    for key, data in report["data"].items():
        print(f"data {key}: {_size(data['bytes'])} generated in {data['generate_s']:.1f} s")
    header = (f"{'row':<9}{'architecture':<23}{'eps':>4}{'neurons':>11}{'weights':>13}{'thr':>4}{'micro':>6}"
              f"{'init s':>8}{'train s/ep':>11}{'loss first->last':>19}{'eval s':>8}{'evolve s':>9}"
              f"{'peak GiB':>9}{'dense':>10}{'load':>6}")
    print(header)
    print("-" * len(header))
    notes = []
    for entry in report["rows"]:
        lead = (f"{entry['row']:<9}{entry['label']:<23}{entry['epsilon']:>4g}{entry['neurons']:>11,}"
                f"{entry['nnz']:>13,}{entry['threads']:>4}")
        if entry.get("refused") or "error" in entry:
            print(f"{lead}  {'refused: ' + entry['refused'] if entry.get('refused') else entry['error']}")
            continue
        first, last, k = loss_trend(entry["losses"])
        print(f"{lead}{entry['micro_batch'] or '-':>6}{entry['init_s']:>8.1f}{entry['train_epoch_s']:>11.1f}"
              f"{first:>10.4f}->{last:<7.4f}{entry['eval_s']:>8.1f}{entry['evolve_s']:>9.2f}"
              f"{_gib(entry['peak_rss']):>9}{_size(entry['dense_bytes']):>10}{entry['load_before']:>6.2f}")
        hyper = ", ".join(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                          for key, value in entry["hyper"].items())
        notes.append(f"{entry['row']} ({entry['threads']}t): {hyper}; training timed on {entry['train_samples']} samples "
                     f"({entry['train_measured_s']:.2f} s), per epoch of {entry['epoch_samples']}"
                     f"{' (extrapolated)' if entry['train_samples'] != entry['epoch_samples'] else ''}; "
                     f"evaluation timed on {entry['eval_samples']} rows ({entry['eval_measured_s']:.2f} s), "
                     f"scaled to the test set; loss = mean of the first / last {k} batch(es); peak RSS after init "
                     f"{_gib(entry['peak_rss_after_init'])}, training {_gib(entry['peak_rss_after_train'])}, "
                     f"evaluation {_gib(entry['peak_rss_after_eval'])} GiB (estimated "
                     f"{_gib(entry['estimate']['total'])}); dense: {dense_weights(entry['sizes']):.3g} weights; "
                     f"test accuracy {100 * entry['test_accuracy']:.1f}%; "
                     + (f"mean loss per pass over the training rows: "
                        f"{', '.join(f'{loss:.4f}' for loss in entry['pass_losses'])}; "
                        if len(entry.get("pass_losses", ())) > 1 else "")
                     + f"paper: {entry['paper']}")
    print()
    for note in notes:
        print(note)
    print("Times are for one process (the paper's Table 5 used 8 or 16 workers); the data set is read "
          "from a file a batch at a time and is not in the peak RSS; 'dense' is the float32 weights of the "
          "fully connected network.")
    print_gflops(report)


def print_gflops(report):
    """Effective GFLOP/s (6 * nnz * samples / seconds of training) of the wide and Fashion-shaped rows."""
    runs = [entry for entry in report["rows"] if entry["row"] in ("wide", "fashion") and "losses" in entry]
    if not runs:
        return
    print()
    print(f"{'shape':<24}{'threads':>8}{'weights':>10}{'samples':>9}{'seconds':>9}{'GFLOP/s':>9}"
          f"{'gather s':>10}{'GFLOP/s w/o gather':>20}")
    for entry in runs:
        flops = 6 * entry["nnz"] * entry["train_samples"]
        entry["gflops"] = flops / entry["train_measured_s"] / 1e9
        entry["gflops_without_gather"] = flops / (entry["train_measured_s"] - entry["gather_measured_s"]) / 1e9
        print(f"{entry['label']:<24}{entry['threads']:>8}{entry['nnz']:>10,}{entry['train_samples']:>9}"
              f"{entry['train_measured_s']:>9.3f}{entry['gflops']:>9.2f}{entry['gather_measured_s']:>10.3f}"
              f"{entry['gflops_without_gather']:>20.2f}")
    print("GFLOP/s = 6 * weights * samples / seconds of the timed training batches (forward, backward and "
          "gradient: 2 flops per weight and sample each); 'gather' is the batches' copy into the transposed "
          "input layout, timed separately, which the training time includes.")


# ---------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1M",
                        help=f"comma-separated rows among {', '.join(ROW_CHOICES)} [%(default)s]")
    parser.add_argument("--max-batches", type=int, default=55,
                        help="training batches measured per row; times are scaled to a full epoch [%(default)s]")
    parser.add_argument("--eval-samples", type=int, default=3000,
                        help="test rows evaluated; the time is scaled to the full test set [%(default)s]")
    parser.add_argument("--samples", type=int, default=10000,
                        help="samples of the make_classification data, split 70/30 [%(default)s]")
    parser.add_argument("--micro-batch", type=int, default=None,
                        help="samples per micro-batch (default: the most that fit in --activation-budget)")
    parser.add_argument("--activation-budget", type=float, default=4.0,
                        help="GiB that one micro-batch's activations may take [%(default)s]")
    parser.add_argument("--threads", type=int, default=None,
                        help="kernel threads of each row but wide (default: one per core; the load average "
                             "is printed, not used, since the previous row's own load would count in it)")
    parser.add_argument("--init", choices=INIT_SCHEMES, default="he-uniform",
                        help="initial weights under --recipe paper (see wasap.topology.initial_values) "
                             "[%(default)s]")
    parser.add_argument("--recipe", choices=("paper", "width-aware"), default="paper",
                        help="the learning rates and initial values: the paper's Table 5 settings, or rates "
                             "scaled with the output layer's fan-in (see training_hyper) [%(default)s]")
    parser.add_argument("--dropout", type=float, default=None,
                        help=f"hidden dropout (default: {HYPER['dropout']} under --recipe paper, as the paper; "
                             "0 under width-aware)")
    parser.add_argument("--lr-fan-in", type=float, default=None,
                        help="layers of a larger mean fan-in take steps of lr * LR_FAN_IN / fan-in "
                             "(wasap.optim.LayerRates); default: lr everywhere, as the paper")
    parser.add_argument("--informative", type=int, default=2,
                        help="informative features of the make_classification data; 2 is scikit-learn's "
                             "default, which the paper's call kept [%(default)s]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--worker-row", choices=sorted(ROWS), help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.rows = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = [name for name in args.rows if name not in ROW_CHOICES]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; choose among {', '.join(ROW_CHOICES)}")
    for name in ("max_batches", "eval_samples", "micro_batch", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.samples < 2 * BATCH_SIZE:
        parser.error(f"--samples must be at least {2 * BATCH_SIZE}")
    if args.activation_budget <= 0:
        parser.error("--activation-budget must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker_row:
        result = run_row(args)
        with open(args.result, "w") as f:
            json.dump(result, f)
        return
    report = run_rows(args)
    print_report(report, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
