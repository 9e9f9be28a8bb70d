"""What paper_madelon.py and paper_fashion_mnist.py share: flags, the training run and its report.

A run goes through the Python API only: :class:`wasap.TrainConfig` from the paper's preset
(``wasap.run.PRESETS``), :meth:`wasap.SparseMLP.from_config`, :func:`wasap.fit` writing the
output folder, then the trained layers exported as ``scipy.sparse`` matrices.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import wasap
from wasap.run import PRESETS


def build_parser(description, *, epochs, quick_epochs):
    """The flags both paper examples take."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a small configuration (also WASAP_EXAMPLES_QUICK=1): few epochs, Importance "
                             "Pruning early, so that every step shows in seconds")
    parser.add_argument("--epochs", type=int, help=f"default {epochs} (the paper's); {quick_epochs} with --quick")
    parser.add_argument("--importance-pruning", action="store_true", help="Importance Pruning (Algorithm 2)")
    parser.add_argument("--ip-start", type=int, default=200, help="first epoch of Importance Pruning")
    parser.add_argument("--ip-every", type=int, default=10, help="epochs between Importance Prunings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder (default: runs/<example>-<date>-<time>)")
    parser.add_argument("--plot", metavar="PNG", help="also draw the learning curves (tools/plot_run.py)")
    return parser


def is_quick(args):
    return args.quick or os.environ.get("WASAP_EXAMPLES_QUICK") == "1"


def run(name, preset, data, args, *, quick_epochs, **changes):
    """Train the paper's network for ``preset`` on ``data``, print the results; return the summary.

    Parameters
    ----------
    name : str
        Names the default output folder.
    preset : str
        Key of ``wasap.run.PRESETS``.
    data : wasap.Dataset
    args : argparse.Namespace
        From :func:`build_parser`.
    quick_epochs : int
    **changes
        TrainConfig values that replace the preset's (a smaller network in quick mode, say).
    """
    quick = is_quick(args)
    values = dict(PRESETS[preset], importance_pruning=args.importance_pruning, ip_start=args.ip_start,
                  ip_every=args.ip_every, seed=args.seed)
    if quick:
        values.update(epochs=quick_epochs, importance_pruning=True, ip_start=quick_epochs // 2,
                      ip_every=max(1, quick_epochs // 4))
    if args.epochs is not None:
        values["epochs"] = args.epochs
    config = wasap.TrainConfig(**{**values, **changes})
    out_dir = args.out or os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")

    print(f"data: {data.description}")
    model = wasap.SparseMLP.from_config(data.n_features, data.n_classes, config)
    print(f"model: {model}")
    summary = wasap.fit(model, data, config, out_dir=out_dir, progress=False, log=print)
    print(f"test accuracy: final {summary['final_test_accuracy']:.4f}, best {summary['best_test_accuracy']:.4f}")
    print(f"weights per layer: {summary['nnz_start']} -> {summary['nnz_end']}")
    for index in range(len(model.layers)):
        matrix = model.layer_matrix(index)  # scipy.sparse.csr_matrix, (n_in, n_out)
        print(f"layer {index + 1}: {type(matrix).__name__} {matrix.shape}, nnz {matrix.nnz}, "
              f"density {matrix.nnz / (matrix.shape[0] * matrix.shape[1]):.4f}")
    print(f"outputs in {out_dir} (metrics.jsonl, summary.json, model.npz)")
    if args.plot:
        plot(out_dir, args.plot)
    return summary


def plot(run_dir, png):
    """Draw the run with tools/plot_run.py, which sits beside this folder in wasap's repository."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from plot_run import plot_run

    try:
        print(f"plot: {plot_run(run_dir, png)}")
    except ImportError:
        print("plot: skipped, matplotlib is not installed (pip install 'wasap[plot]')")
