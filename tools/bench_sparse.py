"""Speed benchmark: a training epoch on sparse input, kept sparse against fed to the network dense.

The data are :func:`wasap.data.make_sparse_classification` rows (100,000 features, 0.1% nonzero by
default: about 100 nonzeros a row, power-law feature frequencies, as bag-of-words text); the network is
100000-1000-1000-1000-2, All-ReLU, epsilon 20, batch 128, dropout 0.3, as wasap's defaults for a file. One
epoch is timed with the rows as a scipy.sparse CSR matrix (the first layer works on each batch's
nonzeros, :mod:`wasap.sparse_input`) and with the same rows as a dense float32 array (each batch
gathered into a ``(n_features, batch)`` block and multiplied by the first layer's weights), from the same
starting model, alternately, in one process and at one kernel thread count, so that the ratio is
measured side by side. Evolution and evaluation are not part of the epoch.

Usage::

    python tools/bench_sparse.py                       # 4,000 rows: the dense copy takes 1.6 GB
    python tools/bench_sparse.py --samples 1000 --repeats 1   # seconds
    python tools/bench_sparse.py --features 1000000 --density 0.0001 --samples 2000
"""

import argparse
import os
import platform
import statistics
import sys
import time

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_DIR)  # benchmark this checkout's wasap, installed or not

import numpy as np  # noqa: E402

from wasap.config import TrainConfig  # noqa: E402
from wasap.data import make_sparse_classification  # noqa: E402
from wasap.memory import format_bytes  # noqa: E402
from wasap.model import SparseMLP  # noqa: E402
from wasap.threads import set_threads  # noqa: E402
from wasap.train import SequentialTrainer  # noqa: E402

HIDDEN = (1000, 1000, 1000)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4000, help="rows of one epoch")
    parser.add_argument("--features", type=int, default=100_000)
    parser.add_argument("--density", type=float, default=0.001, help="share of nonzero values")
    parser.add_argument("--threads", type=int, default=1, help="kernel threads of both runs")
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed per kind (the median is printed)")
    return parser.parse_args(argv)


def time_epoch(model, config, X, y):
    """Seconds of one training epoch of a copy of ``model`` on ``X`` (sparse or dense)."""
    trainer = SequentialTrainer(model.copy(), config)
    start = time.perf_counter()
    trainer.train_epoch(X, y)
    return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    X_sparse, y = make_sparse_classification(args.samples, args.features, density=args.density, seed=0)
    X_sparse = X_sparse.astype(np.float32)
    X_dense = X_sparse.toarray()
    config = TrainConfig(hidden=HIDDEN, seed=0, threads=args.threads)
    model = SparseMLP.from_config(args.features, 2, config, warn=False)
    # Compilation of both paths, outside the timings.
    warm = slice(0, 2 * config.batch_size + 1)
    time_epoch(model, config, X_sparse[warm], y[warm])
    time_epoch(model, config, X_dense[warm], y[warm])
    times = {"sparse": [], "dense": []}
    for _ in range(args.repeats):
        times["sparse"].append(time_epoch(model, config, X_sparse, y))
        times["dense"].append(time_epoch(model, config, X_dense, y))
    sparse_s, dense_s = (statistics.median(times[kind]) for kind in ("sparse", "dense"))
    row_nnz = X_sparse.nnz / args.samples
    print(f"data: {args.samples} rows x {args.features:,} features, {100 * X_sparse.nnz / X_dense.size:.3g}% "
          f"nonzero ({row_nnz:.0f} a row); CSR {format_bytes(X_sparse.data.nbytes + X_sparse.indices.nbytes)}, "
          f"dense {format_bytes(X_dense.nbytes)}")
    print(f"network: {model}; {args.threads} thread(s); {platform.machine()}, {os.cpu_count()} logical cores")
    print(f"{'input':<8} {'s / epoch':>10} {'rows / s':>10}   epochs (s)")
    for kind, seconds in (("sparse", sparse_s), ("dense", dense_s)):
        each = " ".join(f"{t:.2f}" for t in times[kind])
        print(f"{kind:<8} {seconds:>10.3f} {args.samples / seconds:>10.0f}   {each}")
    print(f"sparse input is {dense_s / sparse_s:.1f}x faster than the same rows fed dense")


if __name__ == "__main__":
    main()
