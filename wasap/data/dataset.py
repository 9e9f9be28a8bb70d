"""The :class:`Dataset`: a train/test pair of arrays, checked once, when it is made."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

# wasap.preprocessing builds on .validation; imported as a module, either package may be imported first.
from .. import preprocessing
from .validation import DataError, check_splits

__all__ = ["Dataset"]


@dataclass(eq=False)
class Dataset:
    """A train/test pair of feature matrices with encoded labels, ready for training.

    Making a Dataset checks and converts its arrays (:func:`wasap.data.validation.check_splits`):
    features become float32, C-contiguous (no copy when they already are) and must be finite;
    scipy.sparse features stay sparse, as canonical CSR matrices of float32 values
    (:func:`wasap.data.validate_features`; both splits sparse, or both dense), and train
    without ever being densified (:attr:`is_sparse`);
    labels must be class indices of ``classes``, or, when ``classes`` is empty, regression
    targets (float32). :func:`wasap.fit` and :func:`wasap.fit_parallel` take a Dataset as it is,
    so its arrays should not be replaced afterwards: make a new Dataset instead.

    Parameters
    ----------
    name : str
        Short name, e.g. ``"madelon"`` or the file name it was read from.
    X_train : array-like or scipy.sparse matrix of shape (n_train, n_features)
        Training features.
    y_train : array-like of shape (n_train,) or (n_train, n_outputs)
        Class indices 0..n_classes-1 (for regression: targets, and ``classes`` empty).
    X_test : array-like or scipy.sparse matrix of shape (n_test, n_features)
        Features of the test split (evaluated after every epoch), preprocessed like ``X_train``
        and sparse when it is; ``X_train`` itself to evaluate on the training data.
    y_test : array-like of shape (n_test,) or (n_test, n_outputs)
        Labels of the test split, encoded like ``y_train``.
    classes : array-like of shape (n_classes,)
        The original label values, sorted; ``classes[y]`` gives the user's labels back. Empty for
        regression targets.
    description : str
        One line: where the data came from and its shape.
    feature_mean, feature_scale : array-like of shape (n_features,), optional
        The statistics the features were standardised with, ``(x - mean) / scale``; None when
        the features are raw values. Sparse features are scaled without centering, ``x / scale``:
        ``feature_scale`` alone, ``feature_mean`` None.

    Attributes
    ----------
    X_train, X_test : ndarray of shape (n_train, n_features) and (n_test, n_features), float32
        Or scipy.sparse CSR matrices of float32 values.
    y_train, y_test : ndarray of shape (n_train,) and (n_test,), int64
        For regression: float32 targets of shape (n, ) or (n, n_outputs).
    classes : ndarray of shape (n_classes,)

    Raises
    ------
    DataError
        For arrays that cannot be trained on (the message says which and why).
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    classes: np.ndarray
    description: str = ""
    feature_mean: np.ndarray | None = None
    feature_scale: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.X_train, self.y_train, self.X_test, self.y_test, self.classes = check_splits(
            self.name, self.X_train, self.y_train, self.X_test, self.y_test, self.classes)
        if self.feature_mean is not None and self.feature_scale is None:
            raise DataError("give feature_scale with feature_mean (standardised features), feature_scale alone "
                            "(features scaled without centering) or neither (raw features).")

    @property
    def preprocessing(self) -> preprocessing.Preprocessing:
        """The :class:`wasap.preprocessing.Preprocessing` that turns raw rows into rows of this data set."""
        classes = self.classes if len(self.classes) else None
        return preprocessing.Preprocessing(self.n_features, mean=self.feature_mean, scale=self.feature_scale,
                                           classes=classes)

    @property
    def is_sparse(self) -> bool:
        """Whether the features are scipy.sparse CSR matrices (else dense arrays)."""
        return scipy.sparse.issparse(self.X_train)

    @property
    def n_features(self) -> int:
        """Number of input features (columns of ``X_train``)."""
        return self.X_train.shape[1]

    @property
    def n_classes(self) -> int:
        """Number of classes (0 for regression targets)."""
        return len(self.classes)

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return self.X_train.shape[0]

    @property
    def n_test(self) -> int:
        """Number of test samples."""
        return self.X_test.shape[0]
