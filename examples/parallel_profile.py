"""A parallel WASAP-SGD run on Madelon with per-worker profiling (wasap.parallel.fit_parallel).

    python examples/parallel_profile.py [--workers 2] [--epochs 40] [--sync] [--phase2-start E] [--quick]

Prints each epoch, then where every worker's time went (compute, lock waits, slot waits,
data copies) and each process's CPU and memory; the run's folder gets profile.json besides
metrics.jsonl, summary.json and model.npz. When this wasap has no parallel trainer, it
says so and exits with status 0. --quick (or WASAP_EXAMPLES_QUICK=1) trains 4 epochs.
"""

import argparse
import os
import sys
import time

import wasap
from wasap.run import PRESETS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small configuration (seconds)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--epochs", type=int, help="default 40; 4 with --quick")
    parser.add_argument("--sync", action="store_true", help="synchronous phase one (WASSP-SGD)")
    parser.add_argument("--phase2-start", type=int, help="epoch at which the workers go on alone (phase two)")
    parser.add_argument("--out", help="output folder (default: runs/parallel-profile-<date>-<time>)")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("WASAP_EXAMPLES_QUICK") == "1"
    try:
        from wasap.parallel import fit_parallel
    except ImportError as error:
        print(f"wasap.parallel is not available in this installation ({error}); nothing to profile.")
        return 0

    data = wasap.load_dataset("madelon")
    config = wasap.TrainConfig(**dict(PRESETS["madelon"], epochs=args.epochs or (4 if quick else 40)),
                               workers=args.workers, sync=args.sync, phase2_start=args.phase2_start, threads=1)
    out_dir = args.out or os.path.join("runs", f"parallel-profile-{time.strftime('%Y%m%d-%H%M%S')}")
    model = wasap.SparseMLP.from_config(data.n_features, data.n_classes, config)
    print(f"model: {model}; {config.workers} workers, {'synchronous' if config.sync else 'asynchronous'} phase one")
    summary = fit_parallel(model, data, config, out_dir=out_dir, progress=False, log=print)
    print(f"test accuracy: final {summary['final_test_accuracy']:.4f}, best {summary['best_test_accuracy']:.4f}")
    print(f"{summary['epochs_completed']} epochs in {summary['total_seconds']:.1f}s; outputs in {out_dir} "
          "(profile.json holds the per-worker profile)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
