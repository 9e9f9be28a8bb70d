"""SparseMLPRegressor: learning at its defaults, internal target standardisation, divergence advice."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_friedman1, make_regression
from sklearn.model_selection import train_test_split

from wasap.estimator import SparseMLPRegressor
from wasap.train import TrainingDiverged

# The defaults, but for the kernel threads (tests share the cores) and fewer epochs, so that a fit takes
# a fraction of a second; tools/regressor_vs_mlp.py measures the defaults in full against MLPRegressor.
QUICK = dict(epochs=30, threads=1, random_state=0)


@pytest.mark.parametrize("make", [make_friedman1, make_regression])
def test_learns_at_its_defaults_on_raw_data(make):
    X, y = make(n_samples=400, random_state=0)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divergence warning, no overflow RuntimeWarning
        regressor = SparseMLPRegressor().set_params(**QUICK).fit(X_train, y_train)
    # Predicting the mean scores 0; a diverged or untrained network scores far below.
    assert regressor.score(X_test, y_test) > 0.5


def test_predictions_follow_the_target_scale():
    X, y = make_regression(n_samples=200, n_features=6, n_targets=2, random_state=0)
    factor, shift = np.array([1000.0, 0.001]), np.array([5.0, -3.0])
    shifted = y * factor + shift
    plain = SparseMLPRegressor(**QUICK).fit(X, y)
    scaled = SparseMLPRegressor(**QUICK).fit(X, shifted)
    # The network sees the same standardised targets up to rounding, so it predicts the same up to
    # float32 rounding of its outputs.
    expected = plain.predict(X)
    np.testing.assert_allclose((scaled.predict(X) - shift) / factor, expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
    assert scaled.score(X, shifted) == pytest.approx(plain.score(X, y), abs=1e-6)
    np.testing.assert_allclose(scaled.target_mean_, shifted.mean(axis=0))
    np.testing.assert_allclose(scaled.target_scale_, shifted.std(axis=0))


def test_later_calls_keep_the_first_fits_statistics():
    X, y = make_friedman1(n_samples=120, random_state=0)
    warm = SparseMLPRegressor(**{**QUICK, "epochs": 2, "warm_start": True}).fit(X, y)
    warm.fit(X, 10 * y + 7)
    np.testing.assert_allclose([warm.target_mean_[0], warm.target_scale_[0]], [y.mean(), y.std()])
    stepped = SparseMLPRegressor(**QUICK).partial_fit(X[:40], y[:40])
    stepped.partial_fit(X[40:], 10 * y[40:])
    np.testing.assert_allclose([stepped.target_mean_[0], stepped.target_scale_[0]], [y[:40].mean(), y[:40].std()])
    # A fit without warm_start starts anew, statistics included.
    warm.set_params(warm_start=False).fit(X, 10 * y + 7)
    np.testing.assert_allclose(warm.target_mean_[0], (10 * y + 7).mean())


def test_a_constant_target_is_only_centred():
    X, _ = make_friedman1(n_samples=120, random_state=0)
    y = np.column_stack([np.full(120, 0.1), np.arange(120.0)])
    regressor = SparseMLPRegressor(**{**QUICK, "epochs": 5}).fit(X, y)
    np.testing.assert_array_equal(regressor.target_scale_, [1.0, y[:, 1].std()])
    assert np.isfinite(regressor.predict(X)).all()


@pytest.mark.parametrize("scale_X, lr, cause", [(1.0, 100.0, "Lower lr"), (1e4, 0.01, "standardise them")])
def test_immediate_divergence_raises_and_names_the_cause(scale_X, lr, cause):
    X, y = make_friedman1(n_samples=120, random_state=0)
    regressor = SparseMLPRegressor(**{**QUICK, "lr": lr})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow warning may leak
        with pytest.raises(TrainingDiverged, match=f"before it completed an epoch.*{cause}"):
            regressor.fit(X * scale_X, y)
        with pytest.raises(TrainingDiverged, match=f"before it completed an epoch.*{cause}"):
            SparseMLPRegressor(**{**QUICK, "lr": lr}).partial_fit(X * scale_X, y)
    # The network is left as initialised, and a refit with a sane setting trains as a fresh estimator does.
    assert regressor.model_.is_finite() and regressor.n_iter_ == 0 and regressor.loss_curve_ == []
    regressor.set_params(lr=0.01).fit(X, y)
    np.testing.assert_array_equal(regressor.predict(X), SparseMLPRegressor(**QUICK).fit(X, y).predict(X))
