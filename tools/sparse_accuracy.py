"""Accuracy on a sparse data set: wasap's defaults against scikit-learn's MLPClassifier and a tuned logistic regression.

For a train/test pair of svmlight files, over ``--seeds`` seeds: wasap with its default settings and the
given hidden sizes (``python -m wasap.run``, one thread), ``MLPClassifier`` of the same hidden sizes for
the same number of epochs (its defaults otherwise: Adam, batch 200, L2 1e-4; sparse input, no early
stopping), and once a logistic regression whose ``C`` is chosen on a stratified fifth of the training
rows, then refitted on all of them. Accuracy is the final test accuracy (wasap's best over its epochs is
printed beside it). Each row prints mean, sample standard deviation and the seeds' values.

Usage::

    python tools/debian_text.py --out data/debian-text
    python tools/sparse_accuracy.py data/debian-text/train.svm data/debian-text/test.svm --seeds 5
    python tools/sparse_accuracy.py TRAIN TEST --only wasap -- --batch-size 32   # flags after -- go to wasap
    python tools/sparse_accuracy.py TRAIN TEST --train-rows 400                  # few samples
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The logistic regression's inverse regularisation strengths tried.
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train")
    parser.add_argument("test")
    parser.add_argument("--hidden", default="1000,1000,1000")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--train-rows", type=int, help="train on a stratified sample of this many training rows "
                        "(the few-samples regime; drawn with seed 0)")
    parser.add_argument("--only", choices=("wasap", "mlp", "logistic"), action="append",
                        help="run only these rows (repeatable)")
    args = parser.parse_args(argv)
    args.wasap_flags = extra
    return args


def run_wasap(args, seed):
    """Final and best test accuracy and seconds of one wasap run."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "wasap.run", "--dataset", f"{args.train},{args.test}", "--hidden",
                   args.hidden, "--epochs", str(args.epochs), "--seed", str(seed), "--threads", "1", "--quiet",
                   "--out", out, "--overwrite", *args.wasap_flags]
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_DIR)
        if completed.returncode != 0:
            sys.exit(f"wasap failed: {completed.stderr.strip()}")
        with open(os.path.join(out, "summary.json")) as stream:
            summary = json.load(stream)
        return summary["final_test_accuracy"], summary["best_test_accuracy"], time.perf_counter() - started


def run_mlp(args, data, seed):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    import warnings

    X_train, y_train, X_test, y_test = data
    hidden = tuple(int(n) for n in args.hidden.split(","))
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden, max_iter=args.epochs, random_state=seed, tol=0, n_iter_no_change=args.epochs)
        mlp.fit(X_train, y_train)
    return mlp.score(X_test, y_test), time.perf_counter() - started


def run_logistic(data):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    X_train, y_train, X_test, y_test = data
    fit_rows, check_rows, y_fit, y_check = train_test_split(X_train, y_train, test_size=0.2, random_state=0,
                                                            stratify=y_train)
    scores = {C: LogisticRegression(C=C, max_iter=5000).fit(fit_rows, y_fit).score(check_rows, y_check)
              for C in C_GRID}
    best = max(scores, key=scores.get)
    return best, LogisticRegression(C=best, max_iter=5000).fit(X_train, y_train).score(X_test, y_test)


def describe(values):
    values = [100 * v for v in values]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f} % ({', '.join(f'{v:.2f}' for v in values)})"


def main(argv=None):
    args = parse_args(argv)
    os.environ.update({name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    from sklearn.datasets import load_svmlight_files

    data = load_svmlight_files([args.train, args.test])
    scratch = tempfile.TemporaryDirectory()
    if args.train_rows:
        from sklearn.datasets import dump_svmlight_file
        from sklearn.model_selection import train_test_split

        X_sample, _, y_sample, _ = train_test_split(data[0], data[1], train_size=args.train_rows, random_state=0,
                                                    stratify=data[1])
        args.train = os.path.join(scratch.name, "train.svm")
        # A pair read together gets one width (load_svmlight_files), whatever each file's largest index.
        dump_svmlight_file(X_sample, y_sample, args.train, zero_based=False)
        data = (X_sample, y_sample, *data[2:])
    X_train = data[0]
    print(f"data: {X_train.shape[0]} train / {data[2].shape[0]} test rows x {X_train.shape[1]} features, "
          f"{100 * X_train.nnz / (X_train.shape[0] * X_train.shape[1]):.3f}% nonzero; hidden {args.hidden}, "
          f"{args.epochs} epochs, seeds 0-{args.seeds - 1}", flush=True)
    rows = args.only or ("wasap", "mlp", "logistic")
    if "logistic" in rows:
        C, accuracy = run_logistic(data)
        print(f"logistic regression, C {C:g} (of {', '.join(f'{c:g}' for c in C_GRID)}): {100 * accuracy:.2f} %",
              flush=True)
    if "wasap" in rows:
        runs = [run_wasap(args, seed) for seed in range(args.seeds)]
        flags = " ".join(args.wasap_flags) or "defaults"
        print(f"wasap ({flags}): final {describe([r[0] for r in runs])}; best {describe([r[1] for r in runs])}; "
              f"{statistics.mean(r[2] for r in runs):.0f} s a run", flush=True)
    if "mlp" in rows:
        runs = [run_mlp(args, data, seed) for seed in range(args.seeds)]
        print(f"MLPClassifier: final {describe([r[0] for r in runs])}; {statistics.mean(r[1] for r in runs):.0f} s "
              "a run", flush=True)


if __name__ == "__main__":
    main()
