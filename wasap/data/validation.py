"""Checks of features and labels, with the conversions training relies on, and label encoding.

Every check raises :class:`DataError` (a ``ValueError``) whose message says what is wrong and how to
fix it. :func:`check_splits` is the check a :class:`~wasap.data.Dataset` makes of its arrays when it
is built, so that the trainers can take a Dataset as it is.

Features are dense float32 rows or, given as a scipy.sparse matrix, a canonical CSR matrix of float32
values (:func:`validate_features`): sparse data stays sparse, and its checks look at the nonzeros only.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

__all__ = ["DataError", "check_splits", "encode_labels", "validate_features", "validate_training_data"]

# Row blocks of about 4 MiB keep temporaries small (and cache-resident) when passing over big matrices.
_CHUNK_BYTES = 1 << 22


class DataError(ValueError):
    """A problem with input data; the message says what is wrong and how to fix it."""


# ---------------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------------


def validate_features(X, *, name: str = "X"):
    """Check a feature matrix and return it as float32, C-contiguous, or as canonical CSR when sparse.

    Parameters
    ----------
    X : array-like or scipy.sparse matrix or array of shape (n_samples, n_features)
        Numbers (bool, int or float; strings only when each holds a number). A sparse ``X`` stays
        sparse (see Returns).
    name : str
        How to call ``X`` in error messages.

    Returns
    -------
    ndarray of shape (n_samples, n_features), float32, C-contiguous; or scipy.sparse CSR
        ``X`` itself when it already is one, else a converted copy. A sparse ``X`` becomes CSR (a
        matrix or an array as ``X`` was) with float32 values, sorted indices and no duplicate
        entries (duplicates are summed), its ``indptr`` and ``indices`` both int32, or both int64
        when the number of nonzeros or of features needs it; only its nonzeros are checked.

    Raises
    ------
    DataError
        For input that is not 2-D, has no samples or no features, holds values that are not numbers,
        or holds NaN or infinite values (the message gives their count and the first position); for a
        sparse ``X``, also a damaged CSR structure.
    """
    if scipy.sparse.issparse(X):
        return _sparse_features(X, name)
    try:
        array = np.asarray(X)
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"{name} cannot be read as a 2-D array ({exc}); give a numpy array or a list of rows "
            "that all have the same number of values."
        ) from exc
    _check_feature_shape(array, name)
    converted = _as_float32(array, name)
    _raise_if_not_finite(converted, name)
    return converted


def _sparse_features(X, name: str):
    """A scipy.sparse ``X`` as :func:`validate_features` returns it: canonical CSR, float32, checked."""
    _check_feature_shape(X, name)
    if X.dtype.kind not in "biuf":
        raise DataError(
            f"{name} is a sparse matrix of dtype {X.dtype}, which is not a real number type; convert its values "
            "to numbers first."
        )
    original = X
    if X.format != "csr":
        X = X.tocsr()
    if X.dtype != np.float32:
        with np.errstate(over="ignore"):  # values beyond float32's range become inf, reported below
            X = X.astype(np.float32)
    _check_csr_structure(X, name)
    if X.indices.shape[0] != X.indptr[-1]:
        # Values past indptr[-1] belong to no row: drop them, so that every array is of the nonzeros.
        X = X.copy() if X is original else X
        X.prune()
    if not X.has_canonical_format:
        X = X.copy() if X is original else X
        X.sum_duplicates()
    # The kernels are compiled for one index type: the narrowest that holds the nonzeros and features.
    index_dtype = np.int32 if max(X.nnz, X.shape[1]) < 2**31 else np.int64
    if X.indices.dtype != index_dtype or X.indptr.dtype != index_dtype:
        X = X.copy() if X is original else X
        # Set directly: scipy's constructor would choose the index type itself.
        X.indices = X.indices.astype(index_dtype)
        X.indptr = X.indptr.astype(index_dtype)
    _raise_if_not_finite_sparse(X, name)
    return X


def _check_csr_structure(X, name: str) -> None:
    """DataError unless ``X``'s CSR arrays describe a matrix of its shape (scipy's own check would modify ``X``)."""
    n_rows, n_columns = X.shape
    indptr, indices = X.indptr, X.indices
    problem = None
    if indptr.ndim != 1 or indices.ndim != 1 or X.data.ndim != 1 or indices.shape != X.data.shape:
        problem = "its data, indices and indptr must be 1-D, with as many indices as values"
    elif indptr.dtype.kind not in "iu" or indices.dtype.kind not in "iu":
        problem = "its indptr and indices must be integers"
    elif indptr.shape[0] != n_rows + 1 or indptr[0] != 0 or indptr[-1] > indices.shape[0]:
        problem = f"its indptr must have {n_rows + 1} entries, start at 0 and end at most at the number of values"
    elif n_rows and (np.diff(indptr) < 0).any():
        problem = "its indptr decreases"
    elif indptr[-1] and (indices[:indptr[-1]].min() < 0 or indices[:indptr[-1]].max() >= n_columns):
        problem = f"a column index lies outside 0..{n_columns - 1}"
    if problem is not None:
        raise DataError(f"{name} is a damaged CSR matrix: {problem}; build it again with scipy.sparse.csr_matrix.")


def _raise_if_not_finite_sparse(X, name: str) -> None:
    """DataError with the count and first position of NaN/inf values among the nonzeros of a CSR ``X``."""
    bad = np.flatnonzero(~np.isfinite(X.data))
    if bad.shape[0]:
        position = int(bad[0])
        row = int(np.searchsorted(X.indptr, position, side="right")) - 1
        raise DataError(
            f"{name} holds {bad.shape[0]} NaN or infinite value(s); the first is {X.data[position]} at row {row}, "
            f"column {int(X.indices[position])}. Drop those samples or impute the values; values beyond "
            "float32's range (about 3.4e38) also become infinite."
        )


def _check_feature_shape(array: np.ndarray, name: str) -> None:
    """Raise DataError unless ``array`` is 2-D with at least one row and one column."""
    if array.ndim == 1:
        raise DataError(
            f"{name} is 1-D with shape {array.shape}, but features must be 2-D (n_samples, n_features); "
            f"use {name}.reshape(-1, 1) for a single feature or {name}.reshape(1, -1) for a single sample."
        )
    if array.ndim != 2:
        raise DataError(
            f"{name} has {array.ndim} dimensions (shape {array.shape}), but features must be 2-D "
            f"(n_samples, n_features); flatten each sample, e.g. {name}.reshape(len({name}), -1)."
        )
    if array.shape[0] == 0:
        raise DataError(f"{name} has 0 samples (shape {array.shape}); give at least one row of features.")
    if array.shape[1] == 0:
        raise DataError(f"{name} has 0 features (shape {array.shape}); give at least one column.")


def _as_float32(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as float32, C-contiguous; DataError naming the first value that is not a number."""
    if array.dtype.kind in "cmMV":
        raise DataError(
            f"{name} has dtype {array.dtype}, which is not a real number type; convert it to numbers "
            "(e.g. take the real part, or encode dates as numbers) first."
        )
    if array.dtype.kind in "biuf":
        return np.ascontiguousarray(array, dtype=np.float32)
    try:
        return np.ascontiguousarray(array.astype(np.float32))
    except (ValueError, TypeError, OverflowError) as exc:
        position, value = _first_non_numeric(array)
        raise DataError(
            f"{name} holds a value that cannot be read as a number: {value!r} at row {position[0]}, column "
            f"{position[1]}; encode categorical columns as numbers (e.g. one-hot) and drop text columns."
        ) from exc


def _first_non_numeric(array: np.ndarray) -> tuple[tuple[int, ...], object]:
    """Position and value of the first element that ``float()`` rejects."""
    for flat_index, value in enumerate(array.flat):
        try:
            float(value)
        except (TypeError, ValueError, OverflowError):
            return tuple(int(i) for i in np.unravel_index(flat_index, array.shape)), value
    raise AssertionError("called on an array that converts to float")


def _raise_if_not_finite(X: np.ndarray, name: str) -> None:
    """DataError with the count and first position of NaN/inf values in a 1-D or 2-D float array."""
    rows = X.reshape(len(X), -1)
    n_bad = 0
    first = None
    step = rows_per_chunk(rows.shape[1], rows.itemsize)
    for start in range(0, rows.shape[0], step):
        bad = ~np.isfinite(rows[start:start + step])
        count = int(np.count_nonzero(bad))
        if count and first is None:
            row, column = np.argwhere(bad)[0]
            first = (start + int(row), int(column))
        n_bad += count
    if n_bad:
        row, column = first
        raise DataError(
            f"{name} holds {n_bad} NaN or infinite value(s); the first is {rows[row, column]} at row {row}, "
            f"column {column}. Drop those samples or impute the values (e.g. with the column mean); "
            "values beyond float32's range (about 3.4e38) also become infinite."
        )


def rows_per_chunk(n_columns: int, itemsize: int) -> int:
    """Rows of ``n_columns`` values of ``itemsize`` bytes that fit in one block of about 4 MiB."""
    return max(1, _CHUNK_BYTES // max(1, n_columns * itemsize))


# ---------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------


def as_label_vector(y, name: str) -> np.ndarray:
    """Labels as a 1-D array; DataError for other shapes and for missing (NaN/None) labels."""
    array = np.asarray(y)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array.ravel()
    if array.ndim != 1:
        raise DataError(
            f"{name} has shape {array.shape}, but labels must be 1-D, one per sample; for one-hot "
            f"labels use {name}.argmax(axis=1)."
        )
    if array.dtype.kind == "f":
        missing = np.flatnonzero(np.isnan(array))
    elif array.dtype.kind == "O":
        missing = np.flatnonzero([value is None or value != value for value in array])
    else:
        missing = np.empty(0, dtype=np.intp)
    if len(missing):
        raise DataError(
            f"{name} holds {len(missing)} missing label(s) (NaN or None); the first at position "
            f"{missing[0]}. Drop those samples or give them a label."
        )
    return array


def _unique_labels(y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct labels and the index of each sample's label in them."""
    try:
        classes, inverse = np.unique(y, return_inverse=True)
    except TypeError as exc:
        raise DataError(
            f"{name} mixes label types that cannot be sorted together ({exc}); give labels of one type, "
            f"e.g. all strings: np.asarray({name}, dtype=str)."
        ) from exc
    return classes, inverse.reshape(-1).astype(np.int64)


def _show(values: np.ndarray, limit: int = 10) -> str:
    """A short printable list of values."""
    shown = ", ".join(repr(v.item() if isinstance(v, np.generic) else v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def _single_class_error(name: str, present: np.ndarray) -> DataError:
    return DataError(
        f"{name} holds a single class ({_show(present)[1:-1]}); a classifier needs samples of at least "
        "2 classes: add samples of another class."
    )


def validate_training_data(X, y) -> tuple[np.ndarray, np.ndarray]:
    """Check features and labels for training.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Features; checked as by :func:`validate_features`.
    y : array-like of shape (n_samples,)
        Labels of any sortable type (str, int, float); a column vector (n_samples, 1) is flattened.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), float32, C-contiguous
    y : ndarray of shape (n_samples,)
        The labels as given (not encoded; see :func:`encode_labels`).

    Raises
    ------
    DataError
        For the feature problems of :func:`validate_features`, labels that are not 1-D or missing,
        a different number of samples in ``X`` and ``y`` (both are named), or fewer than two classes
        (the single class is named).
    """
    X = validate_features(X, name="X")
    y = as_label_vector(y, "y")
    if len(y) != X.shape[0]:
        raise DataError(
            f"X has {X.shape[0]} samples (rows) but y has {len(y)} labels; give exactly one label per row of X."
        )
    classes, _ = _unique_labels(y, "y")
    if len(classes) < 2:
        raise _single_class_error("y", classes)
    return X, y


def encode_labels(y_train, y_test=None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Map labels of any type to class indices 0..n_classes-1.

    Parameters
    ----------
    y_train : array-like of shape (n_train,)
        Training labels (str, int, float, ...); they define the classes.
    y_test : array-like of shape (n_test,), optional
        Test labels; each must be one of the training labels.

    Returns
    -------
    y_train_idx : ndarray of shape (n_train,), int64
    y_test_idx : ndarray of shape (n_test,), int64, or None when ``y_test`` is None
    classes : ndarray of shape (n_classes,)
        The sorted distinct training labels; ``classes[y_train_idx]`` equals ``y_train``.

    Raises
    ------
    DataError
        For missing labels, labels that cannot be sorted together, or test labels absent from
        ``y_train`` (the message names them and where the first one is).
    """
    y_train = as_label_vector(y_train, "y_train")
    classes, y_train_idx = _unique_labels(y_train, "y_train")
    if y_test is None:
        return y_train_idx, None, classes
    y_test = as_label_vector(y_test, "y_test")
    try:
        position = np.minimum(np.searchsorted(classes, y_test), len(classes) - 1)
        unknown = np.asarray(classes[position] != y_test, dtype=bool)
    except TypeError as exc:
        raise DataError(
            f"y_test labels ({y_test.dtype}) cannot be compared with y_train labels ({classes.dtype}); "
            "give both splits labels of the same type."
        ) from exc
    if unknown.any():
        first = int(np.flatnonzero(unknown)[0])
        raise DataError(
            f"y_test holds {int(unknown.sum())} label(s) that y_train lacks, "
            f"{_show(np.unique(y_test[unknown]))}, "
            f"the first at position {first}; the training classes are {_show(classes)}. Drop those test "
            "samples or add training samples of those classes (check that both splits use the same label "
            "type, e.g. 1 vs '1')."
        )
    return y_train_idx, position.astype(np.int64), classes


# ---------------------------------------------------------------------------------------------------
# A Dataset's arrays
# ---------------------------------------------------------------------------------------------------


def check_splits(name: str, X_train, y_train, X_test, y_test, classes):
    """The arrays of a :class:`~wasap.data.Dataset`, checked and converted for training.

    An array given for both splits (``X_test is X_train``: evaluating on the training data) is
    checked once.

    Parameters
    ----------
    name : str
        The data set's name, for error messages.
    X_train : array-like of shape (n_train, n_features)
    y_train : array-like of shape (n_train,) or (n_train, n_outputs)
        Class indices 0..n_classes-1 when ``classes`` is not empty, else regression targets.
    X_test : array-like of shape (n_test, n_features)
    y_test : array-like of shape (n_test,) or (n_test, n_outputs)
    classes : array-like of shape (n_classes,)
        The label value of each class index; empty for regression targets.

    Returns
    -------
    X_train, y_train, X_test, y_test, classes : ndarrays
        Features float32, C-contiguous and finite (or, given sparse, canonical CSR as
        :func:`validate_features` makes it); class indices int64 (or targets float32,
        C-contiguous and finite); ``classes`` 1-D.

    Raises
    ------
    DataError
        For features :func:`validate_features` refuses, one split sparse and the other dense, splits
        of different widths, a number of
        labels other than of rows, labels that are not class indices of ``classes``, fewer than two
        classes among the training labels, or regression targets that are not finite numbers.
    """
    X_train = validate_features(X_train, name="X_train")
    X_test = X_train if X_test is X_train else validate_features(X_test, name="X_test")
    if scipy.sparse.issparse(X_train) != scipy.sparse.issparse(X_test):
        sparse, dense = ("X_train", "X_test") if scipy.sparse.issparse(X_train) else ("X_test", "X_train")
        raise DataError(
            f"{name}: {sparse} is a scipy.sparse matrix but {dense} is dense; give both splits the same kind, "
            f"e.g. scipy.sparse.csr_matrix({dense}), or {sparse}.toarray() for small data."
        )
    if X_test.shape[1] != X_train.shape[1]:
        raise DataError(
            f"{name}: the train split has {X_train.shape[1]} features but the test split has "
            f"{X_test.shape[1]}; both need the same columns in the same order."
        )
    classes = np.asarray(classes)
    if classes.ndim != 1:
        raise DataError(f"classes must be 1-D, one label per class index; got shape {classes.shape}.")
    checked = {}
    for split, X, y in (("train", X_train, y_train), ("test", X_test, y_test)):
        if split == "test" and y is y_train:
            checked["test"] = checked["train"]
            continue
        y = _class_indices(y, f"y_{split}", classes) if len(classes) else _targets(y, f"y_{split}")
        if len(y) != X.shape[0]:
            raise DataError(
                f"X_{split} has {X.shape[0]} samples (rows) but y_{split} has {len(y)} labels; give exactly "
                f"one label per row of X_{split}."
            )
        checked[split] = y
    if len(classes):
        present = np.flatnonzero(np.bincount(checked["train"], minlength=len(classes)))
        if len(present) < 2:
            raise _single_class_error("y_train", classes[present])
    return X_train, checked["train"], X_test, checked["test"], classes


def _class_indices(y, name: str, classes: np.ndarray) -> np.ndarray:
    """``y`` as int64 class indices into ``classes``; DataError for anything else."""
    y = as_label_vector(y, name)
    if y.dtype.kind not in "iu" or (len(y) and (y.min() < 0 or y.max() >= len(classes))):
        raise DataError(
            f"{name} must hold class indices 0..{len(classes) - 1} (integers, one per class of `classes`); "
            "encode labels with wasap.data.encode_labels, or load data with wasap.load_dataset, which does."
        )
    return y.astype(np.int64, copy=False)


def _targets(y, name: str) -> np.ndarray:
    """Regression targets ``(n,)`` or ``(n, n_outputs)`` as float32, C-contiguous and finite."""
    try:
        array = np.ascontiguousarray(y, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"{name} cannot be read as numbers ({exc}); without classes a Dataset holds regression targets: "
            "give numbers, or give the class labels as `classes` and class indices as labels."
        ) from exc
    if array.ndim not in (1, 2) or len(array) == 0:
        raise DataError(f"{name} has shape {array.shape}; regression targets are (n_samples,) or "
                        "(n_samples, n_outputs), with at least one sample.")
    _raise_if_not_finite(array, name)
    return array
