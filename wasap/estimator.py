"""scikit-learn estimators: :class:`SparseMLPClassifier` and :class:`SparseMLPRegressor`.

They follow :class:`sklearn.neural_network.MLPClassifier`'s conventions (fit,
partial_fit, predict, predict_proba, score, warm_start, ``classes_``,
``n_iter_``, ``loss_curve_``), but name their hyperparameters like the command
line (``python -m wasap.run``): both are made from the declarations of
:mod:`wasap.config`, so that a setting means the same in both. So:

- ``alpha`` is the **All-ReLU slope** (paper eq. 3), not an L2 penalty as in
  MLPClassifier; L2 regularisation is ``weight_decay``.
- ``epochs`` is the number of passes over the data (MLPClassifier's
  ``max_iter``); there is no early stopping, every epoch runs.
- ``lr`` is the learning rate (MLPClassifier's ``learning_rate_init``).

Training is :func:`wasap.train.fit` (or :func:`wasap.parallel.fit_parallel`
with ``workers > 1``), so an estimator trains exactly like the command line
with the same settings; the fitted network is ``model_``, a
:class:`wasap.model.SparseMLP`.
"""

import operator
import re
import warnings

import numpy as np
import scipy.sparse
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import _check_partial_fit_first_call, check_classification_targets
from sklearn.utils.validation import check_consistent_length, check_is_fitted, validate_data

from .config import HYPERPARAMETERS, TrainConfig, fill_parameters_doc, numpydoc_parameters, value_text
from .data import Dataset, encode_labels, validate_features, validate_training_data
from .model import SparseMLP
from .signals import EXIT_STATUS
from .threads import default_governor, default_threads, set_threads
from .train import SequentialTrainer, TrainingDiverged, fit

__all__ = ["SparseMLPClassifier", "SparseMLPRegressor"]

#: The classifier's defaults: TrainConfig's.
_CLASSIFIER = TrainConfig()
#: The regressor's defaults where they differ from TrainConfig's (SparseMLPRegressor's docstring says why).
REGRESSOR_DEFAULTS = dict(activation="relu", dropout=0.0, batch_size=32, zero_output=True)
_REGRESSOR = TrainConfig(output_activation="identity", loss="mse", **REGRESSOR_DEFAULTS)
#: The hyperparameters the estimators take under their TrainConfig names and pass on as they are.
_SHARED = tuple(name for name, spec in HYPERPARAMETERS.items() if spec.estimator is True)
#: The hyperparameters each estimator class fixes (its output and loss).
_FIXED = tuple(name for name, spec in HYPERPARAMETERS.items() if not spec.estimator)

# Sparse input stays sparse: wasap.data.validate_features makes any of these canonical CSR, which the
# input layer's sparse kernels read (wasap.sparse_input).
_SPARSE_FORMATS = ("csr", "csc", "coo")

# He initialisation and the default lr assume inputs of about unit scale: a first layer's pre-activations
# grow with the inputs' scale and its gradient steps with its square, so features ten times larger take
# steps a hundred times larger. Past this root mean square the inputs are the likely cause of a divergence.
_UNSCALED_INPUT_RMS = 10.0

# wasap.train.fit's per-epoch line (RunRecorder.describe) names its evaluation split "test"; without
# validation data the estimators evaluate the training data there.
_EVALUATION_WORDS = re.compile(r"\btest (accuracy|loss)\b")


class _ContinuedTrainer:
    """A :class:`~wasap.train.SequentialTrainer` whose epochs fit() numbers from 1 continue a count.

    Warm starts and fits after partial_fit resume the epoch count, so Importance
    Pruning (due at epochs ``>= ip_start``, every ``ip_every``) keeps its schedule.
    """

    def __init__(self, trainer, epochs_done):
        self.trainer = trainer
        self.epochs_done = epochs_done

    def train_epoch(self, X, y, *, progress=None):
        return self.trainer.train_epoch(X, y, progress=progress)

    @property
    def settled(self):
        return self.trainer.settled

    def end_of_epoch(self, epoch, last):
        self.trainer.end_of_epoch(self.epochs_done + epoch, last)


class _BaseSparseMLP(BaseEstimator):
    """What the classifier and the regressor share: configuration, the training loop's plumbing, pickling."""

    #: The defaults of the class's parameters, and the values of the hyperparameters it fixes.
    _defaults = _CLASSIFIER

    def __init__(self, hidden_layer_sizes=_CLASSIFIER.hidden, *, activation=_CLASSIFIER.activation,
                 alpha=_CLASSIFIER.alpha, epsilon=_CLASSIFIER.epsilon, zeta=_CLASSIFIER.zeta, init=_CLASSIFIER.init,
                 epochs=_CLASSIFIER.epochs, batch_size=_CLASSIFIER.batch_size, micro_batch=_CLASSIFIER.micro_batch,
                 augment=_CLASSIFIER.augment,
                 lr=_CLASSIFIER.lr, lr_fan_in=_CLASSIFIER.lr_fan_in, output_lr=_CLASSIFIER.output_lr,
                 zero_output=_CLASSIFIER.zero_output, momentum=_CLASSIFIER.momentum,
                 weight_decay=_CLASSIFIER.weight_decay, dropout=_CLASSIFIER.dropout,
                 importance_pruning=_CLASSIFIER.importance_pruning, ip_start=_CLASSIFIER.ip_start,
                 ip_every=_CLASSIFIER.ip_every, ip_percentile=_CLASSIFIER.ip_percentile, threads=_CLASSIFIER.threads,
                 workers=_CLASSIFIER.workers, sync=_CLASSIFIER.sync, phase2_start=_CLASSIFIER.phase2_start,
                 warmup_epochs=_CLASSIFIER.warmup_epochs, stall_timeout=_CLASSIFIER.stall_timeout,
                 warm_start=False, random_state=None, verbose=False):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.alpha = alpha
        self.epsilon = epsilon
        self.zeta = zeta
        self.init = init
        self.epochs = epochs
        self.batch_size = batch_size
        self.micro_batch = micro_batch
        self.augment = augment
        self.lr = lr
        self.lr_fan_in = lr_fan_in
        self.output_lr = output_lr
        self.zero_output = zero_output
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.importance_pruning = importance_pruning
        self.ip_start = ip_start
        self.ip_every = ip_every
        self.ip_percentile = ip_percentile
        self.threads = threads
        self.workers = workers
        self.sync = sync
        self.phase2_start = phase2_start
        self.warmup_epochs = warmup_epochs
        self.stall_timeout = stall_timeout
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose

    # -- configuration -------------------------------------------------------------------------

    def _config(self, seed):
        """The :class:`TrainConfig` of the current hyperparameters (raises ConfigError, a ValueError)."""
        sizes = self.hidden_layer_sizes
        sizes = (sizes,) if np.ndim(sizes) == 0 else sizes
        # operator.index accepts numpy integers (from parameter grids) but refuses 2.5 instead of truncating it.
        try:
            hidden = tuple(operator.index(size) for size in sizes)
        except TypeError:
            raise ValueError(f"hidden_layer_sizes must be integers, got {self.hidden_layer_sizes!r}.") from None
        shared = {name: getattr(self, name) for name in _SHARED}
        fixed = {name: getattr(self._defaults, name) for name in _FIXED}
        return TrainConfig(hidden=hidden, seed=seed, **shared, **fixed)

    def _seed(self):
        """An int seed: ``random_state`` itself when it is one (as ``--seed``), else a draw from it."""
        if isinstance(self.random_state, (int, np.integer)) and not isinstance(self.random_state, bool):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _log(self, *, validation):
        """The ``log`` of :func:`wasap.train.fit`: None unless verbose; names the evaluated data truly.

        Without validation data the per-epoch evaluation is of the training data, so its figures are
        labelled "training-set" rather than "test".
        """
        if not self.verbose:
            return None
        if validation:
            return print
        return lambda line: print(_EVALUATION_WORDS.sub(r"training-set \1", line))

    # -- training ------------------------------------------------------------------------------

    def _prepare(self, n_features, n_outputs, first):
        """The config of the next epochs; a new network when ``first``, else SET on the fitted one."""
        if first:
            config = self._config(self._seed())
            # Tiny data sets (normal with scikit-learn) make epsilon's Erdős–Rényi layers dense;
            # that is a warning on the command line, where it usually means a wrong epsilon.
            self.model_ = SparseMLP.from_config(n_features, n_outputs, config, warn=bool(self.verbose))
            self._trainer = SequentialTrainer(self.model_, config,
                                              governor=default_governor(config, default_threads()))
            self.n_iter_ = 0
            self.loss_curve_ = []
            self.history_ = []
            self._evolve_pending = False
            return config
        # set_params may have changed hyperparameters since the last call; the random streams go on.
        self._trainer.config = self._config(self._trainer.config.seed)
        if self._evolve_pending:
            # fit() skips SET after its last epoch, and partial_fit() after its one, so the topology step
            # between two calls happens here.
            self._trainer.end_of_epoch(self.n_iter_, last=False)
            self._evolve_pending = False
        return self._trainer.config

    def _fit(self, X, y, X_val, y_val, *, n_outputs, first):
        """Train for ``epochs`` epochs, from scratch when ``first``, else on from the fitted network.

        Parameters
        ----------
        X : (n_samples, n_features) float32
        y : (n_samples,) int64 class indices or (n_samples, n_outputs) float32 targets
        X_val, y_val : validation data like ``X``, ``y``, or None
        n_outputs : int
        first : bool
        """
        config = self._prepare(X.shape[1], n_outputs, first)
        # wasap.train.fit evaluates a test split every epoch. Without validation data the training data
        # stands in (inference is cheap next to a training epoch) and its metrics are dropped below.
        data = Dataset("training data", X, y, X if X_val is None else _same_kind(X_val, X),
                       y if X_val is None else y_val, getattr(self, "classes_", np.empty(0)))
        log = self._log(validation=X_val is not None)
        # A divergence is detected (non-finite loss or weights) and reported below; numpy's overflow
        # warnings on the way there would only say the same, less clearly.
        with np.errstate(over="ignore", invalid="ignore"):
            if self.workers > 1:
                summary = _fit_parallel()(self.model_, data, config, progress=False, log=log)
            else:
                summary = fit(self.model_, data, config, trainer=_ContinuedTrainer(self._trainer, self.n_iter_),
                              progress=False, log=log)
        for record in summary["history"]:
            record = dict(record, epoch=self.n_iter_ + record["epoch"])
            if X_val is None:
                record.pop("test_loss")
                record.pop("test_accuracy")
            self.history_.append(record)
            self.loss_curve_.append(record["train_loss"])
        self.n_iter_ += summary["epochs_completed"]
        # A fit stopped early (Ctrl-C, divergence) has run SET after its last good epoch already.
        self._evolve_pending = summary["stopped"] == "completed" and summary["epochs_completed"] > 0
        if summary["stopped"] in ("interrupted", "terminated"):
            self._abandon_unfinished_epoch()
        self._report_stop(summary["stopped"], summary["epochs_completed"], X)
        return self

    def _partial_fit(self, X, y, *, n_outputs, first):
        """One epoch of the sequential trainer on ``(X, y)``; see :meth:`_fit` for the arrays."""
        config = self._prepare(X.shape[1], n_outputs, first)
        set_threads(config.threads or default_threads())
        # As fit keeps the last good epoch: a diverged epoch leaves the network as the call found it.
        before = self.model_.copy()
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                loss, accuracy = self._trainer.train_epoch(X, y)
        except TrainingDiverged as error:
            self.model_.layers = before.layers
            self.model_.release_workspaces()
            raise self._diverged_at_once(X) from error
        except KeyboardInterrupt:
            self._abandon_unfinished_epoch()
            self._report_stop("interrupted", 0, X)
            return self
        self.n_iter_ += 1
        self._evolve_pending = True
        self.loss_curve_.append(loss)
        self.history_.append(dict(epoch=self.n_iter_, train_loss=loss, train_accuracy=accuracy,
                                  nnz=self.model_.nnz_per_layer()))
        return self

    def _abandon_unfinished_epoch(self):
        """Start the next call on a fresh epoch; the batches trained before a stop stay in the network.

        The trainer notes where an interrupted epoch stopped, to finish it on the same data; the next
        call here may bring other data (partial_fit's next chunk), and the rest of an epoch over these
        would cover only part of them.
        """
        self._trainer.position = None

    def _report_stop(self, stopped, epochs_completed, X):
        """Raise or warn for a training call that stopped early (``stopped`` as in wasap's summary.json).

        Parameters
        ----------
        stopped : str
            "completed", "diverged", "interrupted" (Ctrl-C) or "terminated" (SIGTERM).
        epochs_completed : int
            Epochs this call trained before it stopped.
        X : (n_samples, n_features) float32
            The training inputs, to tell whether their scale is the likely cause of a divergence.

        Raises
        ------
        wasap.train.TrainingDiverged
            When the call diverged before it completed an epoch.
        SystemExit
            With the command line's status after SIGTERM (143) when SIGTERM stopped the call, after the
            model trained so far is kept.
        """
        name = type(self).__name__
        if stopped == "diverged":
            if epochs_completed == 0:
                raise self._diverged_at_once(X)
            warnings.warn(f"{name}: training diverged after {epochs_completed} epoch(s); the model of the "
                          f"last good epoch is kept. {self._divergence_advice(X)}", ConvergenceWarning,
                          stacklevel=4)
        elif stopped == "interrupted":
            warnings.warn(f"{name}: training interrupted by user (Ctrl-C): keeping the model trained so far "
                          f"({self.n_iter_} epoch(s) in all).", ConvergenceWarning, stacklevel=4)
        elif stopped == "terminated":
            warnings.warn(f"{name}: training terminated (SIGTERM): keeping the model trained so far "
                          f"({self.n_iter_} epoch(s) in all), then exiting with status {EXIT_STATUS[stopped]}.",
                          ConvergenceWarning, stacklevel=4)
            raise SystemExit(EXIT_STATUS[stopped])

    def _diverged_at_once(self, X):
        """The TrainingDiverged of a call that diverged before it completed an epoch."""
        kept = ("the network is left as the previous call trained it" if self.n_iter_ > 0
                else "the network is left untrained")
        return TrainingDiverged(f"{type(self).__name__}: training diverged before it completed an epoch, so "
                                f"this call learnt nothing; {kept}. {self._divergence_advice(X)}")

    def _divergence_advice(self, X):
        """What to change after a divergence: the inputs' scale when it is far from 1, else the step size."""
        rms = _largest_column_rms(X)
        if rms > _UNSCALED_INPUT_RMS:
            return (f"The inputs are far from unit scale (a feature's root mean square is {rms:.3g}): "
                    f"standardise them, e.g. make_pipeline(StandardScaler(), {type(self).__name__}(...)).")
        return f"Lower lr (now {self.lr:g}), e.g. to {self.lr / 10:g}."

    def _validate_X(self, X, *, reset):
        """Features as float32 rows (canonical CSR when sparse); scikit-learn's checks of type and width, wasap's of
        values."""
        X = validate_data(self, X, reset=reset, accept_sparse=_SPARSE_FORMATS, dtype=np.float32,
                          ensure_all_finite=False)
        return validate_features(X)

    def _predict_output(self, X):
        check_is_fitted(self, "model_")
        return self.model_.predict_output(self._validate_X(X, reset=False))

    # -- persistence ---------------------------------------------------------------------------

    def __getstate__(self):
        # The network's batch buffers are caches, rebuilt on demand; a pickle needs only the weights.
        if hasattr(self, "model_"):
            self.model_.release_workspaces()
        return super().__getstate__()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class SparseMLPClassifier(ClassifierMixin, _BaseSparseMLP):
    """A truly sparse multilayer perceptron classifier, trained with SET (and optionally Importance Pruning).

    Every weight matrix exists only as its nonzeros (about ``epsilon * (n_in + n_out)`` of them per layer);
    after each epoch but the last, Sparse Evolutionary Training removes the ``zeta`` fraction of weights
    closest to zero and regrows as many at random. The output is a softmax trained with cross-entropy.

    Parameters
    ----------
    {hyperparameters}

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels.
    model_ : wasap.model.SparseMLP
        The trained network; ``model_.layer_matrix(i)`` is layer ``i`` as a ``scipy.sparse.csr_matrix``,
        ``model_.save(path)`` writes it for :meth:`wasap.SparseMLP.load`.
    n_iter_ : int
        Epochs trained, over all calls of :meth:`fit` (with ``warm_start``) and :meth:`partial_fit`.
    loss_curve_ : list of float
        Mean training loss (cross-entropy, with dropout) of each epoch.
    history_ : list of dict
        One record per epoch with the keys of a run's metrics.jsonl: epoch, train_loss, train_accuracy,
        nnz (per layer), timings, and test_loss, test_accuracy when :meth:`fit` was given ``X_val``, ``y_val``.
        (:meth:`partial_fit` rewires at the start of the next call, so its records show nnz before that.)
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when ``X`` was a DataFrame with string column names.

    Notes
    -----
    ``X`` may be a scipy.sparse matrix: it stays sparse (CSR, float32) through training and prediction, and
    the input layer works on its nonzeros, so memory and time follow them rather than ``n_features``
    (``X_val`` is made the same kind as ``X``). Dense inputs should be scaled (e.g. ``StandardScaler`` in a
    Pipeline), as the paper standardises every data set; sparse counts, tf-idf or indicators learn best as
    they are (per-feature scaling by the std, ``StandardScaler(with_mean=False)``, multiplies rare features
    by about ``1 / sqrt(frequency)``: docs/sparse-data.md), and sparse features of other magnitudes take
    ``StandardScaler(with_mean=False)``. On such data ``activation="relu"`` and ``batch_size`` of
    :func:`wasap.config.sparse_batch_size` (32, fewer for small sets; what the command line uses for
    sparse data) learn better than the paper's settings; the parameters are taken as given, so pass them.
    With ``workers > 1`` the workers keep a sparse ``X`` sparse too.

    When training stops early:

    - **Divergence** (a loss or weight turns NaN or infinite) before the first epoch of a :meth:`fit` or
      :meth:`partial_fit` call is complete raises :class:`wasap.train.TrainingDiverged`, whose message
      says what to change; the network is left untrained, or as the previous call trained it (with
      ``warm_start``, or after :meth:`partial_fit`). Later in a :meth:`fit`, the model of the last good
      epoch is kept, with a ``ConvergenceWarning``.
    - **Ctrl-C** (KeyboardInterrupt) during :meth:`fit` or :meth:`partial_fit` stops training with a
      ``ConvergenceWarning``, as MLPClassifier does, and keeps the model trained so far. An unfinished
      epoch is not counted in ``n_iter_``; its batches stay in the network, and the next call starts a
      fresh epoch.
    - **SIGTERM** during :meth:`fit` (where wasap's trainer catches it) keeps the model trained so far,
      warns, and then raises ``SystemExit(143)``, so that a terminated process still exits, with the
      status SIGTERM would have given it; catch SystemExit to go on with the model.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = make_pipeline(StandardScaler(), SparseMLPClassifier((200, 100), epsilon=10, epochs=30,
    ...                                                         random_state=0))
    >>> clf.fit(X[:1500], y[:1500]).score(X[1500:], y[1500:])  # doctest: +SKIP
    0.95...
    """

    def fit(self, X: ArrayLike, y: ArrayLike, X_val: ArrayLike = None,
            y_val: ArrayLike = None) -> "SparseMLPClassifier":
        """Train the network for ``epochs`` epochs.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Class labels of any sortable type; at least two classes.
        X_val : {array-like, sparse matrix} of shape (n_val, n_features), optional
        y_val : array-like of shape (n_val,), optional
            Validation data, evaluated after every epoch into ``history_`` (test_loss, test_accuracy);
            its labels must be among ``y``'s.

        Returns
        -------
        self
        """
        first = not (self.warm_start and hasattr(self, "model_"))
        # Two samples at least: one is always one class, and the error should say "1 sample".
        X, y = validate_data(self, X, y, reset=first, accept_sparse=_SPARSE_FORMATS, dtype=np.float32,
                             ensure_all_finite=False, ensure_min_samples=2)
        check_classification_targets(y)
        X, y = validate_training_data(X, y)
        y_index, _, classes = encode_labels(y)
        if not first and not np.array_equal(classes, self.classes_):
            raise ValueError(f"warm_start needs the classes of the previous fit, {self.classes_.tolist()}; "
                             f"y has {classes.tolist()}.")
        self.classes_ = classes
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither.")
        if X_val is not None:
            X_val = self._validate_X(X_val, reset=False)
            _, y_val, _ = encode_labels(self.classes_, y_val)
            check_consistent_length(X_val, y_val)
        return self._fit(X, y_index, X_val, y_val, n_outputs=len(classes), first=first)

    def partial_fit(self, X: ArrayLike, y: ArrayLike, classes: ArrayLike = None) -> "SparseMLPClassifier":
        """Train one epoch on ``(X, y)``.

        Successive calls train like successive epochs of :meth:`fit`: SET evolves the topology between
        them, and Importance Pruning follows its schedule over ``n_iter_``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        classes : array-like of shape (n_classes,), optional
            Every class that any call will see; required on the first call, ignored after.

        Returns
        -------
        self
        """
        first = _check_partial_fit_first_call(self, classes)
        X, y = validate_data(self, X, y, reset=first, accept_sparse=_SPARSE_FORMATS, dtype=np.float32,
                             ensure_all_finite=False)
        check_classification_targets(y)
        X = validate_features(X)
        # encode_labels with classes_ as the "training" labels refuses labels outside them, naming them.
        _, y_index, _ = encode_labels(self.classes_, y)
        return self._partial_fit(X, y_index, n_outputs=len(self.classes_), first=first)

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes), float32
            Columns in the order of ``classes_``.
        """
        return self._predict_output(X)

    def predict_log_proba(self, X: ArrayLike) -> np.ndarray:
        """Log of :meth:`predict_proba`, shape (n_samples, n_classes)."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Most probable class of each sample.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        best = self.predict_proba(X).argmax(axis=1)
        return self.classes_[best]


class SparseMLPRegressor(RegressorMixin, _BaseSparseMLP):
    """A truly sparse multilayer perceptron regressor: identity output, mean squared error.

    Its parameters and attributes are :class:`SparseMLPClassifier`'s (``alpha`` is the All-ReLU slope; L2
    is ``weight_decay``), less ``classes_`` and with the attributes below added. Four defaults differ,
    chosen for regression
    (``tools/regressor_vs_mlp.py`` compares them with MLPRegressor, both at their defaults):

    - ``activation``: ReLU. With All-ReLU, momentum SGD on small regression sets often diverged or drove
      the predictions far off; ReLU trains steadily there. ``alpha`` keeps the paper's value for
      ``activation="all-relu"``.
    - ``dropout``: none. Dropout's noise lands directly in the predicted values, where every bit of it is
      error (a classifier's argmax shrugs most of it off); MLPRegressor has no dropout either.
    - ``batch_size``: 32. Regression sets are often a few hundred samples, and batches of 32 give them
      four times the steps per epoch that 128 would.
    - ``zero_output``: on. The network starts out predicting the training targets' mean (R2 0) instead
      of a random function of the inputs, which a small data set may not pull it all the way back from;
      the hidden layers start learning as soon as the output weights leave 0.

    **Targets are standardised internally**: each output is centred and divided by its standard deviation
    over the training targets (a constant target is only centred), the network learns those, and
    :meth:`predict` maps its outputs back. Targets of any scale train alike and :meth:`score` does not
    depend on it. Fits with ``warm_start`` and :meth:`partial_fit` calls after the first keep the first
    call's statistics. ``loss_curve_`` and the losses in ``history_`` are therefore in standardised units:
    half the mean squared error of the standardised targets, summed over the outputs.

    Inputs are not rescaled: features of about unit scale (make_regression's standard normal ones,
    make_friedman1's in [0, 1]) train well as they are; put a ``StandardScaler`` in front of others.
    Divergence, Ctrl-C and SIGTERM are handled as :class:`SparseMLPClassifier`'s Notes describe.

    Parameters
    ----------
    {hyperparameters}

    Attributes
    ----------
    n_outputs_ : int
        Number of targets; :meth:`predict` returns shape (n_samples,) when it is 1.
    target_mean_ : ndarray of shape (n_outputs_,)
        Per-output mean of the targets the network was first fitted on.
    target_scale_ : ndarray of shape (n_outputs_,)
        Per-output standard deviation of those targets (1 for a constant target).
    """

    _defaults = _REGRESSOR

    def __init__(self, hidden_layer_sizes=_REGRESSOR.hidden, *, activation=_REGRESSOR.activation,
                 alpha=_REGRESSOR.alpha, epsilon=_REGRESSOR.epsilon, zeta=_REGRESSOR.zeta, init=_REGRESSOR.init,
                 epochs=_REGRESSOR.epochs, batch_size=_REGRESSOR.batch_size, micro_batch=_REGRESSOR.micro_batch,
                 augment=_REGRESSOR.augment,
                 lr=_REGRESSOR.lr, lr_fan_in=_REGRESSOR.lr_fan_in, output_lr=_REGRESSOR.output_lr,
                 zero_output=_REGRESSOR.zero_output, momentum=_REGRESSOR.momentum,
                 weight_decay=_REGRESSOR.weight_decay, dropout=_REGRESSOR.dropout,
                 importance_pruning=_REGRESSOR.importance_pruning, ip_start=_REGRESSOR.ip_start,
                 ip_every=_REGRESSOR.ip_every, ip_percentile=_REGRESSOR.ip_percentile, threads=_REGRESSOR.threads,
                 workers=_REGRESSOR.workers, sync=_REGRESSOR.sync, phase2_start=_REGRESSOR.phase2_start,
                 warmup_epochs=_REGRESSOR.warmup_epochs, stall_timeout=_REGRESSOR.stall_timeout,
                 warm_start=False, random_state=None, verbose=False):
        super().__init__(
            hidden_layer_sizes, activation=activation, alpha=alpha, epsilon=epsilon, zeta=zeta, init=init,
            epochs=epochs, batch_size=batch_size, micro_batch=micro_batch, augment=augment, lr=lr, lr_fan_in=lr_fan_in,
            output_lr=output_lr, zero_output=zero_output, momentum=momentum, weight_decay=weight_decay,
            dropout=dropout, importance_pruning=importance_pruning, ip_start=ip_start, ip_every=ip_every,
            ip_percentile=ip_percentile, threads=threads, workers=workers, sync=sync, phase2_start=phase2_start,
            warmup_epochs=warmup_epochs, stall_timeout=stall_timeout, warm_start=warm_start,
            random_state=random_state, verbose=verbose,
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X: ArrayLike, y: ArrayLike, X_val: ArrayLike = None,
            y_val: ArrayLike = None) -> "SparseMLPRegressor":
        """Train the network for ``epochs`` epochs.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        X_val : {array-like, sparse matrix} of shape (n_val, n_features), optional
        y_val : array-like of shape (n_val,) or (n_val, n_outputs), optional
            Validation data, evaluated after every epoch into ``history_`` (test_loss).

        Returns
        -------
        self
        """
        first = not (self.warm_start and hasattr(self, "model_"))
        X, y = self._validate_Xy(X, y, reset=first)
        if not first and y.shape[1] != self.n_outputs_:
            raise ValueError(f"warm_start needs {self.n_outputs_} target(s) as in the previous fit; "
                             f"y has {y.shape[1]}.")
        self.n_outputs_ = y.shape[1]
        if first:
            self._fit_target_scaling(y)
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither.")
        if X_val is not None:
            X_val, y_val = self._validate_Xy(X_val, y_val, reset=False)
            y_val = self._scale_targets(y_val)
        return self._fit(X, self._scale_targets(y), X_val, y_val, n_outputs=self.n_outputs_, first=first)

    def partial_fit(self, X: ArrayLike, y: ArrayLike) -> "SparseMLPRegressor":
        """Train one epoch on ``(X, y)``; successive calls train like the epochs of :meth:`fit`.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)

        Returns
        -------
        self
        """
        first = not hasattr(self, "model_")
        X, y = self._validate_Xy(X, y, reset=first)
        if first:
            self.n_outputs_ = y.shape[1]
            self._fit_target_scaling(y)
        elif y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} target(s) but the regressor was fitted with {self.n_outputs_}.")
        return self._partial_fit(X, self._scale_targets(y), n_outputs=self.n_outputs_, first=first)

    def _validate_Xy(self, X, y, *, reset):
        """``X`` float32 rows and ``y`` as float64 of shape (n_samples, n_outputs)."""
        X, y = validate_data(self, X, y, reset=reset, accept_sparse=_SPARSE_FORMATS, dtype=np.float32,
                             ensure_all_finite=False, multi_output=True, y_numeric=True)
        X = validate_features(X)
        return X, np.reshape(np.asarray(y, dtype=np.float64), (y.shape[0], -1))

    def _fit_target_scaling(self, y):
        """Set ``target_mean_`` and ``target_scale_`` from the targets ``y``, shape (n_samples, n_outputs).

        A constant target gets scale 1, so that it is only centred (its computed standard deviation is
        rounding error, not zero).
        """
        self.target_mean_ = y.mean(axis=0)
        self.target_scale_ = np.where(np.ptp(y, axis=0) == 0, 1.0, y.std(axis=0))

    def _scale_targets(self, y):
        """Targets ``y`` (n_samples, n_outputs) standardised, as float32 in the trainer's layout."""
        return np.ascontiguousarray((y - self.target_mean_) / self.target_scale_, dtype=np.float32)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predicted targets.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_outputs), float64
            The network computes in float32; float64 is what scikit-learn's regressors return.
        """
        output = self._predict_output(X) * self.target_scale_ + self.target_mean_
        return output.ravel() if self.n_outputs_ == 1 else output


#: What the estimators' docstrings add to a shared hyperparameter's declared help.
_PARAMETER_NOTES = {
    "alpha": "**Not** an L2 penalty as in MLPClassifier: that is ``weight_decay``.",
    "epsilon": "On small data (a few features or classes) layers may become dense; that is silent unless "
               "``verbose``.",
    "epochs": "Per :meth:`fit` (MLPClassifier's ``max_iter``); there is no early stopping, every epoch runs.",
    "lr": "MLPClassifier's ``learning_rate_init``.",
    "weight_decay": "MLPClassifier's ``alpha``.",
    "threads": "Set 1 when running several fits at once (``GridSearchCV(n_jobs=...)``): numba's threads "
               "slow down many-fold when they compete for cores.",
    "workers": "Used by :meth:`fit` (:func:`wasap.parallel.fit_parallel`); :meth:`partial_fit` is always "
               "sequential.",
}

#: The docstring entries of the parameters that only the estimators have.
_ESTIMATOR_ONLY_DOC = """\
warm_start : bool, default=False
    :meth:`fit` continues training the fitted network (and its epoch count) instead of starting anew.
random_state : int, RandomState instance or None, default=None
    Seeds every random stream (topology, weights, shuffling, dropout). An int is used as the command
    line's ``--seed``, so ``random_state=0`` trains the same network as ``python -m wasap.run --seed 0``.
verbose : bool, default=False
    Print one line per epoch, and warn when epsilon makes a hidden layer dense. The line's evaluation
    is of ``X_val`` ("test accuracy"), or without it of the training data ("training-set accuracy").
"""


def _document_parameters(cls):
    """Fill the Parameters section of ``cls``'s docstring from the declarations and its defaults."""
    defaults = cls._defaults
    entries = (f"hidden_layer_sizes : int or tuple of int, default={value_text(defaults.hidden)}\n"
               "    Neurons of each hidden layer (TrainConfig's ``hidden``); an int is one layer.\n"
               + numpydoc_parameters(_SHARED, defaults, notes=_PARAMETER_NOTES) + _ESTIMATOR_ONLY_DOC)
    cls.__doc__ = fill_parameters_doc(cls.__doc__, entries)


_document_parameters(SparseMLPClassifier)
_document_parameters(SparseMLPRegressor)


def _same_kind(X_val, X):
    """Validation features of the kind of the training features ``X``: sparse (CSR) with sparse, dense with dense."""
    if scipy.sparse.issparse(X) and not scipy.sparse.issparse(X_val):
        return validate_features(scipy.sparse.csr_matrix(X_val), name="X_val")
    if not scipy.sparse.issparse(X) and scipy.sparse.issparse(X_val):
        return X_val.toarray()
    return X_val


def _largest_column_rms(X):
    """The largest root mean square over the columns of ``X`` (dense, or CSR without duplicates), as a float."""
    if scipy.sparse.issparse(X):
        squares = np.bincount(X.indices, weights=np.square(X.data, dtype=np.float64), minlength=X.shape[1])
        return float(np.sqrt(np.max(squares) / X.shape[0]))
    return float(np.sqrt(np.max(np.mean(np.square(X, dtype=np.float64), axis=0))))


def _fit_parallel():
    """:func:`wasap.parallel.fit_parallel`, or a ValueError saying that this wasap lacks it."""
    try:
        from .parallel import fit_parallel
    except ImportError as error:
        raise ValueError(f"workers > 1 needs wasap's parallel trainer (wasap.parallel.fit_parallel), which "
                         f"cannot be imported here ({error}); use workers=1, the sequential trainer.") from error
    return fit_parallel
