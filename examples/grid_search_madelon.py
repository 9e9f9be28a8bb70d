"""GridSearchCV over epsilon (sparsity) and alpha (the All-ReLU slope) on the Madelon copy shipped with wasap.

    python examples/grid_search_madelon.py [--quick] [--epochs N] [--jobs N]

Cross-validates on Madelon's 2000 training samples, then scores the best setting on its
600 validation samples (the paper's test split). The network and the other settings are
the paper's for Madelon (``wasap.run.PRESETS["madelon"]``), with fewer epochs by default.
--quick, or WASAP_EXAMPLES_QUICK=1, searches a 2 x 2 grid with 2 folds and 20 epochs.
"""

import argparse
import os
import time

from sklearn.model_selection import GridSearchCV

import wasap
from wasap.estimator import SparseMLPClassifier
from wasap.run import PRESETS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small configuration (seconds)")
    parser.add_argument("--epochs", type=int, help="epochs per fit (default 60; 20 with --quick)")
    parser.add_argument("--jobs", type=int, help="parallel fits (default: one per core; 1 with --quick)")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("WASAP_EXAMPLES_QUICK") == "1"

    data = wasap.load_dataset("madelon")  # standardised with the train split's statistics
    preset = PRESETS["madelon"]
    classifier = SparseMLPClassifier(
        hidden_layer_sizes=preset["hidden"], batch_size=preset["batch_size"], weight_decay=preset["weight_decay"],
        epochs=args.epochs or (20 if quick else 60), random_state=0,
        # One kernel thread per fit: the fits themselves run in parallel.
        threads=1,
    )
    grid = ({"epsilon": [5, 10], "alpha": [0.25, 0.5]} if quick
            else {"epsilon": [5, 10, 20], "alpha": [0.25, 0.5, 0.75]})
    jobs = args.jobs or (1 if quick else -1)
    started = time.perf_counter()
    search = GridSearchCV(classifier, grid, cv=2 if quick else 3, n_jobs=jobs).fit(data.X_train, data.y_train)
    seconds = time.perf_counter() - started

    for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"]):
        print(f"  epsilon {params['epsilon']:>4}, alpha {params['alpha']:.2f}: cross-validated accuracy {score:.4f}")
    print(f"best params: {search.best_params_}")
    print(f"best cross-validated accuracy: {search.best_score_:.4f}")
    print(f"test accuracy of the best setting: {search.score(data.X_test, data.y_test):.4f}")
    print(f"{len(search.cv_results_['params'])} settings x {search.n_splits_} folds in {seconds:.1f}s")


if __name__ == "__main__":
    main()
