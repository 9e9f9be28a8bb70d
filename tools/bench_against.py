"""This checkout's training speed against another checkout's, side by side in one run.

Runs the wasap rows of ``tools/bench.py`` (one Fashion-MNIST-shaped epoch, 784-1000-1000-1000-10,
epsilon 20, batch 128) alternately from this checkout and from ``--against DIR`` (another checkout of
wasap, e.g. ``git worktree add /tmp/before HEAD~5``), each in a fresh interpreter through that
checkout's own ``tools/bench.py --worker wasap``, for ``--rounds`` rounds at each thread count. The
two trees take turns, so that a change in the machine's load falls on both alike, and the report gives
each tree's median epoch time and their ratio.

Usage::

    python tools/bench_against.py --against /tmp/before
    python tools/bench_against.py --against /tmp/before --rounds 5 --threads 1 2 --samples 12800
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TOOLS_DIR)
THREAD_ENV = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, metavar="DIR", help="the other checkout of wasap")
    parser.add_argument("--rounds", type=int, default=5, help="measurements per tree and thread count [%(default)s]")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts [%(default)s]")
    parser.add_argument("--samples", type=int, default=60000,
                        help="samples per timed epoch (times are scaled to 60000) [%(default)s]")
    parser.add_argument("--repeats", type=int, default=1,
                        help="epochs timed per measurement, the best one kept [%(default)s]")
    args = parser.parse_args(argv)
    bench = os.path.join(args.against, "tools", "bench.py")
    if not os.path.isfile(bench):
        parser.error(f"--against {args.against}: no tools/bench.py there; give the root of a wasap checkout.")
    if args.rounds < 1 or args.samples < 1 or args.repeats < 1 or min(args.threads) < 1:
        parser.error("--rounds, --samples, --repeats and --threads must be at least 1.")
    return args


def measure(tree, threads, args):
    """One epoch time (seconds per 60000 samples) of ``tree``'s wasap at ``threads`` threads."""
    env = dict(os.environ, **{name: str(threads) for name in THREAD_ENV})
    env.pop("PYTHONPATH", None)  # each tree's bench.py puts its own checkout first
    with tempfile.TemporaryDirectory() as tmp:
        result_path = os.path.join(tmp, "result.json")
        command = [sys.executable, os.path.join(tree, "tools", "bench.py"), "--worker", "wasap",
                   "--threads", str(threads), "--result", result_path, "--samples", str(args.samples),
                   "--repeats", str(args.repeats)]
        completed = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if completed.returncode != 0:
            raise SystemExit(f"error: {tree}: bench worker exited with {completed.returncode}:\n{completed.stderr}")
        with open(result_path) as f:
            result = json.load(f)
    if "error" in result:
        raise SystemExit(f"error: {tree}: {result['error']}")
    return result["epoch_s"]


def main(argv=None):
    args = parse_args(argv)
    trees = {"this": REPO_DIR, "against": os.path.abspath(args.against)}
    times = {(name, threads): [] for name in trees for threads in args.threads}
    for round_index in range(args.rounds):
        # Alternate which tree goes first, so neither always runs on a machine the other has warmed.
        order = list(trees) if round_index % 2 == 0 else list(reversed(trees))
        for threads in args.threads:
            for name in order:
                seconds = measure(trees[name], threads, args)
                times[name, threads].append(seconds)
                print(f"round {round_index + 1}/{args.rounds}  {threads} thread(s)  {name:8s} {seconds:.3f} s",
                      file=sys.stderr)
    print(f"this:    {trees['this']}\nagainst: {trees['against']}")
    print(f"epoch of 784-1000-1000-1000-10 (60000 samples), median of {args.rounds}:")
    print(f"{'threads':>8} {'this (s)':>10} {'against (s)':>12} {'this/against':>13}")
    for threads in args.threads:
        this = statistics.median(times["this", threads])
        other = statistics.median(times["against", threads])
        print(f"{threads:>8} {this:>10.3f} {other:>12.3f} {this / other:>13.3f}")


if __name__ == "__main__":
    main()
