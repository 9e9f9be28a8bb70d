"""Accuracy over several seeds: runs ``python -m wasap.run`` once per seed and
prints the mean and spread of the best and final test accuracy and of nnz.

    python tools/accuracy.py --seeds 5 -- --dataset madelon
    python tools/accuracy.py --seeds 5 -- --dataset madelon --importance-pruning
    python tools/accuracy.py --seeds 5 --parallel 2 -- --dataset fashion-mnist --data-dir DIR --epochs 100

Everything after ``--`` goes to ``wasap.run`` unchanged; ``--seed`` and
``--out`` are set here (one folder per seed under ``--out``).
"""

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def run_seed(seed, out_root, run_args, threads):
    out = os.path.join(out_root, f"seed{seed}")
    command = [sys.executable, "-m", "wasap.run", *run_args, "--seed", str(seed), "--out", out, "--overwrite",
               "--quiet", "--threads", str(threads)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"seed {seed} failed ({completed.returncode}):\n{completed.stderr[-2000:]}")
    with open(os.path.join(out, "summary.json")) as stream:
        return json.load(stream)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="how many seeds")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds FIRST..FIRST+N-1 (tune on other seeds than you report)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (each with one thread)")
    parser.add_argument("--out", default="runs/accuracy", help="folder of the runs")
    parser.add_argument("--json", help="also write the summary here")
    args, run_args = parser.parse_known_args()
    run_args = [a for a in run_args if a != "--"]
    with ThreadPoolExecutor(args.parallel) as pool:
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        summaries = list(pool.map(lambda s: run_seed(s, args.out, run_args, 1), seeds))
    best = np.array([s["best_test_accuracy"] for s in summaries]) * 100
    final = np.array([s["final_test_accuracy"] for s in summaries]) * 100
    nnz_start = np.array([sum(s["nnz_start"]) for s in summaries])
    nnz_end = np.array([sum(s["nnz_end"]) for s in summaries])
    seconds = np.array([s["total_seconds"] for s in summaries])
    print(f"command: python -m wasap.run {' '.join(run_args)} --seed S  (S = {seeds[0]}..{seeds[-1]})")
    for seed, s in zip(seeds, summaries):
        print(f"  seed {seed}: best {100 * s['best_test_accuracy']:.2f}%  final {100 * s['final_test_accuracy']:.2f}%"
              f"  nnz {sum(s['nnz_start'])} -> {sum(s['nnz_end'])}  {s['total_seconds']:.0f}s")
    print(f"best test accuracy  {best.mean():.2f} +- {best.std(ddof=1) if len(best) > 1 else 0:.2f} %"
          f"  (min {best.min():.2f}, max {best.max():.2f})")
    print(f"final test accuracy {final.mean():.2f} +- {final.std(ddof=1) if len(final) > 1 else 0:.2f} %")
    print(f"weights {nnz_start.mean():.0f} -> {nnz_end.mean():.0f} "
          f"({100 * (1 - nnz_end.mean() / nnz_start.mean()):.1f}% fewer); {seconds.mean():.0f}s per run")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(dict(args=run_args, summaries=summaries), stream, indent=2)


if __name__ == "__main__":
    main()
