"""Data sets for wasap: the bundled Madelon, public sets on disk, user files and synthetic data.

Every loader returns a :class:`Dataset` whose features are dense float32 rows, C-contiguous (wasap's
input layer multiplies dense rows with sparse weight matrices), and whose labels are class indices
0..n_classes-1, with ``Dataset.classes`` mapping an index back to the user's label value.

Every problem with the data raises :class:`DataError` (a ``ValueError``) whose message says what is
wrong and how to fix it.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import struct
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

import numpy as np
import scipy.sparse

__all__ = [
    "ACCEPTED_FORMATS",
    "KNOWN_DATASETS",
    "DataError",
    "Dataset",
    "encode_labels",
    "load_dataset",
    "read_table",
    "standardize",
    "validate_features",
    "validate_training_data",
]

KNOWN_DATASETS = ("madelon", "fashion-mnist", "higgs", "cifar10", "synthetic")

ACCEPTED_FORMATS = (
    "a .npz file with arrays X_train, y_train, X_test, y_test; "
    "a .csv file (label in the last column, optional header; a train/test pair as 'train.csv,test.csv'); "
    "an svmlight/libsvm file (.svm, .svmlight, .libsvm, .txt; a pair as 'train.svm,test.svm'); "
    "a directory holding Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) or Madelon-style files "
    "(NAME_train.data, NAME_train.labels, NAME_valid.data, NAME_valid.labels)"
)

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

# Above this many feature values, sklearn's make_classification (float64, several full-size temporaries)
# needs several times the memory of the result, so the chunked float32 generator takes over.
SYNTHETIC_CHUNKED_ABOVE = 5e7

# Row blocks of about 4 MiB keep temporaries small (and cache-resident) when passing over big matrices.
_CHUNK_BYTES = 1 << 22

_SVMLIGHT_SUFFIXES = (".svm", ".svmlight", ".libsvm", ".txt")

_IDX_FILES = {
    "X_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "X_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

_CIFAR_ARCHIVE = "CIFAR-10-images_jpeg.tar.gz"
_CIFAR_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

_NPZ_KEYS = ("X_train", "y_train", "X_test", "y_test")

_ALIASES = {"cifar-10": "cifar10", "fashionmnist": "fashion-mnist"}


class DataError(ValueError):
    """A problem with input data; the message says what is wrong and how to fix it."""


@dataclass
class Dataset:
    """A train/test pair of dense feature matrices with encoded labels.

    Attributes
    ----------
    name : str
        Short name, e.g. ``"madelon"`` or the file name it was read from.
    X_train : ndarray of shape (n_train, n_features)
        Features, float32 (unless another ``dtype`` was asked for), C-contiguous.
    y_train : ndarray of shape (n_train,)
        int64 class indices 0..n_classes-1 (for regression: float32 targets and empty ``classes``).
    X_test : ndarray of shape (n_test, n_features)
        Features of the test split, same dtype and preprocessing as ``X_train``.
    y_test : ndarray of shape (n_test,)
        Labels of the test split, encoded like ``y_train``.
    classes : ndarray of shape (n_classes,)
        The original label values, sorted; ``classes[y]`` gives the user's labels back.
    description : str
        One line: where the data came from and its shape.
    feature_mean, feature_scale : ndarray of shape (n_features,), float64, or None
        The statistics the features were standardised with, ``(x - mean) / scale``; None when
        the features are raw values.
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

    @property
    def preprocessing(self):
        """The :class:`wasap.preprocessing.Preprocessing` that turns raw rows into rows of this data set."""
        # preprocessing.py builds on this module's validation, so it is imported when first needed.
        from .preprocessing import Preprocessing

        classes = self.classes if len(self.classes) else None
        return Preprocessing(self.n_features, mean=self.feature_mean, scale=self.feature_scale, classes=classes)

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


@dataclass
class _Splits:
    """What a loader read, before validation, label encoding and standardisation."""

    name: str
    origin: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


# ---------------------------------------------------------------------------------------------------
# Validation, label encoding, standardisation
# ---------------------------------------------------------------------------------------------------


def validate_features(X, *, name: str = "X") -> np.ndarray:
    """Check a feature matrix and return it as float32, C-contiguous.

    Parameters
    ----------
    X : array-like or scipy sparse matrix of shape (n_samples, n_features)
        Numbers (bool, int or float; strings only when each holds a number). Sparse matrices are
        densified, because wasap's input layer takes dense rows.
    name : str
        How to call ``X`` in error messages.

    Returns
    -------
    ndarray of shape (n_samples, n_features), float32, C-contiguous
        ``X`` itself when it already is one, else a converted copy.

    Raises
    ------
    DataError
        For input that is not 2-D, has no samples or no features, holds values that are not numbers,
        or holds NaN or infinite values (the message gives their count and the first position).
    """
    if scipy.sparse.issparse(X):
        X = X.toarray()
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
    """DataError with the count and first position of NaN/inf values in a 2-D float array."""
    n_bad = 0
    first = None
    step = _rows_per_chunk(X)
    for start in range(0, X.shape[0], step):
        bad = ~np.isfinite(X[start:start + step])
        count = int(np.count_nonzero(bad))
        if count and first is None:
            row, column = np.argwhere(bad)[0]
            first = (start + int(row), int(column))
        n_bad += count
    if n_bad:
        row, column = first
        raise DataError(
            f"{name} holds {n_bad} NaN or infinite value(s); the first is {X[row, column]} at row {row}, "
            f"column {column}. Drop those samples or impute the values (e.g. with the column mean); "
            "values beyond float32's range (about 3.4e38) also become infinite."
        )


def _rows_per_chunk(X: np.ndarray) -> int:
    """Rows of ``X`` that fit in one block of about ``_CHUNK_BYTES``."""
    return max(1, _CHUNK_BYTES // max(1, X.shape[1] * X.itemsize))


def _as_label_vector(y, name: str) -> np.ndarray:
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
    y = _as_label_vector(y, "y")
    if len(y) != X.shape[0]:
        raise DataError(
            f"X has {X.shape[0]} samples (rows) but y has {len(y)} labels; give exactly one label per row of X."
        )
    classes, _ = _unique_labels(y, "y")
    if len(classes) < 2:
        raise DataError(
            f"y holds a single class ({_show(classes)[1:-1]}); a classifier needs samples of at least "
            "2 classes: add samples of another class."
        )
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
    y_train = _as_label_vector(y_train, "y_train")
    classes, y_train_idx = _unique_labels(y_train, "y_train")
    if y_test is None:
        return y_train_idx, None, classes
    y_test = _as_label_vector(y_test, "y_test")
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


def standardize(X_train, X_test=None, *, copy: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Standardise each feature with the train split's mean and standard deviation.

    Parameters
    ----------
    X_train : array-like of shape (n_train, n_features)
        The statistics come from this split only (population std, ddof=0).
    X_test : array-like of shape (n_test, n_features), optional
        Transformed with the train split's statistics.
    copy : bool
        False standardises float32 C-contiguous inputs in place (no extra memory for multi-GB data).

    Returns
    -------
    X_train, X_test : ndarrays of shapes (n_train, n_features) and (n_test, n_features), float32
        ``X_test`` is None when none was given. A feature that is constant on the train split has
        std 0; it is divided by 1 instead, so it becomes exactly 0 on the train split.
    """
    train = _prepared_copy(X_train, "X_train", copy)
    test = None if X_test is None else _prepared_copy(X_test, "X_test", copy)
    if test is not None and test.shape[1] != train.shape[1]:
        raise DataError(
            f"X_train has {train.shape[1]} features but X_test has {test.shape[1]}; both splits need the "
            "same columns in the same order."
        )
    _standardize_in_place(train, test)
    return train, test


def _prepared_copy(X, name: str, copy: bool) -> np.ndarray:
    """Validated float32 array that is safe to modify: a copy when ``copy`` and it shares the input."""
    checked = validate_features(X, name=name)
    if (copy and isinstance(X, np.ndarray) and np.may_share_memory(X, checked)) or not checked.flags.writeable:
        checked = checked.copy()
    return checked


def _column_mean_std(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std (float64) of a 2-D array, in row blocks; std of constant columns is 1."""
    step = _rows_per_chunk(X)
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


def _standardize_in_place(X_train: np.ndarray, X_test: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Standardise both splits in place with ``X_train``'s per-column statistics; return them (mean, std)."""
    # preprocessing.py builds on this module's validation, so it is imported when first needed.
    from .preprocessing import standardize_in_place

    mean, std = _column_mean_std(X_train)
    for X in (X_train, X_test):
        if X is not None:
            standardize_in_place(X, mean, std)
    return mean, std


# ---------------------------------------------------------------------------------------------------
# load_dataset
# ---------------------------------------------------------------------------------------------------


def load_dataset(
    spec: str,
    *,
    data_dir=None,
    seed: int = 0,
    standardize: bool = True,
    n_samples: int = 10000,
    n_features: int = 100,
    n_classes: int = 2,
    n_informative: int | None = None,
    test_fraction: float = 0.3,
    dtype=np.float32,
    chunk_rows: int | None = None,
    label_column: int = -1,
) -> Dataset:
    """Load a named data set, a user's file or directory, or generate synthetic data.

    Parameters
    ----------
    spec : str
        One of the names (case-insensitive, ``_`` or ``-``):

        - ``"madelon"``: the copy bundled with wasap (NIPS 2003 / UCI, CC BY 4.0): 2000 train and the
          600-sample valid split as test, 500 features, labels -1/+1 (classes [-1, 1]).
        - ``"fashion-mnist"``: IDX files (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
          ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``) in ``data_dir``, else in
          ``$WASAP_FASHION_MNIST``, else in Debian's /usr/share/datasets/fashion-mnist
          (``apt-get install dataset-fashion-mnist``). Images are flattened row by row to 784 features.
        - ``"higgs"``: LightGBM's text format (tab-separated, label in the first column), files
          ``binary.train`` and ``binary.test`` in ``data_dir`` or ``$WASAP_HIGGS``.
        - ``"cifar10"``: the JPEG copy of CIFAR-10 (``CIFAR-10-images_jpeg.tar.gz``, layout
          ``{train,test}/<class>/NNNN.jpg``), given as ``data_dir`` or ``$WASAP_CIFAR10``: the archive
          itself, the folder holding it, or the extracted folder. Needs Pillow. Each image becomes 3072
          features in the original CIFAR order, channel-major: the 1024 red values row by row, then the
          green, then the blue. Classes are the folder names in the standard order (airplane .. truck).
        - ``"synthetic"``: ``sklearn.datasets.make_classification(n_samples, n_features, n_informative,
          n_redundant=2, n_classes, random_state=seed)``, split ``test_fraction`` stratified. When
          ``n_samples * n_features`` exceeds 5e7 or ``chunk_rows`` is given, a make_classification-like
          generator (the same recipe: class clusters on hypercube vertices of the informative subspace,
          redundant linear combinations, noise features, 1% flipped labels, shuffled rows and columns;
          not the same random numbers) writes float32 rows in blocks, so peak memory is about that of
          the result; its split is the first ``1 - test_fraction`` of the shuffled rows.

        Any other string is a path: a ``.npz`` with arrays X_train, y_train, X_test, y_test; a ``.csv``
        (label in column ``label_column``, header detected); an svmlight/libsvm file (``.svm``,
        ``.svmlight``, ``.libsvm``, ``.txt``), densified to float32; or a directory with Fashion-MNIST
        IDX files or Madelon-style ``NAME_{train,valid}.{data,labels}`` files. A single csv or svmlight
        file is split ``test_fraction`` stratified with ``seed``; a train/test pair is given as
        ``"train.csv,test.csv"``. Write ``./madelon`` for a path that looks like a name.
    data_dir : str or Path, optional
        Where the files of ``fashion-mnist``, ``higgs`` or ``cifar10`` are.
    seed : int
        Seeds the synthetic data and the split of single files.
    standardize : bool
        Standardise each feature with the train split's mean and std (std 0 -> 1), as the paper does;
        False returns the raw values.
    n_samples, n_features, n_classes : int
        Shape of the synthetic data.
    n_informative : int, optional
        Informative synthetic features; default 10% of ``n_features``, at most 500 and at least
        ``ceil(log2(2 * n_classes))``.
    test_fraction : float
        Fraction of samples for the test split when a single file or synthetic data is split.
    dtype : numpy float dtype
        float32 (default) or float64 for the features.
    chunk_rows : int, optional
        Rows per block of the chunked synthetic generator (forces it).
    label_column : int
        Which csv column holds the label (default the last).

    Returns
    -------
    Dataset
        X_train (n_train, n_features) and X_test (n_test, n_features) of ``dtype``, C-contiguous;
        y_train, y_test int64 class indices; ``classes`` the original label values.

    Raises
    ------
    DataError
        Unknown name (lists the known names), missing or unreadable path (names it and lists the
        accepted formats), files of the wrong format, or invalid data.
    """
    dtype = _float_dtype(dtype)
    spec = os.fspath(spec)
    key = spec.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key == "madelon":
        splits = _load_bundled_madelon()
    elif key == "fashion-mnist":
        splits = _load_fashion_mnist(data_dir)
    elif key == "higgs":
        splits = _load_higgs(data_dir)
    elif key == "cifar10":
        splits = _load_cifar10(data_dir)
    elif key == "synthetic":
        splits = _make_synthetic(
            n_samples=n_samples, n_features=n_features, n_classes=n_classes, n_informative=n_informative,
            test_fraction=test_fraction, seed=seed, chunk_rows=chunk_rows,
        )
    else:
        splits = _load_path(spec, seed=seed, test_fraction=test_fraction, label_column=label_column)
    return _finish(splits, standardize_features=standardize, dtype=dtype)


def _float_dtype(dtype) -> np.dtype:
    """float32 or float64 as a numpy dtype; DataError for anything else."""
    resolved = np.dtype(dtype)
    if resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise DataError(
            f"dtype {resolved} is not supported for features; use np.float32 (default) or np.float64."
        )
    return resolved


def _finish(splits: _Splits, *, standardize_features: bool, dtype: np.dtype) -> Dataset:
    """Validate, encode labels, cast and standardise what a loader read."""
    X_train, y_train = validate_training_data(splits.X_train, splits.y_train)
    X_test = validate_features(splits.X_test, name="X_test")
    y_test = _as_label_vector(splits.y_test, "y_test")
    if X_test.shape[1] != X_train.shape[1]:
        raise DataError(
            f"{splits.name}: the train split has {X_train.shape[1]} features but the test split has "
            f"{X_test.shape[1]}; both need the same columns in the same order."
        )
    if len(y_test) != X_test.shape[0]:
        raise DataError(
            f"{splits.name}: the test split has {X_test.shape[0]} samples but {len(y_test)} labels; "
            "give exactly one label per sample."
        )
    y_train_idx, y_test_idx, classes = encode_labels(y_train, y_test)
    X_train, X_test = (_writable(X.astype(dtype, copy=False)) for X in (X_train, X_test))
    mean, std = _standardize_in_place(X_train, X_test) if standardize_features else (None, None)
    description = (
        f"{splits.name}: {splits.origin}; {X_train.shape[0]} train / {X_test.shape[0]} test samples x "
        f"{X_train.shape[1]} features, {len(classes)} classes"
    )
    return Dataset(splits.name, X_train, y_train_idx, X_test, y_test_idx, classes, description,
                   feature_mean=mean, feature_scale=std)


def _writable(X: np.ndarray) -> np.ndarray:
    """``X``, or a copy when it is read-only (e.g. a view of a file's bytes)."""
    return X if X.flags.writeable else X.copy()


# ---------------------------------------------------------------------------------------------------
# Named data sets
# ---------------------------------------------------------------------------------------------------


def _load_bundled_madelon() -> _Splits:
    """The Madelon arrays shipped in wasap/datasets/madelon.npz (see MADELON_PROVENANCE.md there)."""
    resource = resources.files(__package__).joinpath("datasets", "madelon.npz")
    try:
        with resource.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in _NPZ_KEYS}
    except (OSError, KeyError) as exc:
        raise DataError(
            f"the bundled Madelon copy ({resource}) is missing or damaged ({exc}); reinstall wasap, or "
            "rebuild it with tools/make_madelon_npz.py from the original text files."
        ) from exc
    return _Splits(
        "madelon", "bundled copy of the NIPS 2003 Madelon data (UCI 171, CC BY 4.0), test = valid split",
        arrays["X_train"], arrays["y_train"], arrays["X_test"], arrays["y_test"],
    )


def _search_dirs(data_dir, env_var: str, default: Path | None = None) -> list[Path]:
    """Where to look for a named data set: ``data_dir`` alone if given, else the env var, else ``default``."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    dirs = [Path(os.environ[env_var]).expanduser()] if os.environ.get(env_var) else []
    if default is not None:
        dirs.append(default)
    return dirs


def _locate(dirs: list[Path], holds_data: Callable[[Path], bool], dataset: str, env_var: str, files: str) -> Path:
    """The first of ``dirs`` that holds the data set; DataError listing where it looked otherwise."""
    for directory in dirs:
        if holds_data(directory):
            return directory
    if dirs:
        looked = "looked in " + ", ".join(str(d) for d in dirs)
    else:
        looked = f"looked nowhere (no data_dir given and ${env_var} is not set)"
    raise DataError(
        f"{dataset} not found: {looked} for {files}. Point at the folder holding them with "
        f"load_dataset('{dataset}', data_dir=DIR) (python -m wasap.run --data-dir DIR) or by setting "
        f"the environment variable {env_var}=DIR."
    )


def _idx_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """Fashion-MNIST IDX files found in ``directory`` (plain or .gz), and the names of those missing."""
    found, missing = {}, []
    for key, stem in _IDX_FILES.items():
        candidates = [directory / stem, directory / f"{stem}.gz"]
        present = [path for path in candidates if path.is_file()]
        if present:
            found[key] = present[0]
        else:
            missing.append(f"{stem}[.gz]")
    return found, missing


def _load_fashion_mnist(data_dir) -> _Splits:
    """Fashion-MNIST from IDX files in ``data_dir``, $WASAP_FASHION_MNIST or Debian's folder."""
    dirs = _search_dirs(data_dir, "WASAP_FASHION_MNIST", FASHION_MNIST_DEBIAN_DIR)
    directory = _locate(
        dirs, lambda d: not _idx_files(d)[1], "fashion-mnist", "WASAP_FASHION_MNIST",
        ", ".join(f"{stem}[.gz]" for stem in _IDX_FILES.values())
        + " (on Debian/Ubuntu: apt-get install dataset-fashion-mnist)",
    )
    return _read_idx_set(directory, "fashion-mnist", "Fashion-MNIST (Zalando Research, MIT)")


def _read_idx_set(directory: Path, name: str, source: str) -> _Splits:
    """Train and test images (flattened row by row) and labels from the four IDX files of a folder."""
    found, missing = _idx_files(directory)
    if missing:
        raise DataError(f"{directory} lacks the IDX file(s) {', '.join(missing)}; put all four files there.")
    X_train = _read_idx(found["X_train"], _IDX_IMAGES_MAGIC)
    y_train = _read_idx(found["y_train"], _IDX_LABELS_MAGIC)
    X_test = _read_idx(found["X_test"], _IDX_IMAGES_MAGIC)
    y_test = _read_idx(found["y_test"], _IDX_LABELS_MAGIC)
    for images, labels, split in ((X_train, y_train, "train"), (X_test, y_test, "t10k")):
        if len(images) != len(labels):
            raise DataError(
                f"{directory}: {split} has {len(images)} images but {len(labels)} labels; the files do not "
                "belong together: download them again."
            )
    return _Splits(
        name, f"{source}, IDX files in {directory}",
        X_train.reshape(len(X_train), -1), y_train, X_test.reshape(len(X_test), -1), y_test,
    )


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of an IDX file (gzip-compressed or not), after checking its magic number and size."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path} is a damaged gzip file ({exc}); download it again.") from exc
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        kind = "images" if magic == _IDX_IMAGES_MAGIC else "labels"
        raise DataError(
            f"{path} is not an IDX {kind} file of unsigned bytes: magic number {found}, expected {magic}; "
            f"check that each file's name (*-{kind}-idx?-ubyte) matches its content."
        )
    n_dims = raw[3]
    header = 4 + 4 * n_dims
    dims = struct.unpack(f">{n_dims}I", raw[4:header])
    if len(raw) != header + math.prod(dims):
        raise DataError(
            f"{path} should hold {math.prod(dims)} values of shape {dims} but has {len(raw) - header} bytes "
            "of data; the file is truncated or damaged: download it again."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_higgs(data_dir) -> _Splits:
    """HIGGS rows in LightGBM's text format: binary.train and binary.test in ``data_dir`` or $WASAP_HIGGS."""
    names = ("binary.train", "binary.test")
    directory = _locate(
        _search_dirs(data_dir, "WASAP_HIGGS"), lambda d: all((d / n).is_file() for n in names),
        "higgs", "WASAP_HIGGS", " and ".join(names) + " (LightGBM's examples/binary_classification)",
    )
    X_train, y_train = _read_label_first_table(directory / "binary.train")
    X_test, y_test = _read_label_first_table(directory / "binary.test")
    return _Splits("higgs", f"HIGGS (UCI 280, CC BY 4.0), LightGBM text files in {directory}",
                   X_train, y_train, X_test, y_test)


def _read_label_first_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Tab-separated numbers with the label in the first column: features (n, d) float32, labels (n,)."""
    try:
        table = np.loadtxt(path, delimiter="\t", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DataError(
            f"{path} is not a tab-separated table of numbers with the label first ({exc}); "
            "give LightGBM's binary.train/binary.test text files."
        ) from exc
    if table.shape[1] < 2:
        raise DataError(f"{path} has {table.shape[1]} column(s); it needs a label column and features.")
    return table[:, 1:].astype(np.float32), _integral_to_int(table[:, 0])


def _load_cifar10(data_dir) -> _Splits:
    """CIFAR-10 from the JPEG copy: an archive, a folder holding it, or the extracted folder."""
    dirs = _search_dirs(data_dir, "WASAP_CIFAR10")
    source = _locate(
        dirs, lambda p: _cifar_source(p) is not None, "cifar10", "WASAP_CIFAR10",
        f"{_CIFAR_ARCHIVE} or its extracted train/ and test/ folders",
    )
    image_module = _import_pillow()
    images = {"train": [], "test": []}
    for split, class_name, file_name, payload in _cifar_members(_cifar_source(source)):
        images[split].append((class_name, file_name, _decode_cifar_image(image_module, payload, file_name)))
    arrays = []
    for split in ("train", "test"):
        if not images[split]:
            raise DataError(
                f"{source} holds no {split} images in {split}/<class>/*.jpg; give the full CIFAR-10 JPEG copy."
            )
        # Archives list members in any order; sorting makes sample order (and so training) reproducible.
        rows = sorted(images[split], key=lambda item: (_CIFAR_CLASSES.index(item[0]), item[1]))
        arrays.append(np.stack([pixels for _, _, pixels in rows]))
        arrays.append(np.array([class_name for class_name, _, _ in rows]))
    return _Splits("cifar10", f"CIFAR-10 JPEG copy (lossy) from {source}, channel-major pixels", *arrays)


def _cifar_source(path: Path) -> Path | None:
    """The archive or extracted folder that ``path`` designates, if any."""
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        return path
    if (path / _CIFAR_ARCHIVE).is_file():
        return path / _CIFAR_ARCHIVE
    if (path / "train").is_dir() and (path / "test").is_dir():
        return path
    return None


def _import_pillow():
    """PIL.Image, or a DataError saying how to install it."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError("reading the CIFAR-10 JPEG copy needs Pillow: pip install pillow") from exc
    return Image


def _cifar_members(source: Path):
    """Yield (split, class name, file name, JPEG bytes) for each ``{train,test}/<class>/*.jpg``."""
    if source.is_dir():
        for path in sorted(source.glob("*/*/*.jpg")):
            split, class_name = path.parts[-3], path.parts[-2]
            if split in ("train", "test") and class_name in _CIFAR_CLASSES:
                yield split, class_name, path.name, path.read_bytes()
        return
    try:
        with tarfile.open(source, "r:*") as archive:
            for member in archive:
                parts = PurePosixPath(member.name).parts
                if member.isfile() and member.name.endswith(".jpg") and len(parts) >= 3:
                    split, class_name = parts[-3], parts[-2]
                    if split in ("train", "test") and class_name in _CIFAR_CLASSES:
                        yield split, class_name, parts[-1], archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"{source} is not a readable tar archive ({exc}); download {_CIFAR_ARCHIVE} again."
        ) from exc


def _decode_cifar_image(image_module, payload: bytes, file_name: str) -> np.ndarray:
    """A 32x32 RGB JPEG as 3072 uint8 values, channel-major (R plane, G plane, B plane, each row by row)."""
    try:
        with image_module.open(io.BytesIO(payload)) as image:
            pixels = np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise DataError(f"{file_name} is not a readable JPEG image ({exc}); the archive is damaged.") from exc
    if pixels.shape != (32, 32, 3):
        raise DataError(f"{file_name} is {pixels.shape[1]}x{pixels.shape[0]} pixels; CIFAR-10 images are 32x32.")
    return pixels.transpose(2, 0, 1).reshape(-1)


# ---------------------------------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------------------------------


def _make_synthetic(
    *, n_samples, n_features, n_classes, n_informative, test_fraction, seed, chunk_rows
) -> _Splits:
    """make_classification data split into train and test (chunked float32 generator for big shapes)."""
    limits = ((n_samples, "n_samples", 2), (n_features, "n_features", 1), (n_classes, "n_classes", 2))
    for value, name, minimum in limits:
        if int(value) != value or value < minimum:
            raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    _check_test_fraction(test_fraction)
    needed = math.ceil(math.log2(2 * n_classes))
    if n_informative is None:
        n_informative = max(needed, min(500, round(0.1 * n_features)))
    if not needed <= n_informative <= n_features:
        raise DataError(
            f"n_informative={n_informative} must lie between {needed} (2 clusters for each of {n_classes} "
            f"classes need 2 ** n_informative >= {2 * n_classes} hypercube vertices) and "
            f"n_features={n_features}; "
            "raise n_features or lower n_classes."
        )
    n_redundant = min(2, n_features - n_informative)
    origin = (f"seed {seed}, {n_informative} informative, {n_redundant} redundant, "
              f"{n_features - n_informative - n_redundant} noise features")
    if chunk_rows is None and n_samples * n_features <= SYNTHETIC_CHUNKED_ABOVE:
        from sklearn.datasets import make_classification

        X, y = make_classification(
            n_samples=n_samples, n_features=n_features, n_informative=n_informative, n_redundant=n_redundant,
            n_classes=n_classes, random_state=seed,
        )
        X_train, X_test, y_train, y_test = _split(X.astype(np.float32), y, test_fraction, seed)
        return _Splits("synthetic", f"sklearn make_classification, {origin}", X_train, y_train, X_test, y_test)
    if chunk_rows is not None and (int(chunk_rows) != chunk_rows or chunk_rows < 1):
        raise DataError(f"chunk_rows must be a positive integer, got {chunk_rows!r}.")
    n_train = n_samples - max(1, round(test_fraction * n_samples))
    X_train, y_train, X_test, y_test = _make_classification_chunked(
        n_samples, n_features, n_informative, n_redundant, n_classes, n_train, seed, chunk_rows,
    )
    return _Splits("synthetic", f"make_classification-like chunked float32 generator, {origin}",
                   X_train, y_train, X_test, y_test)


def _make_classification_chunked(n_samples, n_features, n_informative, n_redundant, n_classes, n_train, seed,
                                 chunk_rows):
    """make_classification's recipe written straight into float32 train/test arrays, block by block.

    Two clusters per class sit on distinct vertices of the hypercube [-1, 1]^n_informative; each sample
    is a standard normal vector in the informative subspace, mixed by its cluster's random matrix and
    shifted to its centroid; redundant features are random linear combinations of the informative ones,
    the rest is standard normal noise; 1% of labels are redrawn at random; rows and columns are shuffled.
    Random numbers come from streams consumed in row order, so the result does not depend on ``chunk_rows``.
    """
    layout_seed, informative_seed, noise_seed = np.random.SeedSequence(seed).spawn(3)
    layout = np.random.default_rng(layout_seed)
    informative_rng = np.random.default_rng(informative_seed)
    noise_rng = np.random.default_rng(noise_seed)

    n_clusters = 2 * n_classes
    centroids = (2.0 * _hypercube_vertices(n_clusters, n_informative, layout) - 1.0).astype(np.float32)
    mixing = (2.0 * layout.random((n_clusters, n_informative, n_informative), dtype=np.float32) - 1.0)
    combos = (2.0 * layout.random((n_informative, n_redundant), dtype=np.float32) - 1.0)
    sizes = np.full(n_clusters, n_samples // n_clusters)
    sizes[: n_samples % n_clusters] += 1
    cluster = layout.permutation(np.repeat(np.arange(n_clusters), sizes))
    y = cluster % n_classes
    flipped = layout.random(n_samples) < 0.01
    y[flipped] = layout.integers(0, n_classes, int(flipped.sum()))
    column_order = layout.permutation(n_features)

    step = chunk_rows or max(1, _CHUNK_BYTES // (4 * n_features))
    X_train = np.empty((n_train, n_features), dtype=np.float32)
    X_test = np.empty((n_samples - n_train, n_features), dtype=np.float32)
    for out, offset in ((X_train, 0), (X_test, n_train)):
        for start in range(0, len(out), step):
            stop = min(start + step, len(out))
            block = np.empty((stop - start, n_features), dtype=np.float32)
            z = informative_rng.standard_normal((stop - start, n_informative), dtype=np.float32)
            clusters = cluster[offset + start:offset + stop]
            for k in np.unique(clusters):
                rows = clusters == k
                block[rows, :n_informative] = z[rows] @ mixing[k] + centroids[k]
            block[:, n_informative:n_informative + n_redundant] = block[:, :n_informative] @ combos
            block[:, n_informative + n_redundant:] = noise_rng.standard_normal(
                (stop - start, n_features - n_informative - n_redundant), dtype=np.float32)
            out[start:stop] = block[:, column_order]
    return X_train, y[:n_train], X_test, y[n_train:]


def _hypercube_vertices(n_vertices: int, n_dims: int, rng: np.random.Generator) -> np.ndarray:
    """``n_vertices`` distinct random vertices of {0, 1}^n_dims, as float rows."""
    # As sklearn: distinct codes among the first (at most 30) dimensions, random bits for the rest.
    head = min(n_dims, 30)
    codes = rng.choice(2 ** head, n_vertices, replace=False)
    bits = ((codes[:, None] >> np.arange(head)) & 1).astype(np.float64)
    tail = rng.integers(0, 2, (n_vertices, n_dims - head)).astype(np.float64)
    return np.hstack([bits, tail])


# ---------------------------------------------------------------------------------------------------
# User files
# ---------------------------------------------------------------------------------------------------


def _load_path(spec: str, *, seed: int, test_fraction: float, label_column: int) -> _Splits:
    """Read a file, a train/test pair of files, or a directory named by ``spec``."""
    paths = _spec_paths(spec)
    try:
        if len(paths) == 2:
            return _load_pair(*paths, label_column=label_column)
        path = paths[0]
        if path.is_dir():
            return _load_directory(path)
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return _read_npz(path)
        if suffix == ".csv":
            X, y = _read_csv(path, label_column)
        elif suffix in _SVMLIGHT_SUFFIXES:
            X, y = _read_svmlight(path)
        else:
            raise DataError(f"{path}: unknown file type {path.suffix!r}. Accepted formats: {ACCEPTED_FORMATS}.")
        _check_test_fraction(test_fraction)
        X_train, X_test, y_train, y_test = _split(X, y, test_fraction, seed)
        return _Splits(path.name, f"{path}, split {1 - test_fraction:.0%}/{test_fraction:.0%} with seed {seed}",
                       X_train, y_train, X_test, y_test)
    except OSError as exc:
        raise DataError(
            f"cannot read {exc.filename or spec}: {exc.strerror or exc}; check the path and its permissions."
        ) from exc


def read_table(path, *, n_features: int | None = None, label_column: int = -1):
    """Read every row of one data file, unsplit: the rows a trained model is to predict.

    Parameters
    ----------
    path : str or os.PathLike
        What the trainer reads from a path, taken whole: a ``.csv`` file (header detected); an
        svmlight/libsvm file (``.svm``, ``.svmlight``, ``.libsvm``, ``.txt``); a ``.npz`` with an
        array ``X`` and optionally labels ``y``, or with the trainer's X_train, y_train, X_test,
        y_test (read as one table, the train rows first); or a folder of Fashion-MNIST IDX files or
        Madelon-style files (likewise).
    n_features : int, optional
        Features a row must have. A csv file with ``n_features + 1`` columns is labelled (the label in
        ``label_column``), one with ``n_features`` columns holds features only. svmlight rows always
        carry a label; their width is the largest index present, so narrower files are padded with
        zero columns (the format's absent entries are zeros). None reads a csv file as labelled.
    label_column : int
        The csv column that holds the label in a labelled file (default the last).

    Returns
    -------
    X : ndarray of shape (n_samples, n_columns), float32, C-contiguous
    y : ndarray of shape (n_samples,), or None
        The labels as written in the file (not encoded); None for a file without labels.

    Raises
    ------
    DataError
        A missing or unreadable path, an unknown format, a number of columns that fits neither
        reading of ``n_features``, or invalid values (the message says which and what to do).
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.exists():
        raise DataError(f"no such file or directory: {str(path.resolve())!r}; give a .csv, svmlight "
                        f"({', '.join(_SVMLIGHT_SUFFIXES)}) or .npz file, or a folder of IDX or Madelon-style files.")
    try:
        X, y = _read_whole(path, n_features, label_column)
    except OSError as exc:
        raise DataError(
            f"cannot read {exc.filename or path}: {exc.strerror or exc}; check the path and its permissions."
        ) from exc
    X = validate_features(X, name=str(path))
    if y is not None:
        y = _as_label_vector(y, f"the labels of {path}")
        if len(y) != X.shape[0]:
            raise DataError(f"{path} has {X.shape[0]} rows of features but {len(y)} labels; give one label per row.")
    return X, y


def _read_whole(path: Path, n_features: int | None, label_column: int):
    """Features and labels (or None) of every row of ``path``, before validation."""
    suffix = path.suffix.lower()
    if path.is_dir():
        return _joined(_load_directory(path))
    if suffix == ".npz":
        return _read_npz_table(path)
    if suffix == ".csv":
        return _read_csv_table(path, n_features, label_column)
    if suffix in _SVMLIGHT_SUFFIXES:
        X, y = _read_svmlight(path)
        if n_features is not None and X.shape[1] < n_features:
            X = np.hstack([X, np.zeros((X.shape[0], n_features - X.shape[1]), dtype=X.dtype)])
        return X, y
    raise DataError(f"{path}: unknown file type {path.suffix!r}. Accepted formats: {ACCEPTED_FORMATS}.")


def _joined(splits: _Splits):
    """A train/test pair as one table: the train rows, then the test rows."""
    X_train, X_test = np.asarray(splits.X_train), np.asarray(splits.X_test)
    if X_train.ndim != 2 or X_test.ndim != 2 or X_train.shape[1] != X_test.shape[1]:
        raise DataError(f"{splits.name}: the train rows have shape {X_train.shape} and the test rows {X_test.shape}; "
                        "both need the same columns to be read as one table.")
    y_train, y_test = _as_label_vector(splits.y_train, "y_train"), _as_label_vector(splits.y_test, "y_test")
    return np.concatenate([X_train, X_test]), np.concatenate([y_train, y_test])


def _read_npz_table(path: Path):
    """A .npz with ``X`` (and optionally ``y``), or the trainer's four arrays as one table."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in ("X", "y") if key in archive.files}
    except (ValueError, AttributeError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path} is not a readable .npz of plain arrays ({exc}); save the rows with np.savez(path, X=...) "
            "or np.savez(path, X=..., y=...), labels as numbers or strings, not Python objects."
        ) from exc
    if "X" not in arrays:
        return _joined(_read_npz(path))
    return arrays["X"], arrays.get("y")


def _read_csv_table(path: Path, n_features: int | None, label_column: int):
    """A csv file's features and labels, or all its columns as features when it has ``n_features`` columns."""
    X, labels = _read_csv(path, label_column)
    n_columns = X.shape[1] + 1
    if n_features is None or n_columns == n_features + 1:
        return X, labels
    where = "the last column" if label_column == -1 else f"column {label_column} (0-based)"
    if n_columns != n_features:
        raise DataError(
            f"{path} has {n_columns} columns but the model takes {n_features} features: give {n_features} "
            f"columns (features only) or {n_features + 1} (features and the label, in {where})."
        )
    if labels.dtype.kind not in "iuf":
        raise DataError(
            f"{path} has {n_columns} columns, as many as the model's features, so it is read as features "
            f"without labels, but {where} holds text such as {labels[0]!r}: add the missing feature column, "
            "or drop the label column."
        )
    return np.insert(X, label_column % n_columns, labels.astype(np.float32), axis=1), None


def _spec_paths(spec: str) -> list[Path]:
    """The one or two existing paths that ``spec`` names; DataError when one does not exist."""
    single = Path(spec).expanduser()
    if single.exists():
        return [single]
    if "," not in spec:
        raise _missing_path_error(spec)
    parts = [part.strip() for part in spec.split(",")]
    if len(parts) != 2 or not all(parts):
        raise DataError(f"{spec!r} should name a train file and a test file, 'train.csv,test.csv'.")
    for part in parts:
        if not Path(part).expanduser().exists():
            raise _missing_path_error(part)
    return [Path(part).expanduser() for part in parts]


def _missing_path_error(spec: str) -> DataError:
    """The error for a spec that is neither a known name nor an existing path."""
    path = Path(spec).expanduser()
    if not path.suffix and "/" not in spec and os.sep not in spec:
        return DataError(
            f"unknown data set {spec!r}: the known names are {', '.join(KNOWN_DATASETS)}; anything else "
            f"is read as a path, and there is no file or directory {str(path.resolve())!r}. "
            f"Accepted formats: {ACCEPTED_FORMATS}."
        )
    return DataError(
        f"no such file or directory: {str(path.resolve())!r} (given as {spec!r}). Check the path; "
        f"accepted formats: {ACCEPTED_FORMATS}. Known data set names: {', '.join(KNOWN_DATASETS)}."
    )


def _load_pair(train: Path, test: Path, *, label_column: int) -> _Splits:
    """A train file and a test file of the same format (csv or svmlight)."""
    suffixes = {train.suffix.lower(), test.suffix.lower()}
    if suffixes == {".csv"}:
        (X_train, y_train), (X_test, y_test) = _read_csv(train, label_column), _read_csv(test, label_column)
    elif suffixes <= set(_SVMLIGHT_SUFFIXES):
        X_train, y_train, X_test, y_test = _read_svmlight_pair(train, test)
    else:
        raise DataError(
            f"a train/test pair must be two .csv files or two svmlight files ({', '.join(_SVMLIGHT_SUFFIXES)}); "
            f"got {train.name} and {test.name}."
        )
    return _Splits(train.name, f"train {train}, test {test}", X_train, y_train, X_test, y_test)


def _load_directory(path: Path) -> _Splits:
    """A folder with Fashion-MNIST IDX files or Madelon-style NAME_{train,valid}.{data,labels} files."""
    found, missing = _idx_files(path)
    if found:
        return _read_idx_set(path, path.name, "IDX files")
    train_files = sorted(path.glob("*_train.data"))
    if len(train_files) == 1:
        return _read_nips2003(train_files[0])
    if len(train_files) > 1:
        raise DataError(
            f"{path} holds several data sets ({', '.join(p.name for p in train_files)}); give a folder with one."
        )
    raise DataError(f"{path} is a directory but holds no data set files. Accepted formats: {ACCEPTED_FORMATS}.")


def _read_nips2003(train_data: Path) -> _Splits:
    """Madelon-style text files: NAME_train.data/.labels (train) and NAME_valid.data/.labels (test)."""
    prefix = train_data.name[: -len("_train.data")]
    files = {f"{split}.{kind}": train_data.with_name(f"{prefix}_{split}.{kind}")
             for split in ("train", "valid") for kind in ("data", "labels")}
    missing = [path.name for path in files.values() if not path.is_file()]
    if missing:
        raise DataError(
            f"{train_data.parent} lacks {', '.join(missing)}; Madelon-style folders need all four files."
        )
    arrays = []
    for split in ("train", "valid"):
        try:
            arrays.append(np.loadtxt(files[f"{split}.data"], dtype=np.float32, ndmin=2))
        except ValueError as exc:
            raise DataError(
                f"{files[f'{split}.data']}: {exc}; features must be whitespace-separated numbers."
            ) from exc
        arrays.append(_natural_labels(np.loadtxt(files[f"{split}.labels"], dtype=str, ndmin=1)))
    origin = f"text files {prefix}_{{train,valid}}.{{data,labels}} in {train_data.parent}, test = valid"
    return _Splits(prefix, origin, *arrays)


def _read_npz(path: Path) -> _Splits:
    """Arrays X_train, y_train, X_test, y_test of a .npz file."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, AttributeError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path} is not a readable .npz of plain arrays ({exc}); save labels as numbers or strings "
            "(np.asarray(y, dtype=str)), not Python objects, with np.savez(path, X_train=..., y_train=..., "
            "X_test=..., y_test=...)."
        ) from exc
    missing = [key for key in _NPZ_KEYS if key not in arrays]
    if missing:
        raise DataError(
            f"{path} lacks the array(s) {', '.join(missing)} (it holds {', '.join(sorted(arrays)) or 'none'}); "
            "save it with np.savez(path, X_train=..., y_train=..., X_test=..., y_test=...)."
        )
    return _Splits(path.stem, f"arrays of {path}", *(arrays[key] for key in _NPZ_KEYS))


def _read_csv(path: Path, label_column: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, d) float32 and labels (n,) of a csv file; a header line is detected and skipped."""
    with open(path, newline="") as handle:
        first_line = handle.readline()
    if not first_line.strip():
        raise DataError(f"{path} is empty or starts with a blank line; give one sample per line.")
    delimiter = next((d for d in (",", ";", "\t") if d in first_line), None)
    n_columns = len(first_line.split(delimiter))
    if n_columns < 2:
        raise DataError(f"{path} has a single column; it needs feature columns and a label column.")
    if not -n_columns <= label_column < n_columns:
        raise DataError(f"label_column={label_column} is outside the {n_columns} columns of {path}.")
    label_index = label_column % n_columns
    feature_columns = [i for i in range(n_columns) if i != label_index]
    header_fields = first_line.split(delimiter)
    has_header = not all(_is_number(header_fields[i]) for i in feature_columns)
    options = dict(delimiter=delimiter, skiprows=int(has_header), quotechar='"', comments=None)
    _check_table_size(path, n_columns, int(has_header))
    try:
        X = np.loadtxt(path, usecols=feature_columns, dtype=np.float32, ndmin=2, **options)
        labels = np.loadtxt(path, usecols=label_index, dtype=str, ndmin=1, **options)
    except ValueError as exc:
        raise _csv_problem(path, delimiter, n_columns, label_index, int(has_header)) or DataError(
            f"{path}: {exc}. Every column but the label must hold numbers; encode categorical columns "
            "as numbers and give every row the same number of columns."
        ) from exc
    if len(labels) == 0:
        raise DataError(f"{path} holds a header but no data rows.")
    if (np.char.strip(labels) == "").any():
        problem = _csv_problem(path, delimiter, n_columns, label_index, int(has_header))
        if problem is not None:
            raise problem
    return X, _natural_labels(labels)


def _csv_problem(path: Path, delimiter: str | None, n_columns: int, label_index: int,
                 skip: int) -> DataError | None:
    """The first field of a csv file that cannot be read, as a DataError naming its line and column.

    Lines are those of the file, from 1 and counting a header; columns count from 1. Blank lines are
    passed over, as ``np.loadtxt`` does. None when every field reads.
    """
    with open(path, newline="") as handle:
        if delimiter is None:
            rows = ((number, line.split()) for number, line in enumerate(handle, start=1))
        else:
            reader = csv.reader(handle, delimiter=delimiter, quotechar='"')
            rows = ((reader.line_num, fields) for fields in reader)
        for line, fields in rows:
            if line <= skip or not fields:
                continue
            if len(fields) != n_columns:
                return DataError(
                    f"{path}: line {line} has {len(fields)} columns but line 1 has {n_columns}; give every row "
                    "the same columns (each feature and the label)."
                )
            for index, text in enumerate(fields):
                where = f"at line {line}, column {index + 1} (lines count from 1, the header included)"
                if not text.strip() and index == label_index:
                    return DataError(f"{path}: missing label {where}. Give that row its label, or drop the row.")
                if not text.strip():
                    return DataError(
                        f"{path}: missing value {where}. Fill it in (for instance with its column's mean), or "
                        "drop the row."
                    )
                if index != label_index and not _is_number(text):
                    return DataError(
                        f"{path}: {text!r} {where} is not a number. Every column but the label must hold "
                        "numbers: encode categorical columns as numbers (e.g. one-hot) and drop text columns."
                    )
    return None


def _is_number(text: str) -> bool:
    """Whether ``text`` parses as a float (a csv field, possibly quoted)."""
    try:
        float(text.strip().strip('"'))
    except ValueError:
        return False
    return True


def _natural_labels(text: np.ndarray) -> np.ndarray:
    """Labels read as text, as int64 if all are integers, else float64 if all are numbers, else str."""
    stripped = np.char.strip(text.astype(str))
    for kind in (np.int64, np.float64):
        try:
            return stripped.astype(kind)
        except ValueError:
            continue
    return stripped


def _integral_to_int(y: np.ndarray) -> np.ndarray:
    """Float labels that are all whole numbers (svmlight, LightGBM text) as int64, others unchanged."""
    if np.isfinite(y).all() and (y == np.round(y)).all():
        return y.astype(np.int64)
    return y


def _read_svmlight(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Dense float32 features (n, d) and labels (n,) of an svmlight/libsvm file."""
    from sklearn.datasets import load_svmlight_file

    try:
        X, y = load_svmlight_file(str(path), dtype=np.float32)
    except ValueError as exc:
        raise DataError(
            f"{path} is not a valid svmlight/libsvm file ({exc}); lines must read 'label index:value ...'."
        ) from exc
    _check_densified_size([X], str(path))
    return X.toarray(), _integral_to_int(y)


def _read_svmlight_pair(train: Path, test: Path):
    """Dense float32 train and test features with the same columns, and their labels."""
    from sklearn.datasets import load_svmlight_files

    try:
        X_train, y_train, X_test, y_test = load_svmlight_files([str(train), str(test)], dtype=np.float32)
    except ValueError as exc:
        raise DataError(f"{train} / {test}: not valid svmlight/libsvm files ({exc}).") from exc
    _check_densified_size([X_train, X_test], f"{train} / {test}")
    return X_train.toarray(), _integral_to_int(y_train), X_test.toarray(), _integral_to_int(y_test)


def _check_table_size(path: Path, n_columns: int, skip: int, sample_lines: int = 1000) -> None:
    """DataError when reading a csv file of ``n_columns`` columns would not fit in memory.

    The row count is estimated from the file's size and the length of its first lines; reading
    holds the float32 features and the label column's text, about 8 bytes a field. The limit is
    the memory a run plans to use by default (:data:`wasap.memory.DEFAULT_BUDGET`).
    """
    from .memory import format_bytes

    size = path.stat().st_size
    with open(path, "rb") as handle:
        lines = [line for _, line in zip(range(sample_lines + skip), handle)][skip:]
    if not lines:
        return
    rows = int(size / (sum(len(line) for line in lines) / len(lines)))
    needed = 8 * rows * n_columns
    limit, limit_text = _reading_limit()
    if needed <= limit:
        return
    raise DataError(
        f"{path}: about {rows} rows x {n_columns} columns (from its size, {format_bytes(size)}) would take about "
        f"{format_bytes(needed)} to read, more than {limit_text}. Train on a sample of its rows or fewer columns, "
        "or on a machine with more memory."
    )


def _reading_limit() -> tuple[int, str]:
    """The bytes a reader may let its data take (:data:`wasap.memory.DEFAULT_BUDGET`), and those words."""
    from .memory import DEFAULT_BUDGET, available_bytes, format_bytes

    available = available_bytes()
    limit = DEFAULT_BUDGET.resolve(available)
    return limit, (f"the {format_bytes(limit)} a run may use ({DEFAULT_BUDGET.fraction:.0%} of the "
                   f"{format_bytes(available)} available)")


def _check_densified_size(matrices: list, source: str) -> None:
    """DataError when the dense float32 copies of these sparse matrices would not fit in memory.

    wasap trains on dense rows, so an svmlight file becomes rows x (largest feature
    index) values; a file naming feature 10**9 would become terabytes. The limit is the
    memory a run plans to use by default (:data:`wasap.memory.DEFAULT_BUDGET`).
    """
    from .memory import format_bytes

    dense = sum(4 * X.shape[0] * X.shape[1] for X in matrices)
    limit, limit_text = _reading_limit()
    if dense <= limit:
        return
    rows = sum(X.shape[0] for X in matrices)
    used = np.unique(np.concatenate([X.indices for X in matrices])).shape[0]
    raise DataError(
        f"{source}: its {rows} rows x {matrices[0].shape[1]} features (up to its largest feature index) take "
        f"{format_bytes(dense)} as dense float32, more than {limit_text}; wasap trains on dense rows. Only "
        f"{used} distinct features occur: number them consecutively from 1 (drop the unused indices), keep "
        "fewer features, or use a machine with more memory."
    )


def _check_test_fraction(test_fraction: float) -> None:
    """DataError unless 0 < test_fraction < 1."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}.")


def _split(X: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    """Train/test split with ``seed``, stratified when every class has at least 2 samples."""
    from sklearn.model_selection import train_test_split

    y = _as_label_vector(y, "y")
    if len(y) != len(X):
        raise DataError(f"X has {len(X)} samples (rows) but y has {len(y)} labels; give one label per row of X.")
    _, counts = np.unique(y, return_counts=True)
    try:
        return train_test_split(X, y, test_size=test_fraction, random_state=seed,
                                stratify=y if counts.min() >= 2 else None)
    except ValueError as exc:
        raise DataError(
            f"cannot split {len(y)} samples with test_fraction={test_fraction} ({exc}); give more samples, "
            "a test_fraction that leaves both splits at least one sample per class, or a train/test pair."
        ) from exc
