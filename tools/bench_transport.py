"""WASAP-SGD's two transports side by side on one machine: shared memory against MPI one-sided windows.

Each round runs the same asynchronous phase one twice, alternately: ``--workers K`` over
``--transport shm``, then under ``mpiexec -n K+1`` over ``--transport mpi``; one kernel thread a worker.
Printed per transport, as the median over the rounds: seconds per epoch (the first epoch, which loads
numba's caches, left out), and from the workers' profile (``profile.json``, summed over workers and divided
by their steps) the microseconds a step spends pulling the weights and gathering its batch (``data``),
waiting for a layer's lock, holding one, in the rest of its own update (``other``) and inside MPI
calls (part of the others), with the server's updates a second; then the MPI figure over the shared-memory one. The default data is random, of
the Fashion-MNIST shape on 12,040 training samples an epoch (784-1000-1000-1000-10).

    python tools/bench_transport.py [--workers 2] [--rounds 3] [--epochs 5] [-- more wasap.run flags]
    python tools/bench_transport.py --dataset fashion-mnist --data-dir DIR --epochs 3
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The default data: random, of the Fashion-MNIST shape; 70% of the samples train (12,040 of 17,200).
SYNTHETIC = ["--dataset", "synthetic", "--n-samples", "17200", "--n-features", "784", "--n-classes", "10",
             "--hidden", "1000,1000,1000"]
#: The profile's categories shown per step, and how the table names them.
STEP_PARTS = (("data", "pull + batch"), ("lock_wait", "lock wait"), ("lock_held", "lock held"),
              ("other", "own update"), ("in_mpi", "in MPI calls"))


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--dataset", help="a wasap.run --dataset (default: random data of the Fashion-MNIST shape)")
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    args.extra = extra
    return args


def mpiexec():
    found = shutil.which("mpiexec") or shutil.which(os.path.join(os.path.dirname(sys.executable), "mpiexec"))
    if found is None:
        sys.exit("bench_transport needs mpiexec and mpi4py: pip install 'wasap[mpi]' mpich")
    return found


def run_once(args, transport, out):
    """One run's figures: seconds per epoch, microseconds per step in each part, server updates a second."""
    data = SYNTHETIC
    if args.dataset:
        data = ["--dataset", args.dataset] + (["--data-dir", args.data_dir] if args.data_dir else [])
    flags = [*data, "--epochs", str(args.epochs), "--threads", "1", "--warmup-epochs", "0", "--quiet",
             "--out", out, "--overwrite", "--transport", transport, *args.extra]
    if transport == "mpi":
        command = [mpiexec(), "-n", str(args.workers + 1), sys.executable, "-m", "mpi4py", "-m", "wasap.run", *flags]
    else:
        command = [sys.executable, "-m", "wasap.run", "--workers", str(args.workers), *flags]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_DIR, stdin=subprocess.DEVNULL)
    if completed.returncode != 0:
        sys.exit(f"the {transport} run failed:\n{completed.stdout}{completed.stderr}")
    with open(os.path.join(out, "metrics.jsonl")) as stream:
        epochs = [json.loads(line)["train_seconds"] for line in stream]
    with open(os.path.join(out, "profile.json")) as stream:
        profile = json.load(stream)
    phase = [worker["phase1"] for worker in profile["time_breakdown"].values()]
    steps = sum(p["count"] for p in phase)
    figures = {"epoch_seconds": statistics.median(epochs[1:] or epochs),
               "updates_per_second": profile["server"]["updates_per_second"]}
    for part, _ in STEP_PARTS:
        figures[part] = 1e6 * sum(p[part] for p in phase) / max(steps, 1)
    return figures


def main(argv=None):
    args = parse_args(argv)
    figures = {"shm": [], "mpi": []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for transport in figures:
                figures[transport].append(run_once(args, transport, os.path.join(scratch, transport)))
            print(f"round {round_ + 1}/{args.rounds}: epoch {figures['shm'][-1]['epoch_seconds']:.3f} s over shm, "
                  f"{figures['mpi'][-1]['epoch_seconds']:.3f} s over mpi", flush=True)
    median = {t: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for t, runs in figures.items()}
    columns = [("epoch_seconds", "s / epoch", "{:.3f}"), *((part, f"{name} us/step", "{:.1f}")
                                                           for part, name in STEP_PARTS),
               ("updates_per_second", "server updates/s", "{:.0f}")]
    print(f"\n{args.workers} workers, asynchronous phase one, 1 thread each; medians of {args.rounds} rounds")
    print(f"{'':>22}{'shm':>12}{'mpi':>12}{'mpi/shm':>10}")
    for key, name, form in columns:
        shm, mpi = median["shm"][key], median["mpi"][key]
        ratio = f"{mpi / shm:.2f}x" if shm else "-"
        print(f"{name:>22}{form.format(shm):>12}{form.format(mpi):>12}{ratio:>10}")


if __name__ == "__main__":
    main()
