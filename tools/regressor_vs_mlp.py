"""SparseMLPRegressor next to scikit-learn's MLPRegressor, both at their defaults.

For each of sklearn's ``make_regression`` and ``make_friedman1`` (their default settings but for
``n_samples`` and the seed), each size and each seed: a 75/25 train/test split, both regressors fitted
on the raw training data (as a user passes it) and scored on the test split (R2). Prints the mean and
spread over the seeds of each regressor's R2, their difference (mean, and the seed where
SparseMLPRegressor fared worst) and the fit times.

    python tools/regressor_vs_mlp.py
    python tools/regressor_vs_mlp.py --n-samples 1000 5000 --seeds 5 --first-seed 100
    python tools/regressor_vs_mlp.py --scale-X --set dropout=0.1 --set batch_size=64

``--scale-X`` puts a StandardScaler in front of both; ``--set NAME=VALUE`` changes one of
SparseMLPRegressor's defaults (VALUE is read as a Python literal), to try others than the defaults.
"""

import argparse
import ast
import time
import warnings

import numpy as np
from sklearn.datasets import make_friedman1, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from wasap.estimator import SparseMLPRegressor

GENERATORS = {"make_regression": make_regression, "make_friedman1": make_friedman1}


def parse_setting(text):
    """``NAME=VALUE`` as (name, Python literal value); a bare word stays a string."""
    name, separator, value = text.partition("=")
    if not separator:
        raise argparse.ArgumentTypeError(f"--set takes NAME=VALUE, got {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def fit_and_score(regressor, X_train, X_test, y_train, y_test, scale_X):
    """R2 on the test split and the seconds the fit took.

    Parameters
    ----------
    regressor : sklearn regressor
    X_train, X_test : (n_train, n_features), (n_test, n_features) arrays
    y_train, y_test : (n_train,), (n_test,) arrays
    scale_X : bool
        Put a StandardScaler in front of the regressor.

    Returns
    -------
    r2 : float
    seconds : float
    """
    model = make_pipeline(StandardScaler(), regressor) if scale_X else regressor
    started = time.perf_counter()
    with warnings.catch_warnings():
        # MLPRegressor's 200 iterations often end before its tolerance is met: that is its default.
        # SparseMLPRegressor's ConvergenceWarnings (a divergence) are part of what this tool shows.
        warnings.filterwarnings("ignore", message="Stochastic Optimizer", category=ConvergenceWarning)
        model.fit(X_train, y_train)
    seconds = time.perf_counter() - started
    return model.score(X_test, y_test), seconds


def compare(generator, n_samples, seeds, settings, scale_X):
    """R2 and fit seconds of both regressors on one generator and size, one row per seed.

    Returns
    -------
    (n_seeds, 2) ndarray, (n_seeds, 2) ndarray
        R2 and seconds; column 0 SparseMLPRegressor, column 1 MLPRegressor.
    """
    r2 = np.empty((len(seeds), 2))
    seconds = np.empty((len(seeds), 2))
    for row, seed in enumerate(seeds):
        X, y = generator(n_samples=n_samples, random_state=seed)
        split = train_test_split(X, y, test_size=0.25, random_state=seed)
        regressors = (SparseMLPRegressor(random_state=seed, **settings), MLPRegressor(random_state=seed))
        for column, regressor in enumerate(regressors):
            r2[row, column], seconds[row, column] = fit_and_score(regressor, *split, scale_X)
    return r2, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-samples", type=int, nargs="+", default=[100, 1000, 5000],
                        help="data set sizes (the generators' default is 100)")
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (data, split and both fits)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds FIRST..FIRST+N-1 (tune on other seeds than you report)")
    parser.add_argument("--scale-X", action="store_true", help="a StandardScaler in front of both regressors")
    parser.add_argument("--set", type=parse_setting, action="append", default=[], metavar="NAME=VALUE",
                        help="a SparseMLPRegressor parameter other than its default (repeatable)")
    args = parser.parse_args()
    settings = dict(args.set)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    print(f"X {'standardised' if args.scale_X else 'raw'}; seeds {seeds.start}..{seeds.stop - 1}; "
          f"SparseMLPRegressor({', '.join(f'{k}={v!r}' for k, v in settings.items())})")
    print(f"{'data':<16}{'n':>6}  {'SparseMLPRegressor R2':>22}  {'MLPRegressor R2':>18}  "
          f"{'difference (mean, worst)':>24}  {'seconds (sparse, mlp)':>21}")
    for name, generator in GENERATORS.items():
        for n_samples in args.n_samples:
            r2, seconds = compare(generator, n_samples, seeds, settings, args.scale_X)
            mean, spread = r2.mean(axis=0), r2.std(axis=0)
            difference = r2[:, 0] - r2[:, 1]
            print(f"{name:<16}{n_samples:>6}  {mean[0]:>14.3f} ± {spread[0]:.3f}  "
                  f"{mean[1]:>10.3f} ± {spread[1]:.3f}  {difference.mean():>+15.3f} {difference.min():>+8.3f}  "
                  f"{seconds[:, 0].mean():>12.1f} {seconds[:, 1].mean():>8.1f}", flush=True)


if __name__ == "__main__":
    main()
