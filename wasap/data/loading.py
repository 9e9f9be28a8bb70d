"""load_dataset: the named data sets (where their files are found), users' files and synthetic data."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import scipy.sparse

# wasap.preprocessing builds on .validation; imported as a module, either package may be imported first.
from .. import preprocessing
from .dataset import Dataset
from .readers import (ACCEPTED_FORMATS, CIFAR_ARCHIVE, IDX_FILES, NPZ_KEYS, SVMLIGHT_SUFFIXES, Splits,
                      check_test_fraction, cifar_source, idx_files, read_cifar_images, read_csv, read_directory,
                      read_idx_set, read_label_first_table, read_npz, read_pair, read_svmlight, split_table)
from .synthetic import make_synthetic
from .validation import DataError, encode_labels

__all__ = ["FASHION_MNIST_DEBIAN_DIR", "KNOWN_DATASETS", "load_dataset"]

KNOWN_DATASETS = ("madelon", "fashion-mnist", "higgs", "cifar10", "synthetic")

#: Where Debian's dataset-fashion-mnist package puts the IDX files.
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

_ALIASES = {"cifar-10": "cifar10", "fashionmnist": "fashion-mnist"}


def load_dataset(
    spec: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    standardize: bool | None = None,
    n_samples: int = 10000,
    n_features: int = 100,
    n_classes: int = 2,
    n_informative: int | None = None,
    test_fraction: float = 0.3,
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

        Any other string is a path: a ``.npz`` with arrays X_train, y_train, X_test, y_test (sparse
        features stored as :data:`wasap.data.readers.SPARSE_NPZ_PARTS` say, as
        :func:`wasap.data.write_npz` writes them, load sparse); a ``.csv``
        (label in column ``label_column``, header detected); an svmlight/libsvm file (``.svm``,
        ``.svmlight``, ``.libsvm``, ``.txt``), kept sparse (CSR, float32); or a directory with Fashion-MNIST
        IDX files or Madelon-style ``NAME_{train,valid}.{data,labels}`` files. A single csv or svmlight
        file is split ``test_fraction`` stratified with ``seed``; a train/test pair is given as
        ``"train.csv,test.csv"``. Write ``./madelon`` for a path that looks like a name.
    data_dir : str or Path, optional
        Where the files of ``fashion-mnist``, ``higgs`` or ``cifar10`` are.
    seed : int
        Seeds the synthetic data and the split of single files.
    standardize : bool, optional
        True standardises each feature with the train split's mean and std (std 0 -> 1), as the paper
        does; sparse features are only divided by their std, without centering (which would densify
        them: :mod:`wasap.preprocessing`). False returns the raw values. None (the default): True for
        dense features, False for sparse ones, whose values (counts, tf-idf, indicators) are already of
        unit scale where they occur and learn best as they are (dividing by the std multiplies a
        feature held by a fraction ``p`` of the rows by about ``1 / sqrt(p)``; docs/sparse-data.md
        gives the measurements).
    n_samples, n_features, n_classes : int
        Shape of the synthetic data.
    n_informative : int, optional
        Informative synthetic features; default 10% of ``n_features``, at most 500 and at least
        ``ceil(log2(2 * n_classes))``.
    test_fraction : float
        Fraction of samples for the test split when a single file or synthetic data is split.
    chunk_rows : int, optional
        Rows per block of the chunked synthetic generator (forces it).
    label_column : int
        Which csv column holds the label (default the last).

    Returns
    -------
    Dataset
        X_train (n_train, n_features) and X_test (n_test, n_features), float32, C-contiguous (CSR
        matrices of float32 for sparse data: ``Dataset.is_sparse``); y_train, y_test int64 class
        indices; ``classes`` the original label values.

    Raises
    ------
    DataError
        Unknown name (lists the known names), missing or unreadable path (names it and lists the
        accepted formats), files of the wrong format, or invalid data.
    """
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
        splits = make_synthetic(
            n_samples=n_samples, n_features=n_features, n_classes=n_classes, n_informative=n_informative,
            test_fraction=test_fraction, seed=seed, chunk_rows=chunk_rows,
        )
    else:
        splits = _load_path(spec, seed=seed, test_fraction=test_fraction, label_column=label_column)
    return _finish(splits, standardize=standardize)


def _finish(splits: Splits, *, standardize: bool | None) -> Dataset:
    """Encode the labels of what a reader read, make it a Dataset (which checks it) and standardise it."""
    y_train, y_test, classes = encode_labels(splits.y_train, splits.y_test)
    data = Dataset(splits.name, splits.X_train, y_train, splits.X_test, y_test, classes)
    standardize_features = (not data.is_sparse) if standardize is None else bool(standardize)
    if standardize_features:
        # In place: the arrays are the readers' own, and a copy of a multi-GB split would double it.
        data.X_train, data.X_test = (X if _writable(X) else X.copy() for X in (data.X_train, data.X_test))
        data.feature_mean, data.feature_scale = preprocessing.standardize_splits_in_place(data.X_train, data.X_test)
    density = ""
    if data.is_sparse:
        nonzero = (data.X_train.nnz + data.X_test.nnz) / ((data.n_train + data.n_test) * data.n_features)
        density = f" (sparse, {100 * nonzero:.2g}% nonzero)"
    data.description = (
        f"{splits.name}: {splits.origin}; {data.n_train} train / {data.n_test} test samples x "
        f"{data.n_features} features{density}, {data.n_classes} classes"
    )
    if data.is_sparse:
        data.description += ("; scaled without centering (sparse input)" if standardize_features else
                             "; values kept as they are (sparse input; --standardize, standardize=True, "
                             "scales them without centering)")
    return data


def _writable(X) -> bool:
    """Whether the values of features ``X`` (an array, or a scipy.sparse matrix) may be changed in place."""
    return (X.data if scipy.sparse.issparse(X) else X).flags.writeable


def _load_bundled_madelon() -> Splits:
    """The Madelon arrays shipped in wasap/datasets/madelon.npz (see MADELON_PROVENANCE.md there)."""
    resource = resources.files("wasap.datasets").joinpath("madelon.npz")
    try:
        with resource.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in NPZ_KEYS}
    except (OSError, KeyError) as exc:
        raise DataError(
            f"the bundled Madelon copy ({resource}) is missing or damaged ({exc}); reinstall wasap, or "
            "rebuild it with tools/make_madelon_npz.py from the original text files."
        ) from exc
    return Splits(
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


def _load_fashion_mnist(data_dir) -> Splits:
    """Fashion-MNIST from IDX files in ``data_dir``, $WASAP_FASHION_MNIST or Debian's folder."""
    dirs = _search_dirs(data_dir, "WASAP_FASHION_MNIST", FASHION_MNIST_DEBIAN_DIR)
    directory = _locate(
        dirs, lambda d: not idx_files(d)[1], "fashion-mnist", "WASAP_FASHION_MNIST",
        ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
        + " (on Debian/Ubuntu: apt-get install dataset-fashion-mnist)",
    )
    return read_idx_set(directory, "fashion-mnist", "Fashion-MNIST (Zalando Research, MIT)")


def _load_higgs(data_dir) -> Splits:
    """HIGGS rows in LightGBM's text format: binary.train and binary.test in ``data_dir`` or $WASAP_HIGGS."""
    names = ("binary.train", "binary.test")
    directory = _locate(
        _search_dirs(data_dir, "WASAP_HIGGS"), lambda d: all((d / n).is_file() for n in names),
        "higgs", "WASAP_HIGGS", " and ".join(names) + " (LightGBM's examples/binary_classification)",
    )
    X_train, y_train = read_label_first_table(directory / "binary.train")
    X_test, y_test = read_label_first_table(directory / "binary.test")
    return Splits("higgs", f"HIGGS (UCI 280, CC BY 4.0), LightGBM text files in {directory}",
                   X_train, y_train, X_test, y_test)


def _load_cifar10(data_dir) -> Splits:
    """CIFAR-10 from the JPEG copy: an archive, a folder holding it, or the extracted folder."""
    source = _locate(
        _search_dirs(data_dir, "WASAP_CIFAR10"), lambda p: cifar_source(p) is not None, "cifar10", "WASAP_CIFAR10",
        f"{CIFAR_ARCHIVE} or its extracted train/ and test/ folders",
    )
    return read_cifar_images(source)


def _load_path(spec: str, *, seed: int, test_fraction: float, label_column: int) -> Splits:
    """Read a file, a train/test pair of files, or a directory named by ``spec``."""
    paths = _spec_paths(spec)
    try:
        if len(paths) == 2:
            return read_pair(*paths, label_column=label_column)
        path = paths[0]
        if path.is_dir():
            return read_directory(path)
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return read_npz(path)
        if suffix == ".csv":
            X, y = read_csv(path, label_column)
        elif suffix in SVMLIGHT_SUFFIXES:
            X, y = read_svmlight(path)
        else:
            raise DataError(f"{path}: unknown file type {path.suffix!r}. Accepted formats: {ACCEPTED_FORMATS}.")
        check_test_fraction(test_fraction)
        X_train, X_test, y_train, y_test = split_table(X, y, test_fraction, seed)
        return Splits(path.name, f"{path}, split {1 - test_fraction:.0%}/{test_fraction:.0%} with seed {seed}",
                       X_train, y_train, X_test, y_test)
    except OSError as exc:
        raise DataError(
            f"cannot read {exc.filename or spec}: {exc.strerror or exc}; check the path and its permissions."
        ) from exc


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

