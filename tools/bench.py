"""Speed benchmark: one training epoch of the Fashion-MNIST-shaped sparse MLP, wasap against baselines.

Times one epoch of 784-1000-1000-1000-10 (epsilon 20, batch 128, 60000 random samples) for

- dense + mask and scipy.sparse (``tools/baselines.py``), one thread;
- wasap with 1 and with 2 threads;

and prints them side by side with the speed-ups, the cost of one SET evolution of all layers relative
to a wasap epoch, and the effective GFLOP/s (6 * nnz * samples / seconds: forward, backward and
sampled gradient each cost 2 flops per weight and sample) next to this machine's dense float32 matmul
GFLOP/s at the same thread count.

Every measurement runs in a fresh subprocess (``--worker``) because numba fixes its thread pool per
process, and the math libraries' thread counts (numba, OpenMP, OpenBLAS, MKL) are pinned to the row's
thread count before numpy is imported, so "1 thread" means one thread everywhere.

``--contention`` measures instead what sharing the machine does to wasap's threads: one epoch
``--repeats`` times (median reported) at 1 thread, 2 threads and the default thread count (no
thread count pinned: what a user gets), first on the machine as it is, then with competing busy
processes (``--competitors``, default one per core) running for the length of the measurement, and
prints each beside 1 thread in the same condition.

Usage::

    python tools/bench.py                      # full run: baselines take minutes
    python tools/bench.py --quick              # smoke run on small sample counts
    python tools/bench.py --baseline-samples 6400 --repeats 5 --json bench.json
    python tools/bench.py --contention --repeats 5 [--competitors 2]
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TOOLS_DIR)

SIZES = [784, 1000, 1000, 1000, 10]
EPSILON = 20
BATCH_SIZE = 128
EPOCH_SAMPLES = 60000  # one Fashion-MNIST training epoch; every time is reported per epoch of this
HYPER = dict(alpha=0.6, dropout=0.3, lr=0.01, momentum=0.9, weight_decay=2e-4)
ZETA = 0.3
WASAP_THREADS = (1, 2)
QUICK = dict(samples=6400, baseline_samples=1280, repeats=1)
THREAD_ENV = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=EPOCH_SAMPLES,
                        help="samples per timed wasap epoch (time is scaled to 60000) [%(default)s]")
    parser.add_argument("--baseline-samples", type=int, default=EPOCH_SAMPLES,
                        help="samples per timed baseline epoch (time is scaled to 60000) [%(default)s]")
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs per measurement, SET evolution between them; time per epoch is "
                             "the mean [%(default)s]")
    parser.add_argument("--repeats", type=int, default=3,
                        help="measurements of wasap, best one reported [%(default)s]")
    parser.add_argument("--baseline-repeats", type=int, default=1,
                        help="measurements of each baseline, best one reported [%(default)s]")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run; changes the defaults (options given still win) to "
                             + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--contention", action="store_true",
                        help="wasap alone at 1, 2 and the default threads, idle and beside busy processes")
    parser.add_argument("--competitors", type=int, default=os.cpu_count(),
                        help="busy processes competing in --contention [one per logical CPU: %(default)s]")
    parser.add_argument("--worker", choices=("baselines", "wasap"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    for name in ("samples", "baseline_samples", "epochs", "repeats", "baseline_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


# ---------------------------------------------------------------------------------------------------
# Worker side: runs in a subprocess whose thread environment the parent has set.


def matmul_gflops(n=2048, repeats=5):
    """Best dense float32 ``A @ B`` throughput of this process, in GFLOP/s.

    Parameters
    ----------
    n : int
        Both matrices are (n, n).
    repeats : int
        Timed products after one warm-up; the fastest counts.

    Returns
    -------
    float
    """
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def time_epochs(train_epoch, evolve, X, y, *, epochs, repeats):
    """Time ``repeats`` measurements of ``epochs`` epochs each.

    Parameters
    ----------
    train_epoch : callable
        ``train_epoch(X, y)`` trains one epoch.
    evolve : callable or None
        Called after every epoch but a measurement's last, and timed separately.
    X : ndarray of float32, shape (n, n_features)
    y : ndarray of int64, shape (n,)
    epochs, repeats : int

    Returns
    -------
    epoch_s : list of float
        Per measurement, the mean seconds per epoch of ``n`` samples.
    evolve_s : float or None
        Fastest evolution, if any ran.
    """
    measurements, evolve_times = [], []
    for _ in range(repeats):
        total = 0.0
        for epoch in range(epochs):
            start = time.perf_counter()
            train_epoch(X, y)
            total += time.perf_counter() - start
            if evolve is not None and epoch < epochs - 1:
                start = time.perf_counter()
                evolve()
                evolve_times.append(time.perf_counter() - start)
        measurements.append(total / epochs)
    return measurements, (min(evolve_times) if evolve_times else None)


def warmup_slice(n, batch_size):
    """Samples for a warm-up epoch that meets every batch size a full epoch of ``n`` samples meets.

    Numba kernels may be compiled per batch size, so a remainder batch must be warmed up too.

    Returns
    -------
    int
        ``2 * batch_size`` plus the remainder of ``n / batch_size``, at most ``n``.
    """
    return min(n, 2 * batch_size + n % batch_size)


def run_baselines(args):
    """Worker: time both baselines at this process's thread count.

    Returns
    -------
    dict
        ``matmul_gflops`` and, per baseline name, ``nnz``, ``measured_s`` (seconds per timed epoch of
        ``samples`` samples), ``samples``, and ``epoch_s`` (scaled to a 60000-sample epoch).
    """
    sys.path.insert(0, TOOLS_DIR)
    from baselines import DenseMaskMLP, ScipySparseMLP, make_fashion_shape_data

    X, y = make_fashion_shape_data(args.baseline_samples, SIZES[0], SIZES[-1], seed=0)
    result = {"matmul_gflops": matmul_gflops()}
    for name, cls in (("dense+mask", DenseMaskMLP), ("scipy.sparse", ScipySparseMLP)):
        model = cls(SIZES, epsilon=EPSILON, seed=0, **HYPER)
        # First-touch allocations and library setup are not part of an epoch's cost.
        warm = warmup_slice(len(y), BATCH_SIZE)
        model.train_epoch(X[:warm], y[:warm], batch_size=BATCH_SIZE)
        measurements, _ = time_epochs(lambda X_, y_: model.train_epoch(X_, y_, batch_size=BATCH_SIZE), None,
                                      X, y, epochs=args.epochs, repeats=args.baseline_repeats)
        measured = min(measurements)
        result[name] = {"nnz": model.nnz, "samples": len(y), "measured_s": measured,
                        "epoch_s": measured * EPOCH_SAMPLES / len(y)}
        print(f"  {name}: {result[name]['epoch_s']:.2f} s per epoch", file=sys.stderr, flush=True)
    return result


def run_wasap(args):
    """Worker: time wasap at ``args.threads`` threads.

    ``args.threads`` 0 means wasap's default thread count (:func:`wasap.threads.default_threads`).

    Returns
    -------
    dict
        ``matmul_gflops``, ``nnz``, ``samples``, ``measured_s``, ``epoch_s`` (as for the baselines, of the
        best measurement), ``measurements_s`` (every measurement), ``threads_used``,
        ``evolve_s`` (one SET step on all layers), and the first calls' times, numba compilation
        included: ``first_epoch_s`` (a warm-up epoch of ``warmup_samples``) and ``first_evolve_s``.
        On an import failure, only ``error``.
    """
    sys.path.insert(0, REPO_DIR)  # benchmark this checkout's wasap, installed or not
    try:
        from wasap.config import TrainConfig
        from wasap.model import SparseMLP
        from wasap.threads import ThreadGovernor, default_threads, max_threads, set_threads
        from wasap.train import SequentialTrainer
    except Exception as exc:  # any failure to import means: no wasap rows, keep the rest
        return {"error": f"wasap not importable: {type(exc).__name__}: {exc}"}
    sys.path.insert(0, TOOLS_DIR)
    from baselines import make_fashion_shape_data

    threads_used = set_threads(args.threads or default_threads())
    X, y = make_fashion_shape_data(args.samples, SIZES[0], SIZES[-1], seed=0)
    model = SparseMLP.random(SIZES, epsilon=EPSILON, activation="all-relu", alpha=HYPER["alpha"], seed=0)
    config = TrainConfig(batch_size=BATCH_SIZE, dropout=HYPER["dropout"], lr=HYPER["lr"],
                         momentum=HYPER["momentum"], weight_decay=HYPER["weight_decay"], zeta=ZETA, seed=0)
    # The default (threads 0 here) is what fit and the estimators run: a count that adapts as it goes.
    governor = ThreadGovernor(max_threads(), start=threads_used) if not args.threads else None
    trainer = SequentialTrainer(model, config, governor=governor)

    warm = warmup_slice(len(y), BATCH_SIZE)
    start = time.perf_counter()
    trainer.train_epoch(X[:warm], y[:warm])
    first_epoch = time.perf_counter() - start
    start = time.perf_counter()
    trainer.evolve()
    first_evolve = time.perf_counter() - start

    # With one epoch per measurement no evolution runs between epochs: then time one afterwards.
    measurements, evolve_s = time_epochs(trainer.train_epoch, trainer.evolve, X, y,
                                         epochs=args.epochs, repeats=args.repeats)
    measured = min(measurements)
    if evolve_s is None:
        start = time.perf_counter()
        trainer.evolve()
        evolve_s = time.perf_counter() - start
    return {"matmul_gflops": matmul_gflops(), "nnz": int(model.nnz), "samples": len(y),
            "measured_s": measured, "epoch_s": measured * EPOCH_SAMPLES / len(y), "evolve_s": evolve_s,
            "measurements_s": measurements,
            "threads_used": threads_used if governor is None else governor.summary()["steps_at"],
            "warmup_samples": warm, "first_epoch_s": first_epoch, "first_evolve_s": first_evolve}


def worker_main(args):
    """Worker entry point: measure, then write the result dict as JSON to ``args.result``."""
    result = run_baselines(args) if args.worker == "baselines" else run_wasap(args)
    result["threads"] = args.threads
    with open(args.result, "w") as f:
        json.dump(result, f)


# ---------------------------------------------------------------------------------------------------
# Parent side: launches the workers and reports.


def spawn_worker(kind, threads, args):
    """Run one worker in a fresh interpreter with every math library pinned to ``threads`` threads.

    Returns
    -------
    dict
        The worker's result, or ``{"error": ...}`` if it crashed.
    """
    env = dict(os.environ, **{name: str(threads) for name in THREAD_ENV})
    if not threads:  # the default: nothing pinned, as a user runs it
        for name in THREAD_ENV:
            env.pop(name, None)
    with tempfile.TemporaryDirectory() as tmp:
        result_path = os.path.join(tmp, "result.json")
        command = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--threads", str(threads),
                   "--result", result_path, "--samples", str(args.samples),
                   "--baseline-samples", str(args.baseline_samples), "--epochs", str(args.epochs),
                   "--repeats", str(args.repeats), "--baseline-repeats", str(args.baseline_repeats)]
        # The worker's own output (progress, warnings, a traceback) goes straight to this terminal.
        returncode = subprocess.run(command, env=env, stdout=sys.stderr).returncode
        if returncode != 0:
            return {"error": f"{kind} worker exited with status {returncode} (its output is above)"}
        with open(result_path) as f:
            return json.load(f)


def gflops(nnz, seconds):
    """Effective GFLOP/s of one epoch: 6 flops per weight and sample (forward, backward, gradient)."""
    return 6 * nnz * EPOCH_SAMPLES / seconds / 1e9


def build_report(baselines, wasap_runs):
    """Collect the rows, ratios and notes of the table.

    Parameters
    ----------
    baselines : dict
        Result of the baselines worker.
    wasap_runs : dict of int to dict
        Result of the wasap worker per thread count.

    Returns
    -------
    dict
        ``rows`` (list of dicts: name, threads, and either ``error`` or nnz, epoch_s, samples, gflops,
        matmul_gflops), ``ratios`` (name to value), ``evolve_percent_of_epoch`` and ``first_call``.
    """
    rows = []
    for name in ("dense+mask", "scipy.sparse"):
        row = {"name": name, "threads": 1}
        if "error" in baselines:
            row["error"] = baselines["error"]
        else:
            row.update(baselines[name], gflops=gflops(baselines[name]["nnz"], baselines[name]["epoch_s"]),
                       matmul_gflops=baselines["matmul_gflops"])
        rows.append(row)
    for threads, run in wasap_runs.items():
        row = {"name": "wasap", "threads": threads}
        if "error" in run:
            row["error"] = run["error"]
        else:
            row.update({key: run[key] for key in ("nnz", "samples", "measured_s", "epoch_s", "matmul_gflops")},
                       gflops=gflops(run["nnz"], run["epoch_s"]))
        rows.append(row)

    epoch = {(row["name"], row["threads"]): row.get("epoch_s") for row in rows}
    wasap_1t = epoch[("wasap", 1)]
    ratios = {}
    for label, numerator, denominator in (("wasap 1t vs dense+mask", epoch[("dense+mask", 1)], wasap_1t),
                                          ("wasap 1t vs scipy.sparse", epoch[("scipy.sparse", 1)], wasap_1t),
                                          ("wasap 2t vs 1t", wasap_1t, epoch[("wasap", 2)])):
        ratios[label] = numerator / denominator if numerator and denominator else None

    report = {"ratios": ratios, "rows": rows, "evolve_percent_of_epoch": {}, "first_call": {}}
    for threads, run in wasap_runs.items():
        if "error" not in run:
            # evolve_s is for the model, independent of the epoch's sample count: compare with a full epoch.
            report["evolve_percent_of_epoch"][threads] = 100 * run["evolve_s"] / run["epoch_s"]
            report["first_call"][threads] = {key: run[key] for key in
                                             ("warmup_samples", "first_epoch_s", "first_evolve_s", "evolve_s")}
    return report


def print_report(report, args):
    print()
    print(f"One training epoch, {'-'.join(map(str, SIZES))}, epsilon {EPSILON}, batch {BATCH_SIZE}, "
          f"{EPOCH_SAMPLES} samples (random data), {os.cpu_count()} logical CPUs")
    header = (f"{'trainer':<14}{'threads':>8}{'nnz':>10}{'s/epoch':>10}{'GFLOP/s':>9}"
              f"{'matmul GFLOP/s':>16}{'% of matmul':>13}  timed on")
    print(header)
    print("-" * len(header))
    for row in report["rows"]:
        if "error" in row:
            print(f"{row['name']:<14}{row['threads']:>8}  {row['error']}")
            continue
        timed = (f"{row['samples']} samples, scaled" if row["samples"] != EPOCH_SAMPLES
                 else f"{EPOCH_SAMPLES} samples")
        print(f"{row['name']:<14}{row['threads']:>8}{row['nnz']:>10,}{row['epoch_s']:>10.2f}"
              f"{row['gflops']:>9.1f}{row['matmul_gflops']:>16.1f}"
              f"{100 * row['gflops'] / row['matmul_gflops']:>12.1f}%  {timed}")
    print()
    for label, value in report["ratios"].items():
        print(f"speed-up {label + ':':<27}" + (f"{value:.2f}x" if value else "n/a"))
    for threads, percent in report["evolve_percent_of_epoch"].items():
        first = report["first_call"][threads]
        print(f"wasap {threads}t: SET evolution of all layers {first['evolve_s'] * 1e3:.1f} ms = "
              f"{percent:.2f}% of one epoch; first calls (numba compile included): "
              f"epoch of {first['warmup_samples']} samples {first['first_epoch_s']:.2f} s, "
              f"evolve {first['first_evolve_s']:.2f} s")
    print(f"Best of {args.repeats} (wasap) and {args.baseline_repeats} (baselines) measurements of "
          f"{args.epochs} epoch(s) each, after a warm-up epoch; GFLOP/s = 6 * nnz * samples / seconds.")


@contextlib.contextmanager
def competing_processes(count):
    """``count`` processes that keep a core busy each, for the length of the ``with`` block."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5 if count else 0)  # let them get their cores before the measurement starts
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def run_contention(args):
    """Median epoch of wasap at 1, 2 and the default threads, idle and beside busy processes; printed."""
    conditions = (("as it is", 0), (f"{args.competitors} busy processes", args.competitors))
    results = {}
    for label, competitors in conditions:
        with competing_processes(competitors):
            for threads in (1, 2, 0):
                print(f"wasap, {threads or 'default'} thread(s), {label} ...", file=sys.stderr, flush=True)
                results[label, threads] = spawn_worker("wasap", threads, args)
    print()
    print(f"One training epoch, {'-'.join(map(str, SIZES))}, {args.samples} samples, median of {args.repeats}; "
          f"{os.cpu_count()} logical CPUs")
    print(f"{'machine':<22}{'threads':>12}{'s/epoch':>10}{'vs 1 thread':>13}  epochs measured (s)")
    for label, _ in conditions:
        one = results[label, 1]
        for threads in (1, 2, 0):
            run = results[label, threads]
            if "error" in run:
                print(f"{label:<22}{threads or 'default':>12}  {run['error']}")
                continue
            median = statistics.median(run["measurements_s"])
            speed_up = (statistics.median(one["measurements_s"]) / median) if "error" not in one else None
            used = run["threads_used"]
            name = str(threads) if threads else "default" + (
                f" ({used})" if isinstance(used, int) else "")
            print(f"{label:<22}{name:>12}{median:>10.3f}" + (f"{speed_up:>12.2f}x" if speed_up else f"{'n/a':>13}")
                  + "  " + " ".join(f"{m:.3f}" for m in run["measurements_s"])
                  + ("" if isinstance(used, int) else
                     "; steps at " + ", ".join(f"{n} thread(s): {k}" for n, k in used.items())))
    return results


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    if args.contention:
        results = run_contention(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({f"{label} / {threads or 'default'} threads": run
                           for (label, threads), run in results.items()}, f, indent=2)
        return
    print(f"baselines, 1 thread, {args.baseline_samples} samples ...", file=sys.stderr, flush=True)
    baselines = spawn_worker("baselines", 1, args)
    wasap_runs = {}
    for threads in WASAP_THREADS:
        print(f"wasap, {threads} thread(s), {args.samples} samples ...", file=sys.stderr, flush=True)
        wasap_runs[threads] = spawn_worker("wasap", threads, args)
    report = build_report(baselines, wasap_runs)
    print_report(report, args)
    if args.json:
        settings = {key: getattr(args, key) for key in
                    ("samples", "baseline_samples", "epochs", "repeats", "baseline_repeats", "quick")}
        with open(args.json, "w") as f:
            json.dump({"sizes": SIZES, "epsilon": EPSILON, "batch_size": BATCH_SIZE,
                       "epoch_samples": EPOCH_SAMPLES, "cpu_count": os.cpu_count(), "settings": settings,
                       **report}, f, indent=2)


if __name__ == "__main__":
    main()
