"""The memory estimate (:mod:`wasap.memory`) against the peaks that runs really reach.

Each shape is a ``python -m wasap.run`` command line on synthetic data. For each, the tool
plans the run as the command line does (:func:`wasap.memory.plan_run`: the micro-batch
chosen under the budget, or a refusal), prints the estimate and its largest parts, and
with ``--measure`` runs the command in a subprocess and reports its peak resident memory
(the larger of summary.json's ``peak_rss_bytes`` and the child's ``ru_maxrss``) and the
estimate's error against it. A shape whose estimate exceeds ``--max-peak`` GiB is estimated
only, never run. Run one measurement at a time on a shared machine.

Shapes (``--shapes``, comma-separated):

============  ====================================  ==========================================
name          network (epsilon)                     data, epochs
============  ====================================  ==========================================
fashion       784-1000-1000-1000-10 (20)            2000 samples, 10 classes, 2 epochs
1M            65536-0.5M-0.5M-2 (10)                1000 samples, 2 epochs
5M            65536-2.5M-2.5M-2 (5)                 1000 samples, 1 epoch
10M           65536-5M-5M-2 (1), the plain flags    1000 samples, 1 epoch
10M-eps10     65536-5M-5M-2 (10)                    1000 samples, 1 epoch
50M           65536-5M x10-2 (1)                    1000 samples, 1 epoch
100Mx100M     100-1e8-1e8-2 (20)                    the synthetic defaults
============  ====================================  ==========================================

Usage::

    python tools/memory_estimate.py --shapes 10M,50M,100Mx100M          # estimates only
    python tools/memory_estimate.py --shapes fashion,1M --measure
    python tools/memory_estimate.py --baseline                          # BASELINE_BYTES
    python tools/memory_estimate.py --measure -- --dataset synthetic --hidden 2000,2000 --epochs 1
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TOOLS_DIR)
sys.path.insert(0, REPO_DIR)  # measure this checkout's wasap, installed or not

from wasap.config import TrainConfig  # noqa: E402  (needs the path above)
from wasap.data import SYNTHETIC_CHUNKED_ABOVE  # noqa: E402
from wasap.memory import (GIB, DataShape, MemoryBudgetError, available_bytes, estimate_config,  # noqa: E402
                          format_bytes, network_nnz, plan_run)
from wasap.run import build_parser, config_from_args  # noqa: E402

_WIDE = ["--dataset", "synthetic", "--n-samples", "1000", "--n-features", "65536", "--n-classes", "2"]
SHAPES = {
    "fashion": ["--dataset", "synthetic", "--n-samples", "2000", "--n-features", "784", "--n-classes", "10",
                "--hidden", "1000,1000,1000", "--epsilon", "20", "--epochs", "2"],
    "1M": _WIDE + ["--hidden", "500000,500000", "--epsilon", "10", "--epochs", "2"],
    "5M": _WIDE + ["--hidden", "2500000,2500000", "--epsilon", "5", "--epochs", "1"],
    "10M": _WIDE + ["--hidden", "5000000,5000000", "--epsilon", "1", "--epochs", "1"],
    "10M-eps10": _WIDE + ["--hidden", "5000000,5000000", "--epsilon", "10", "--epochs", "1"],
    "50M": _WIDE + ["--hidden", ",".join(["5000000"] * 10), "--epsilon", "1", "--epochs", "1"],
    "100Mx100M": ["--dataset", "synthetic", "--hidden", "100000000,100000000", "--epsilon", "20"],
}
#: The smallest run there is: what it peaks at is the interpreter and the kernels.
BASELINE_FLAGS = ["--dataset", "synthetic", "--n-samples", "200", "--n-features", "10", "--hidden", "10",
                  "--epochs", "1"]


def synthetic_shape(args):
    """The :class:`DataShape` ``load_dataset("synthetic", ...)`` returns for these flags.

    Its 30% test split: sklearn's ``train_test_split`` rounds the test share up, the
    chunked generator (above ``SYNTHETIC_CHUNKED_ABOVE`` values) to the nearest.
    """
    n = args.n_samples
    if n * args.n_features > SYNTHETIC_CHUNKED_ABOVE:
        n_test = max(1, round(0.3 * n))
    else:
        n_test = -(-3 * n // 10)
    return DataShape(args.n_features, args.n_classes, n - n_test, n_test, (4 * args.n_features + 8) * n)


def plan(flags):
    """Flags -> (config, data shape, config as planned or None, refusal message or None)."""
    args = build_parser().parse_args(flags)
    if args.dataset != "synthetic":
        raise SystemExit("memory_estimate.py plans synthetic data sets only (--dataset synthetic).")
    config = config_from_args(args)
    shape = synthetic_shape(args)
    try:
        return config, shape, plan_run(config, shape, budget=args.memory_budget), None
    except MemoryBudgetError as error:
        return config, shape, None, str(error)


def estimate_of(config, shape):
    """The estimate of a run of ``config`` on data of ``shape`` from the command line (no fallback copy)."""
    return estimate_config(config, shape.n_features, shape.n_classes, shape.n_train, shape.n_test,
                           data_bytes=shape.nbytes)


def measure(flags):
    """Run ``python -m wasap.run FLAGS`` in a subprocess; its peak bytes, summary.json and seconds."""
    with tempfile.TemporaryDirectory(prefix="wasap-memory-") as out:
        command = [sys.executable, "-m", "wasap.run", *flags, "--out", out, "--overwrite", "--quiet"]
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited with {child.returncode}:\n{output}")
        with open(os.path.join(out, "summary.json")) as stream:
            summary = json.load(stream)
    peak = max(usage.ru_maxrss * 1024, summary.get("peak_rss_bytes") or 0)
    return peak, summary, seconds


def report(name, flags, args):
    """Plan (and measure) one shape; returns its JSON record."""
    config, shape, planned, refusal = plan(flags)
    sizes = [shape.n_features, *config.hidden, shape.n_classes]
    nnz = sum(network_nnz(sizes, config.epsilon))
    record = dict(name=name, flags=flags, sizes=sizes, nnz=nnz)
    print(f"{name}: {'-'.join(_short(n) for n in sizes)}, {nnz:.3g} weights")
    if refusal is not None:
        print(f"  refused: {refusal}")
        return dict(record, refused=refusal)
    estimate = estimate_of(planned, shape)
    print(f"  estimate: {estimate.describe(count=4)}; micro-batch {planned.micro_batch or 'none'}")
    record.update(estimate=estimate.total, estimate_phase=estimate.phase, estimate_parts=estimate.parts,
                  micro_batch=planned.micro_batch)
    if not args.measure:
        return record
    if estimate.total > args.max_peak * GIB:
        print(f"  not run: the estimate is over --max-peak {args.max_peak} GiB")
        return record
    peak, summary, seconds = measure(flags)
    # The subprocess may have seen other memory available and chosen otherwise: estimate the run it made.
    used = TrainConfig.from_dict(summary["config"])
    estimate = estimate_of(used, shape)
    error = estimate.total / peak - 1
    print(f"  measured peak {format_bytes(peak)} in {seconds:.0f}s (micro-batch {used.micro_batch or 'none'}); "
          f"estimate {format_bytes(estimate.total)} at {estimate.phase}, {100 * error:+.1f}%")
    return dict(record, measured=peak, seconds=seconds, error=error, micro_batch=used.micro_batch,
                estimate=estimate.total, estimate_phase=estimate.phase, estimate_parts=estimate.parts)


def _short(n):
    for unit, size in (("M", 10**6), ("k", 10**3)):
        if n >= size and n % (size // 10) == 0:
            return f"{n / size:g}{unit}"
    return str(n)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="fashion,1M,5M,10M,10M-eps10,50M,100Mx100M",
                        help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--measure", action="store_true", help="run each shape that fits and measure its peak")
    parser.add_argument("--max-peak", type=float, default=12.0, help="GiB: shapes estimated above are not run")
    parser.add_argument("--baseline", action="store_true", help="measure the smallest run's peak and stop")
    parser.add_argument("--json", help="write the records to this file")
    parser.add_argument("flags", nargs="*", help="after --: one wasap.run command line of your own")
    args = parser.parse_args(argv)
    if args.baseline:
        peak, _, seconds = measure(BASELINE_FLAGS)
        print(f"baseline: {format_bytes(peak)} ({peak} bytes) in {seconds:.1f}s")
        return 0
    print(f"memory available: {format_bytes(available_bytes())}")
    jobs = [("custom", args.flags)] if args.flags else [(name, SHAPES[name]) for name in args.shapes.split(",")]
    records = [report(name, flags, args) for name, flags in jobs]
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(records, stream, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
