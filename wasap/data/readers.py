"""Readers of the file formats wasap trains on: csv, svmlight/libsvm, npz, IDX, the CIFAR-10 JPEG
copy, Madelon-style text files and LightGBM's label-first tables.

Each reader returns raw arrays (features and labels as written, or a :class:`Splits` of them);
:func:`wasap.data.load_dataset` checks and encodes them into a :class:`~wasap.data.Dataset`, and
:func:`read_table` checks the rows a trained model is to predict. Before reading a file whose
contents would not fit in memory, the readers refuse it with the estimate.

Sparse data stays sparse: an svmlight file's features are a scipy.sparse CSR matrix, and so is a
split of a .npz file stored in the sparse convention (:data:`SPARSE_NPZ_PARTS`, written by
:func:`write_npz`).
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
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import scipy.sparse

from .validation import DataError, as_label_vector, validate_features

__all__ = ["ACCEPTED_FORMATS", "SPARSE_NPZ_PARTS", "read_table", "write_npz"]

ACCEPTED_FORMATS = (
    "a .npz file with arrays X_train, y_train, X_test, y_test (a sparse split as X_train_data, X_train_indices, "
    "X_train_indptr, X_train_shape: see wasap.data.write_npz); "
    "a .csv file (label in the last column, optional header; a train/test pair as 'train.csv,test.csv'); "
    "an svmlight/libsvm file (.svm, .svmlight, .libsvm, .txt; a pair as 'train.svm,test.svm'; kept sparse); "
    "a directory holding Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) or Madelon-style files "
    "(NAME_train.data, NAME_train.labels, NAME_valid.data, NAME_valid.labels)"
)

SVMLIGHT_SUFFIXES = (".svm", ".svmlight", ".libsvm", ".txt")

#: The four files of a Fashion-MNIST folder (each may also be gzip-compressed, ``.gz``).
IDX_FILES = {
    "X_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "X_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

CIFAR_ARCHIVE = "CIFAR-10-images_jpeg.tar.gz"
_CIFAR_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

#: The arrays of a data set's .npz file.
NPZ_KEYS = ("X_train", "y_train", "X_test", "y_test")

#: How a .npz file holds a sparse feature matrix ``X_train`` (or ``X_test``, or ``X``): as the CSR
#: arrays that ``scipy.sparse.save_npz`` writes, under the matrix's name and an underscore,
#: ``X_train_data``, ``X_train_indices``, ``X_train_indptr`` and ``X_train_shape`` (2 integers).
SPARSE_NPZ_PARTS = ("data", "indices", "indptr", "shape")

#: The entries of a file written by ``scipy.sparse.save_npz`` (one matrix, no labels).
_SCIPY_NPZ_KEYS = {"data", "indices", "indptr", "shape", "format"}


@dataclass
class Splits:
    """What a reader read, before validation, label encoding and standardisation.

    ``origin`` says where the data came from, for :attr:`Dataset.description <wasap.data.Dataset>`.
    """

    name: str
    origin: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def check_test_fraction(test_fraction: float) -> None:
    """DataError unless 0 < test_fraction < 1."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}.")


def split_table(X: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    """Train/test split with ``seed``, stratified when every class has at least 2 samples."""
    from sklearn.model_selection import train_test_split

    y = as_label_vector(y, "y")
    if len(y) != X.shape[0]:
        raise DataError(f"X has {X.shape[0]} samples (rows) but y has {len(y)} labels; give one label per row of X.")
    _, counts = np.unique(y, return_counts=True)
    try:
        return train_test_split(X, y, test_size=test_fraction, random_state=seed,
                                stratify=y if counts.min() >= 2 else None)
    except ValueError as exc:
        raise DataError(
            f"cannot split {len(y)} samples with test_fraction={test_fraction} ({exc}); give more samples, "
            "a test_fraction that leaves both splits at least one sample per class, or a train/test pair."
        ) from exc


def read_pair(train: Path, test: Path, *, label_column: int) -> Splits:
    """A train file and a test file of the same format (csv or svmlight)."""
    suffixes = {train.suffix.lower(), test.suffix.lower()}
    if suffixes == {".csv"}:
        (X_train, y_train), (X_test, y_test) = read_csv(train, label_column), read_csv(test, label_column)
    elif suffixes <= set(SVMLIGHT_SUFFIXES):
        X_train, y_train, X_test, y_test = _read_svmlight_pair(train, test)
    else:
        raise DataError(
            f"a train/test pair must be two .csv files or two svmlight files ({', '.join(SVMLIGHT_SUFFIXES)}); "
            f"got {train.name} and {test.name}."
        )
    return Splits(train.name, f"train {train}, test {test}", X_train, y_train, X_test, y_test)


def read_directory(path: Path) -> Splits:
    """A folder with Fashion-MNIST IDX files or Madelon-style NAME_{train,valid}.{data,labels} files."""
    found, missing = idx_files(path)
    if found:
        return read_idx_set(path, path.name, "IDX files")
    train_files = sorted(path.glob("*_train.data"))
    if len(train_files) == 1:
        return _read_nips2003(train_files[0])
    if len(train_files) > 1:
        raise DataError(
            f"{path} holds several data sets ({', '.join(p.name for p in train_files)}); give a folder with one."
        )
    raise DataError(f"{path} is a directory but holds no data set files. Accepted formats: {ACCEPTED_FORMATS}.")


def _read_nips2003(train_data: Path) -> Splits:
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
    return Splits(prefix, origin, *arrays)


def read_npz(path: Path) -> Splits:
    """Arrays X_train, y_train, X_test, y_test of a .npz file; sparse splits as :data:`SPARSE_NPZ_PARTS` say."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, AttributeError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path} is not a readable .npz of plain arrays ({exc}); save labels as numbers or strings "
            "(np.asarray(y, dtype=str)), not Python objects, with np.savez(path, X_train=..., y_train=..., "
            "X_test=..., y_test=...)."
        ) from exc
    if _SCIPY_NPZ_KEYS <= set(arrays):
        raise DataError(
            f"{path} holds one scipy.sparse matrix (scipy.sparse.save_npz) and no labels; a data set file needs "
            "X_train, y_train, X_test and y_test: write it with wasap.data.write_npz(path, X_train=..., "
            "y_train=..., X_test=..., y_test=...), which stores sparse splits as sparse."
        )
    splits = {key: _npz_matrix(arrays, key, path) if key.startswith("X") else arrays.get(key) for key in NPZ_KEYS}
    missing = [key for key in NPZ_KEYS if splits[key] is None]
    if missing:
        raise DataError(
            f"{path} lacks the array(s) {', '.join(missing)} (it holds {', '.join(sorted(arrays)) or 'none'}); "
            "save it with np.savez(path, X_train=..., y_train=..., X_test=..., y_test=...), or with "
            "wasap.data.write_npz for sparse X."
        )
    return Splits(path.stem, f"arrays of {path}", *(splits[key] for key in NPZ_KEYS))


def _npz_matrix(arrays: dict, key: str, path: Path):
    """The features ``key`` of a .npz file's arrays: dense as stored, sparse (CSR) from its parts; None if absent."""
    if key in arrays:
        return arrays[key]
    parts = {part: arrays.get(f"{key}_{part}") for part in SPARSE_NPZ_PARTS}
    if all(value is None for value in parts.values()):
        return None
    absent = [f"{key}_{part}" for part, value in parts.items() if value is None]
    if absent:
        raise DataError(f"{path} holds part of the sparse matrix {key} but lacks {', '.join(absent)}; a sparse "
                        f"matrix takes the four arrays {', '.join(f'{key}_{part}' for part in SPARSE_NPZ_PARTS)} "
                        "(wasap.data.write_npz writes them).")
    shape = parts["shape"]
    if shape.shape != (2,) or shape.dtype.kind not in "iu":
        raise DataError(f"{path}: {key}_shape must hold the 2 integers (n_samples, n_features), got {shape!r}.")
    try:
        return scipy.sparse.csr_matrix((parts["data"], parts["indices"], parts["indptr"]),
                                       shape=tuple(int(n) for n in shape))
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: the arrays of the sparse matrix {key} do not make a CSR matrix ({exc}); write "
                        "them again from a scipy.sparse.csr_matrix.") from exc


def write_npz(path: str | os.PathLike, **arrays) -> None:
    """Write arrays to a .npz file that :func:`wasap.load_dataset` and :func:`read_table` read back.

    Dense arrays are stored as they are (``np.savez``); a scipy.sparse feature matrix is stored as
    its CSR arrays under its name (:data:`SPARSE_NPZ_PARTS`), so that it loads sparse again.

    Parameters
    ----------
    path : str or os.PathLike
    **arrays : array-like or scipy.sparse matrix
        By name: ``X_train``, ``y_train``, ``X_test``, ``y_test`` for a data set, or ``X`` and
        optionally ``y`` for rows to predict.
    """
    stored = {}
    for name, value in arrays.items():
        if scipy.sparse.issparse(value):
            matrix = scipy.sparse.csr_matrix(value)
            stored.update({f"{name}_data": matrix.data, f"{name}_indices": matrix.indices,
                           f"{name}_indptr": matrix.indptr, f"{name}_shape": np.array(matrix.shape, dtype=np.int64)})
        else:
            stored[name] = np.asarray(value)
    np.savez(os.fspath(path), **stored)


def read_csv(path: Path, label_column: int) -> tuple[np.ndarray, np.ndarray]:
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


def read_svmlight(path: Path):
    """Features (n, d), a scipy.sparse CSR matrix of float32, and labels (n,) of an svmlight/libsvm file."""
    from sklearn.datasets import load_svmlight_file

    try:
        X, y = load_svmlight_file(str(path), dtype=np.float32)
    except ValueError as exc:
        raise DataError(
            f"{path} is not a valid svmlight/libsvm file ({exc}); lines must read 'label index:value ...'."
        ) from exc
    _check_feature_count([X], str(path))
    return X, _integral_to_int(y)


def _read_svmlight_pair(train: Path, test: Path):
    """Train and test features with the same columns (CSR matrices of float32), and their labels."""
    from sklearn.datasets import load_svmlight_files

    try:
        X_train, y_train, X_test, y_test = load_svmlight_files([str(train), str(test)], dtype=np.float32)
    except ValueError as exc:
        raise DataError(f"{train} / {test}: not valid svmlight/libsvm files ({exc}).") from exc
    _check_feature_count([X_train, X_test], f"{train} / {test}")
    return X_train, _integral_to_int(y_train), X_test, _integral_to_int(y_test)


def _check_table_size(path: Path, n_columns: int, skip: int, sample_lines: int = 1000) -> None:
    """DataError when reading a csv file of ``n_columns`` columns would not fit in memory.

    The row count is estimated from the file's size and the length of its first lines; reading
    holds the float32 features and the label column's text, about 8 bytes a field. The limit is
    the memory a run plans to use by default (:data:`wasap.memory.DEFAULT_BUDGET`).
    """
    from ..memory import format_bytes

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


#: Bytes a run takes per input feature whatever the network: the feature's scale (float64) and the first
#: layer's row pointer (int64).
_BYTES_PER_FEATURE = 16


def _check_feature_count(matrices: list, source: str) -> None:
    """DataError when the width of these sparse matrices (their largest feature index) is beyond memory.

    A sparse file's rows cost their nonzeros, but a run keeps per-feature arrays for
    every index up to the largest (:data:`_BYTES_PER_FEATURE`): a file naming feature
    10**9 would take gigabytes for features that hold nothing. The limit is the memory
    a run plans to use by default (:data:`wasap.memory.DEFAULT_BUDGET`).
    """
    from ..memory import format_bytes

    n_features = matrices[0].shape[1]
    needed = _BYTES_PER_FEATURE * n_features
    limit, limit_text = _reading_limit()
    if needed <= limit:
        return
    rows = sum(X.shape[0] for X in matrices)
    used = np.unique(np.concatenate([X.indices for X in matrices])).shape[0]
    raise DataError(
        f"{source}: its {rows} rows name features up to index {n_features}, and a run keeps "
        f"{_BYTES_PER_FEATURE} bytes for each of them (its scale and the input layer's row pointer): "
        f"{format_bytes(needed)}, more than {limit_text}. Only {used} distinct features occur: number them "
        "consecutively from 1 (drop the unused indices), keep fewer features, or use a machine with more memory."
    )


def _reading_limit() -> tuple[int, str]:
    """The bytes a reader may let its data take (:data:`wasap.memory.DEFAULT_BUDGET`), and those words."""
    from ..memory import DEFAULT_BUDGET, available_bytes, format_bytes

    available = available_bytes()
    limit = DEFAULT_BUDGET.resolve(available)
    return limit, (f"the {format_bytes(limit)} a run may use ({DEFAULT_BUDGET.fraction:.0%} of the "
                   f"{format_bytes(available)} available)")


def idx_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """Fashion-MNIST IDX files found in ``directory`` (plain or .gz), and the names of those missing."""
    found, missing = {}, []
    for key, stem in IDX_FILES.items():
        candidates = [directory / stem, directory / f"{stem}.gz"]
        present = [path for path in candidates if path.is_file()]
        if present:
            found[key] = present[0]
        else:
            missing.append(f"{stem}[.gz]")
    return found, missing


def read_idx_set(directory: Path, name: str, source: str) -> Splits:
    """Train and test images (flattened row by row) and labels from the four IDX files of a folder."""
    found, missing = idx_files(directory)
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
    return Splits(
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


def read_label_first_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
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


def read_cifar_images(source: Path) -> Splits:
    """The CIFAR-10 JPEG copy at ``source`` (an archive or the extracted folder), sorted by class and file."""
    image_module = _import_pillow()
    images = {"train": [], "test": []}
    for split, class_name, file_name, payload in _cifar_members(cifar_source(source)):
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
    return Splits("cifar10", f"CIFAR-10 JPEG copy (lossy) from {source}, channel-major pixels", *arrays)


def cifar_source(path: Path) -> Path | None:
    """The archive or extracted folder that ``path`` designates, if any."""
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        return path
    if (path / CIFAR_ARCHIVE).is_file():
        return path / CIFAR_ARCHIVE
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
            f"{source} is not a readable tar archive ({exc}); download {CIFAR_ARCHIVE} again."
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


def read_table(path: str | os.PathLike, *, n_features: int | None = None,
               label_column: int = -1) -> tuple[np.ndarray, np.ndarray | None]:
    """Read every row of one data file, unsplit: the rows a trained model is to predict.

    Parameters
    ----------
    path : str or os.PathLike
        What the trainer reads from a path, taken whole: a ``.csv`` file (header detected); an
        svmlight/libsvm file (``.svm``, ``.svmlight``, ``.libsvm``, ``.txt``), kept sparse; a ``.npz``
        with an array ``X`` (dense, or sparse as :data:`SPARSE_NPZ_PARTS` say) and optionally labels
        ``y``, or with the trainer's X_train, y_train, X_test, y_test (read as one table, the train
        rows first), or one matrix written by ``scipy.sparse.save_npz`` (rows without labels); or a
        folder of Fashion-MNIST IDX files or Madelon-style files (likewise).
    n_features : int, optional
        Features a row must have. A csv file with ``n_features + 1`` columns is labelled (the label in
        ``label_column``), one with ``n_features`` columns holds features only. svmlight rows always
        carry a label; their width is the largest index present, so narrower files are padded with
        zero columns (the format's absent entries are zeros). None reads a csv file as labelled.
    label_column : int
        The csv column that holds the label in a labelled file (default the last).

    Returns
    -------
    X : ndarray of shape (n_samples, n_columns), float32, C-contiguous; or scipy.sparse CSR
        Sparse for svmlight files and sparse .npz matrices (:func:`wasap.data.validate_features`).
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
                        f"({', '.join(SVMLIGHT_SUFFIXES)}) or .npz file, or a folder of IDX or Madelon-style files.")
    try:
        X, y = _read_whole(path, n_features, label_column)
    except OSError as exc:
        raise DataError(
            f"cannot read {exc.filename or path}: {exc.strerror or exc}; check the path and its permissions."
        ) from exc
    X = validate_features(X, name=str(path))
    if y is not None:
        y = as_label_vector(y, f"the labels of {path}")
        if len(y) != X.shape[0]:
            raise DataError(f"{path} has {X.shape[0]} rows of features but {len(y)} labels; give one label per row.")
    return X, y


def _read_whole(path: Path, n_features: int | None, label_column: int):
    """Features and labels (or None) of every row of ``path``, before validation."""
    suffix = path.suffix.lower()
    if path.is_dir():
        return _joined(read_directory(path))
    if suffix == ".npz":
        return _read_npz_table(path)
    if suffix == ".csv":
        return _read_csv_table(path, n_features, label_column)
    if suffix in SVMLIGHT_SUFFIXES:
        X, y = read_svmlight(path)
        if n_features is not None and X.shape[1] < n_features:
            # The absent columns are zeros: the same nonzeros in a wider matrix.
            X = scipy.sparse.csr_matrix((X.data, X.indices, X.indptr), shape=(X.shape[0], n_features))
        return X, y
    raise DataError(f"{path}: unknown file type {path.suffix!r}. Accepted formats: {ACCEPTED_FORMATS}.")


def _joined(splits: Splits):
    """A train/test pair as one table: the train rows, then the test rows."""
    sparse = scipy.sparse.issparse(splits.X_train) and scipy.sparse.issparse(splits.X_test)
    X_train, X_test = (splits.X_train, splits.X_test) if sparse else (_dense(splits.X_train), _dense(splits.X_test))
    if X_train.ndim != 2 or X_test.ndim != 2 or X_train.shape[1] != X_test.shape[1]:
        raise DataError(f"{splits.name}: the train rows have shape {X_train.shape} and the test rows {X_test.shape}; "
                        "both need the same columns to be read as one table.")
    y_train, y_test = as_label_vector(splits.y_train, "y_train"), as_label_vector(splits.y_test, "y_test")
    X = scipy.sparse.vstack([X_train, X_test], format="csr") if sparse else np.concatenate([X_train, X_test])
    return X, np.concatenate([y_train, y_test])


def _dense(X) -> np.ndarray:
    """Features as a dense array (one split of a pair whose other split is dense)."""
    return X.toarray() if scipy.sparse.issparse(X) else np.asarray(X)


def _read_npz_table(path: Path):
    """A .npz with ``X`` (and optionally ``y``), or the trainer's four arrays as one table."""
    wanted = {"X", "y", *(f"X_{part}" for part in SPARSE_NPZ_PARTS)}
    try:
        with np.load(path, allow_pickle=False) as archive:
            if _SCIPY_NPZ_KEYS <= set(archive.files):
                return scipy.sparse.load_npz(path).tocsr(), None
            arrays = {key: archive[key] for key in archive.files if key in wanted}
    except (ValueError, AttributeError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path} is not a readable .npz of plain arrays ({exc}); save the rows with np.savez(path, X=...) "
            "or np.savez(path, X=..., y=...) (wasap.data.write_npz for sparse X), labels as numbers or strings, "
            "not Python objects."
        ) from exc
    X = _npz_matrix(arrays, "X", path)
    if X is None:
        return _joined(read_npz(path))
    return X, arrays.get("y")


def _read_csv_table(path: Path, n_features: int | None, label_column: int):
    """A csv file's features and labels, or all its columns as features when it has ``n_features`` columns."""
    X, labels = read_csv(path, label_column)
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

