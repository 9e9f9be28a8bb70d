"""Standardisation, and what a model's inputs went through before training, kept with the model.

:func:`standardize` scales each feature by the training split's statistics; it and
:meth:`Preprocessing.transform` (the same scaling applied to new raw rows) share one computation,
:func:`standardize_in_place`. A :class:`Preprocessing` holds the per-feature mean and scale the
training split was standardised with (or none, for raw features: ``--no-standardize``, and sparse
features unless ``--standardize``), the number of features, and the label values behind the class
indices.

Sparse features (scipy.sparse), when standardised, are scaled without centering, ``x / scale``, as
scikit-learn's ``StandardScaler(with_mean=False)`` does: subtracting a mean would make every zero
nonzero, and the data dense. Their scale is the train split's standard deviation, zeros included, computed from the
nonzeros (:func:`sparse_column_scale`); the preprocessing then has a scale and no mean.
:meth:`SparseMLP.save <wasap.model.SparseMLP.save>` stores it in the model file and
:meth:`SparseMLP.load <wasap.model.SparseMLP.load>` restores it, so that
:meth:`SparseMLP.predict <wasap.model.SparseMLP.predict>` takes raw rows.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from .data.validation import DataError, rows_per_chunk, validate_features

#: Names of the model file's arrays (the class labels keep the model file's own ``classes`` key).
N_FEATURES_KEY = "preprocessing_n_features"
MEAN_KEY = "preprocessing_mean"
SCALE_KEY = "preprocessing_scale"
CLASSES_KEY = "classes"


class Preprocessing:
    """The transformation from raw feature rows to a model's inputs, and the model's label values.

    Parameters
    ----------
    n_features : int
        Features of a raw row.
    mean, scale : (n_features,) float64, optional
        Standardisation ``(x - mean) / scale``; ``scale`` alone scales without centering,
        ``x / scale`` (sparse training data); neither: raw features go in unchanged.
    classes : (n_classes,) array, optional
        The label value of each class index (``Dataset.classes``); None for a model that
        predicts values rather than classes.
    """

    def __init__(self, n_features, *, mean=None, scale=None, classes=None):
        self.n_features = int(n_features)
        if self.n_features < 1:
            raise ValueError(f"n_features must be a positive integer, got {n_features!r}.")
        if mean is not None and scale is None:
            raise ValueError("give scale with mean (standardised features), scale alone (features scaled without "
                             "centering) or neither (raw features).")
        self.mean = None if mean is None else _statistic(mean, self.n_features, "mean")
        self.scale = None if scale is None else _statistic(scale, self.n_features, "scale")
        if self.scale is not None and not (self.scale > 0).all():
            raise ValueError("scale must be positive for every feature (a constant feature has scale 1).")
        self.classes = None if classes is None else class_labels(classes)

    @property
    def standardized(self):
        """Whether features are scaled, centred or not (False: raw features go in unchanged)."""
        return self.scale is not None

    @property
    def centered(self):
        """Whether a mean is subtracted from the features (False for sparse training data, and for raw features)."""
        return self.mean is not None

    def transform(self, X):
        """Raw rows as the model's inputs.

        Parameters
        ----------
        X : array-like or scipy.sparse matrix of shape (n_samples, n_features)
            Raw features, in the columns and order of the training data.

        Returns
        -------
        ndarray of shape (n_samples, n_features), float32, C-contiguous; or scipy.sparse CSR
            A standardised copy (``X`` itself is never modified). Sparse rows stay sparse
            (:func:`wasap.data.validate_features`), unless the preprocessing centres them (a
            model trained on dense data): centred rows are dense, so they are densified.

        Raises
        ------
        DataError
            For features that :func:`wasap.data.validate_features` rejects, or a number of
            columns other than ``n_features``.
        """
        checked = validate_features(X, name="X")
        if checked.shape[1] != self.n_features:
            raise DataError(
                f"X has {checked.shape[1]} features (columns) but the model was trained on {self.n_features}; "
                "give rows with the training data's columns, in the same order (and no label column)."
            )
        if not self.standardized:
            return checked
        if scipy.sparse.issparse(checked) and self.centered:
            checked = checked.toarray()
        out = checked.copy() if _shares_memory(checked, X) else checked
        standardize_in_place(out, self.mean, self.scale)
        return out

    def label_indices(self, y):
        """Class index of each label.

        Parameters
        ----------
        y : array-like of shape (n_samples,)
            Labels with the values of ``classes``.

        Returns
        -------
        ndarray of shape (n_samples,), int64

        Raises
        ------
        DataError
            When there are no classes (a model of values) or a label is not among them
            (the message names the unknown labels and the model's classes).
        """
        if self.classes is None:
            raise DataError("this model predicts values, not classes: it has no labels to compare with.")
        y = np.asarray(y)
        if y.ndim != 1:
            raise DataError(f"labels must be 1-D, one per sample; got shape {y.shape}.")
        if self.classes.dtype.kind == "U" and y.dtype.kind != "U":
            # Text labels that all look like numbers are read as numbers; compare them as text.
            y = y.astype(str)
        order = np.argsort(self.classes, kind="stable")
        try:
            position = order[np.minimum(np.searchsorted(self.classes[order], y), len(order) - 1)]
            unknown = np.asarray(self.classes[position] != y, dtype=bool)
        except TypeError:  # numbers against text: none can match
            position = np.zeros(len(y), dtype=np.int64)
            unknown = np.ones(len(y), dtype=bool)
        if unknown.any():
            shown = ", ".join(repr(value) for value in np.unique(y[unknown])[:10].tolist())
            raise DataError(
                f"{int(unknown.sum())} label(s) are not among the model's classes ({shown}"
                f"{', ...' if len(np.unique(y[unknown])) > 10 else ''}), the first at row "
                f"{int(np.flatnonzero(unknown)[0])}; the model knows {self.classes.tolist()[:20]}. Check that "
                "the file is of the data the model was trained on, and that its label column is the training one."
            )
        return position.astype(np.int64)

    def to_arrays(self):
        """The model file's arrays: a dict of name to ndarray (:data:`N_FEATURES_KEY`, ...)."""
        arrays = {N_FEATURES_KEY: np.array(self.n_features, dtype=np.int64)}
        if self.centered:
            arrays[MEAN_KEY] = self.mean
        if self.standardized:
            arrays[SCALE_KEY] = self.scale
        if self.classes is not None:
            arrays[CLASSES_KEY] = self.classes
        return arrays

    @classmethod
    def from_arrays(cls, arrays):
        """The preprocessing that :meth:`to_arrays` wrote, or None when ``arrays`` holds none.

        Parameters
        ----------
        arrays : mapping of str to ndarray
            A model file's arrays.

        Raises
        ------
        ValueError
            When the arrays are there but not of the shapes, types or values :meth:`to_arrays` writes.
        """
        if N_FEATURES_KEY not in arrays:
            return None
        count = np.asarray(arrays[N_FEATURES_KEY])
        if count.shape != () or count.dtype.kind not in "iu":
            raise ValueError(f"{N_FEATURES_KEY} must be one integer, got an array of shape {count.shape} "
                             f"and dtype {count.dtype}")
        for key in (MEAN_KEY, SCALE_KEY):
            value = arrays.get(key)
            if value is not None and np.asarray(value).dtype.kind != "f":
                raise ValueError(f"{key} must hold floating-point numbers, got dtype {np.asarray(value).dtype}")
        try:
            return cls(int(count), mean=arrays.get(MEAN_KEY), scale=arrays.get(SCALE_KEY),
                       classes=arrays.get(CLASSES_KEY))
        except ValueError as error:
            raise ValueError(f"the preprocessing arrays are inconsistent: {error}") from error

    def __repr__(self):
        kind = ("standardized" if self.centered else "scaled without centering") if self.standardized else "raw"
        classes = "values" if self.classes is None else f"{len(self.classes)} classes"
        return f"Preprocessing({self.n_features} features, {kind}, {classes})"


def standardize(X_train, X_test=None, *, copy: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Standardise each feature with the train split's mean and standard deviation.

    Sparse splits (scipy.sparse, both) are scaled without centering (the module's docstring says why).

    Parameters
    ----------
    X_train : array-like or scipy.sparse matrix of shape (n_train, n_features)
        The statistics come from this split only (population std, ddof=0).
    X_test : array-like or scipy.sparse matrix of shape (n_test, n_features), optional
        Transformed with the train split's statistics.
    copy : bool
        False standardises float32 C-contiguous inputs (canonical float32 CSR when sparse) in place
        (no extra memory for multi-GB data).

    Returns
    -------
    X_train, X_test : ndarrays of shapes (n_train, n_features) and (n_test, n_features), float32
        (CSR matrices when sparse). ``X_test`` is None when none was given. A feature that is
        constant on the train split has std 0; it is divided by 1 instead, so it becomes exactly 0
        on the train split when centred.

    Raises
    ------
    DataError
        For features :func:`wasap.data.validate_features` refuses, or splits of different widths.
    """
    train = _writable_features(X_train, "X_train", copy)
    test = None if X_test is None else _writable_features(X_test, "X_test", copy)
    if test is not None and test.shape[1] != train.shape[1]:
        raise DataError(
            f"X_train has {train.shape[1]} features but X_test has {test.shape[1]}; both splits need the "
            "same columns in the same order."
        )
    if test is not None and scipy.sparse.issparse(train) != scipy.sparse.issparse(test):
        raise DataError("one of X_train and X_test is sparse and the other dense; give both splits the same kind.")
    standardize_splits_in_place(train, test)
    return train, test


def standardize_splits_in_place(X_train: np.ndarray, X_test: np.ndarray | None = None
                                ) -> tuple[np.ndarray, np.ndarray]:
    """Standardise both splits in place with ``X_train``'s per-column statistics.

    Parameters
    ----------
    X_train : ndarray of shape (n_train, n_features), float32, writable, finite
        Or a scipy.sparse CSR matrix of float32 values (:func:`wasap.data.validate_features`),
        scaled without centering.
    X_test : ndarray of shape (n_test, n_features), float32, writable, finite, optional
        Of the same kind as ``X_train``.

    Returns
    -------
    mean, scale : ndarrays of shape (n_features,), float64
        The statistics of :func:`column_statistics`; for sparse splits ``mean`` is None and
        ``scale`` that of :func:`sparse_column_scale`.
    """
    if scipy.sparse.issparse(X_train):
        mean, scale = None, sparse_column_scale(X_train)
    else:
        mean, scale = column_statistics(X_train)
    for X in (X_train, X_test):
        if X is not None:
            standardize_in_place(X, mean, scale)
    return mean, scale


def column_statistics(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation of ``X``, computed in row blocks.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features), finite

    Returns
    -------
    mean, scale : ndarrays of shape (n_features,), float64
        The population std (ddof=0), 1 for a constant column.
    """
    step = rows_per_chunk(X.shape[1], X.itemsize)
    total = np.zeros(X.shape[1])
    lowest = np.full(X.shape[1], np.inf)
    highest = np.full(X.shape[1], -np.inf)
    for start in range(0, X.shape[0], step):
        block = X[start:start + step]
        total += block.sum(axis=0, dtype=np.float64)
        np.minimum(lowest, block.min(axis=0), out=lowest)
        np.maximum(highest, block.max(axis=0), out=highest)
    mean = total / X.shape[0]
    # Rounding makes a float64 mean differ from a constant column's value; using the value itself keeps
    # such columns exactly 0 instead of tiny differences divided by a tiny std.
    constant = lowest == highest
    mean[constant] = lowest[constant]
    squares = np.zeros(X.shape[1])
    for start in range(0, X.shape[0], step):
        centred = X[start:start + step] - mean
        squares += np.einsum("ij,ij->j", centred, centred)
    std = np.sqrt(squares / X.shape[0])
    std[constant | (std == 0)] = 1.0
    return mean, std


def sparse_column_scale(X) -> np.ndarray:
    """Per-column standard deviation of a sparse ``X``, zeros included, from its nonzeros alone.

    What scikit-learn's ``StandardScaler(with_mean=False)`` divides by: the population std
    (ddof=0) of each column over all ``n_samples`` rows, computed in float64 as
    ``(sum over nonzeros of (x - mean)**2 + n_zeros * mean**2) / n_samples``. Temporaries are
    of the nonzeros (in blocks), of the columns that hold a value, and a byte per column; nothing
    of ``n_samples x n_features``.

    Parameters
    ----------
    X : scipy.sparse CSR of shape (n_samples, n_features), finite, no duplicate entries

    Returns
    -------
    scale : ndarray of shape (n_features,), float64
        1 for a constant column (all its values equal, zeros included) or one of std 0.
    """
    n_samples, n_features = X.shape
    stop = int(X.indptr[-1])
    indices, values = X.indices[:stop], X.data[:stop]
    blocks = [(start, min(start + _SPARSE_BLOCK, stop)) for start in range(0, stop, _SPARSE_BLOCK)]
    # The statistics are kept for the columns that hold a value only: a file may name feature 10**8 and
    # hold a few thousand; the others are all zeros, of scale 1.
    seen = np.zeros(n_features, dtype=bool)
    for start, end in blocks:
        seen[indices[start:end]] = True
    occurring = np.flatnonzero(seen)
    del seen
    count = np.zeros(occurring.shape[0])
    total = np.zeros(occurring.shape[0])
    for start, end in blocks:
        columns = np.searchsorted(occurring, indices[start:end])
        count += np.bincount(columns, minlength=occurring.shape[0])
        total += np.bincount(columns, weights=values[start:end].astype(np.float64), minlength=occurring.shape[0])
    mean = total / n_samples
    # A column's extremes over its stored values, and over its zeros where it has any.
    full = count == n_samples
    lowest = np.where(full, np.inf, 0.0)
    highest = np.where(full, -np.inf, 0.0)
    squares = (n_samples - count) * mean * mean
    for start, end in blocks:
        columns, block = np.searchsorted(occurring, indices[start:end]), values[start:end].astype(np.float64)
        np.minimum.at(lowest, columns, block)
        np.maximum.at(highest, columns, block)
        centred = block - mean[columns]
        squares += np.bincount(columns, weights=centred * centred, minlength=occurring.shape[0])
    occurring_std = np.sqrt(squares / n_samples)
    occurring_std[(lowest == highest) | (occurring_std == 0)] = 1.0
    std = np.ones(n_features)
    std[occurring] = occurring_std
    return std


def standardize_in_place(X, mean: np.ndarray | None, scale: np.ndarray) -> None:
    """Standardise the columns of ``X`` in place: ``(X - mean) / scale``, in ``X``'s own dtype.

    The training split (:func:`wasap.load_dataset`) and new rows (:meth:`Preprocessing.transform`)
    both go through this one computation, so that a raw row becomes the same input either way.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features), floating point, writable; or scipy.sparse CSR
        A sparse ``X`` has its stored values divided (``mean`` must be None).
    mean : ndarray of shape (n_features,), or None
        None scales without centering: ``X / scale``.
    scale : ndarray of shape (n_features,)

    Raises
    ------
    ValueError
        For a sparse ``X`` with a ``mean``: centering would densify it.
    """
    scale = np.asarray(scale).astype(X.dtype)
    if scipy.sparse.issparse(X):
        if mean is not None:
            raise ValueError("a sparse X is scaled without centering: give mean=None, or a dense X.")
        stop = int(X.indptr[-1])
        for start in range(0, stop, _SPARSE_BLOCK):
            end = min(start + _SPARSE_BLOCK, stop)
            X.data[start:end] /= scale[X.indices[start:end]]
        return
    if mean is not None:
        X -= np.asarray(mean).astype(X.dtype)
    X /= scale


#: Nonzeros per block of the sparse statistics and scaling: their temporaries stay a few MiB.
_SPARSE_BLOCK = 1 << 19


def _writable_features(X, name: str, copy: bool):
    """Validated float32 features that are safe to modify: a copy when ``copy`` and they share the input."""
    checked = validate_features(X, name=name)
    if scipy.sparse.issparse(checked):
        if (copy and _shares_memory(checked, X)) or not checked.data.flags.writeable:
            checked = checked.copy()
    elif (copy and isinstance(X, np.ndarray) and np.may_share_memory(X, checked)) or not checked.flags.writeable:
        checked = checked.copy()
    return checked


def _shares_memory(checked, X) -> bool:
    """Whether the validated features ``checked`` may share values with the caller's ``X``."""
    if scipy.sparse.issparse(checked):
        return scipy.sparse.issparse(X) and np.may_share_memory(checked.data, X.data)
    return np.may_share_memory(checked, X)


def _statistic(values, n_features, name):
    """``values`` as a finite float64 vector of ``n_features`` entries; ValueError otherwise."""
    array = np.array(values, dtype=np.float64)
    if array.shape != (n_features,):
        raise ValueError(f"{name} must have shape ({n_features},), one value per feature, got {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values.")
    return array


def class_labels(classes):
    """Class labels as a model file stores them.

    Parameters
    ----------
    classes : array-like of shape (n_classes,)
        Numbers or text; an object array (labels from pandas, say) becomes text.

    Returns
    -------
    ndarray of shape (n_classes,)
        Of a numeric or text dtype, which loads without pickle.

    Raises
    ------
    ValueError
        For another shape or dtype.
    """
    array = np.asarray(classes)
    if array.dtype.kind == "O":
        # Object arrays (labels from pandas, say) would need pickle in the model file.
        array = array.astype(str)
    if array.ndim != 1 or array.dtype.kind not in "biufU":
        raise ValueError(f"classes must be a 1-D array of numbers or text, got shape {array.shape} "
                         f"and dtype {array.dtype}.")
    return array
