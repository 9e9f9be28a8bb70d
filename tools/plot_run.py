"""Draw a wasap run's learning curves and its weights per layer, from RUN_DIR/metrics.jsonl, to a PNG.

    python tools/plot_run.py RUN_DIR [--out PNG]

Three panels over the epochs: accuracy (train and test), loss (train and test), and the
number of weights (nnz) of each layer, where SET keeps nnz constant and Importance
Pruning shows as steps down. The train curves are the means over each epoch's batches,
with dropout on, as the trainer records them. Needs matplotlib (``pip install 'wasap[plot]'``).
"""

import argparse
import json
import math
import os
import sys


def read_metrics(run_dir):
    """The per-epoch records of ``RUN_DIR/metrics.jsonl`` and the run's summary.json (or None).

    Returns
    -------
    records : list of dict
        One per epoch, the metrics.jsonl keys (epoch, train_loss, train_accuracy, test_loss,
        test_accuracy, nnz, ...).
    summary : dict or None
    """
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; RUN_DIR must be the --out folder of a wasap run.")
    with open(path) as stream:
        records = [json.loads(line) for line in stream if line.strip()]
    if not records:
        raise ValueError(f"{path} holds no epochs yet.")
    summary_path = os.path.join(run_dir, "summary.json")
    summary = None
    if os.path.isfile(summary_path):
        with open(summary_path) as stream:
            summary = json.load(stream)
    return records, summary


def _series(records, key):
    """The values of ``key`` per epoch; NaN where an epoch lacks it (e.g. no test split)."""
    values = [record.get(key) for record in records]
    return [math.nan if value is None else value for value in values]


def plot_run(run_dir, out=None):
    """Draw the run in ``run_dir`` to ``out`` (default ``RUN_DIR/run.png``); return the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    records, summary = read_metrics(run_dir)
    epochs = [record["epoch"] for record in records]
    figure, (accuracy, loss, weights) = plt.subplots(1, 3, figsize=(16, 4.6), constrained_layout=True)

    for axis, key, label in ((accuracy, "accuracy", "accuracy"), (loss, "loss", "loss")):
        axis.plot(epochs, _series(records, f"train_{key}"), label="train (batches, with dropout)")
        axis.plot(epochs, _series(records, f"test_{key}"), label="test")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.set_title(f"{label} per epoch")
        axis.grid(alpha=0.3)
        axis.legend()

    # Layers of equal size overlap (SET keeps nnz constant), so each label carries its counts.
    per_layer = list(zip(*(record["nnz"] for record in records)))
    for index, counts in enumerate(per_layer):
        weights.plot(epochs, counts, label=f"layer {index + 1}: {counts[0]} -> {counts[-1]}")
    totals = [sum(record["nnz"]) for record in records]
    weights.plot(epochs, totals, "k--", label=f"total: {totals[0]} -> {totals[-1]}")
    weights.set_yscale("log")
    weights.set_xlabel("epoch")
    weights.set_ylabel("weights (nnz)")
    weights.set_title("weights per layer")
    weights.grid(alpha=0.3, which="both")
    weights.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")

    for axis in (accuracy, loss, weights):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(_title(run_dir, records, summary))
    out = out or os.path.join(run_dir, "run.png")
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def _title(run_dir, records, summary):
    """The run's folder, its network and its best test accuracy, as far as the files tell."""
    parts = [os.path.basename(os.path.normpath(run_dir))]
    config = (summary or {}).get("config", {})
    if config:
        parts.append(f"hidden {'-'.join(str(n) for n in config['hidden'])}, epsilon {config['epsilon']}, "
                     f"alpha {config['alpha']}" + (", Importance Pruning" if config.get("importance_pruning") else ""))
    tests = [value for value in _series(records, "test_accuracy") if value == value]
    if tests:
        parts.append(f"best test accuracy {100 * max(tests):.2f}%")
    return "; ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="output folder of a run (holds metrics.jsonl)")
    parser.add_argument("--out", metavar="PNG", help="the PNG to write (default RUN_DIR/run.png)")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("error: plotting needs matplotlib; install it with: pip install 'wasap[plot]' "
              "(or pip install matplotlib)", file=sys.stderr)
        return 2
    try:
        out = plot_run(args.run_dir, args.out)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
