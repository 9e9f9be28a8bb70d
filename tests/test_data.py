"""Tests of wasap.data: bundled Madelon, IDX/HIGGS/CIFAR readers, user files, synthetic data, validation,
the checks a Dataset makes when it is made, and standardisation (wasap.preprocessing)."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

import wasap
from wasap.data import (
    DataError,
    Dataset,
    encode_labels,
    load_dataset,
    validate_features,
    validate_training_data,
)
from wasap.data import loading, synthetic
from wasap.preprocessing import standardize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
PACKAGE_DATASETS = Path(wasap.__file__).resolve().parent / "datasets"


def needs_shared(folder: str) -> Path:
    """The shared data folder, or skip the test when this checkout has none."""
    path = SHARED / folder
    if not path.is_dir():
        pytest.skip(f"{path} is absent (the shared data sets are not beside this checkout)")
    return path


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """An IDX file of unsigned bytes: magic 0x0000 08 NDIM, big-endian dims, then the values."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def write_fake_fashion(directory: Path, compress: bool, rng: np.random.Generator):
    """Four IDX files with 6 train and 4 test images of 4x3 pixels; returns the arrays written."""
    suffix = ".gz" if compress else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 4, 3)),
        "train-labels-idx1-ubyte": np.array([3, 0, 3, 9, 0, 9]),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 4, 3)),
        "t10k-labels-idx1-ubyte": np.array([9, 3, 0, 0]),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(directory / f"{stem}{suffix}", array, compress)
    return arrays


# ---------------------------------------------------------------------------------------------------
# Bundled Madelon
# ---------------------------------------------------------------------------------------------------


def test_bundled_madelon_shapes_classes_and_standardisation():
    ds = load_dataset("madelon")
    assert isinstance(ds, Dataset)
    assert ds.X_train.shape == (2000, 500) and ds.X_test.shape == (600, 500)
    assert (ds.n_train, ds.n_test, ds.n_features, ds.n_classes) == (2000, 600, 500, 2)
    assert ds.X_train.dtype == np.float32 and ds.X_train.flags.c_contiguous and ds.X_test.flags.c_contiguous
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.classes.tolist() == [-1, 1]
    assert np.bincount(ds.y_train).tolist() == [1000, 1000] and np.bincount(ds.y_test).tolist() == [300, 300]
    np.testing.assert_allclose(ds.X_train.mean(axis=0, dtype=np.float64), 0.0, atol=1e-4)
    np.testing.assert_allclose(ds.X_train.std(axis=0, dtype=np.float64), 1.0, atol=1e-4)
    assert "2000" in ds.description and "600" in ds.description


def test_bundled_madelon_test_split_uses_the_train_statistics():
    raw = load_dataset("madelon", standardize=False)
    scaled = load_dataset("madelon")
    train64 = raw.X_train.astype(np.float64)
    expected = (raw.X_test - train64.mean(axis=0)) / train64.std(axis=0)
    np.testing.assert_allclose(scaled.X_test, expected, atol=1e-4)


def test_bundled_madelon_raw_values_equal_the_original_text_files():
    source = needs_shared("madelon")
    ds = load_dataset("madelon", standardize=False)
    np.testing.assert_array_equal(ds.X_train, np.loadtxt(source / "madelon_train.data"))
    np.testing.assert_array_equal(ds.X_test, np.loadtxt(source / "madelon_valid.data"))
    np.testing.assert_array_equal(ds.classes[ds.y_train], np.loadtxt(source / "madelon_train.labels"))
    np.testing.assert_array_equal(ds.classes[ds.y_test], np.loadtxt(source / "madelon_valid.labels"))


def test_bundled_madelon_file_matches_the_sha256_in_its_provenance():
    provenance = (PACKAGE_DATASETS / "MADELON_PROVENANCE.md").read_text()
    recorded = re.search(r"([0-9a-f]{64})\s+madelon\.npz", provenance).group(1)
    assert hashlib.sha256((PACKAGE_DATASETS / "madelon.npz").read_bytes()).hexdigest() == recorded


def test_madelon_style_directory_is_read_as_train_and_valid(tmp_path):
    train = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    valid = np.array([[10, 11, 12], [13, 14, 15]])
    np.savetxt(tmp_path / "toy_train.data", train, fmt="%d")
    np.savetxt(tmp_path / "toy_valid.data", valid, fmt="%d")
    (tmp_path / "toy_train.labels").write_text("-1\n1\n1\n")
    (tmp_path / "toy_valid.labels").write_text("1\n-1\n")
    ds = load_dataset(str(tmp_path), standardize=False)
    np.testing.assert_array_equal(ds.X_train, train)
    np.testing.assert_array_equal(ds.X_test, valid)
    assert ds.classes[ds.y_train].tolist() == [-1, 1, 1] and ds.classes[ds.y_test].tolist() == [1, -1]


# ---------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_idx_files_are_read_back_exactly(tmp_path, compress):
    written = write_fake_fashion(tmp_path, compress, np.random.default_rng(1))
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, standardize=False)
    np.testing.assert_array_equal(ds.X_train, written["train-images-idx3-ubyte"].reshape(6, 12))
    np.testing.assert_array_equal(ds.X_test, written["t10k-images-idx3-ubyte"].reshape(4, 12))
    assert ds.classes.tolist() == [0, 3, 9]
    np.testing.assert_array_equal(ds.classes[ds.y_train], written["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.classes[ds.y_test], written["t10k-labels-idx1-ubyte"])


def test_idx_directory_given_as_a_path_and_through_the_environment(tmp_path, monkeypatch):
    written = write_fake_fashion(tmp_path / "fm", True, np.random.default_rng(2))
    expected = written["train-images-idx3-ubyte"].reshape(6, 12)
    np.testing.assert_array_equal(load_dataset(str(tmp_path / "fm"), standardize=False).X_train, expected)
    monkeypatch.setenv("WASAP_FASHION_MNIST", str(tmp_path / "fm"))
    np.testing.assert_array_equal(load_dataset("fashion-mnist", standardize=False).X_train, expected)


def test_fashion_mnist_is_standardised_per_pixel_with_train_statistics(tmp_path):
    rng = np.random.default_rng(3)
    written = write_fake_fashion(tmp_path, True, rng)
    images = written["train-images-idx3-ubyte"]
    images[:, 0, 0] = 7  # a pixel constant on the train split
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, True)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)
    raw_train = images.reshape(6, 12).astype(np.float64)
    raw_test = written["t10k-images-idx3-ubyte"].reshape(4, 12).astype(np.float64)
    std = raw_train.std(axis=0)
    std[0] = 1.0
    np.testing.assert_allclose(ds.X_train, (raw_train - raw_train.mean(axis=0)) / std, atol=1e-5)
    np.testing.assert_allclose(ds.X_test, (raw_test - raw_train.mean(axis=0)) / std, atol=1e-5)
    assert np.all(ds.X_train[:, 0] == 0.0)


def test_idx_file_with_the_wrong_magic_number_is_rejected(tmp_path):
    write_fake_fashion(tmp_path, False, np.random.default_rng(4))
    write_idx(tmp_path / "train-images-idx3-ubyte", np.array([1, 2, 3]), False)  # a labels file
    with pytest.raises(DataError, match="magic number 2049, expected 2051") as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert "train-images-idx3-ubyte" in str(info.value)


def test_truncated_idx_file_is_rejected(tmp_path):
    write_fake_fashion(tmp_path, False, np.random.default_rng(5))
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_missing_fashion_mnist_says_where_it_looked_and_how_to_point_at_it(tmp_path, monkeypatch):
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "WASAP_FASHION_MNIST" in message and "data_dir" in message
    assert "train-images-idx3-ubyte" in message
    monkeypatch.setenv("WASAP_FASHION_MNIST", str(tmp_path / "elsewhere"))
    if not loading.FASHION_MNIST_DEBIAN_DIR.is_dir():
        with pytest.raises(DataError) as info:
            load_dataset("fashion-mnist")
        assert str(tmp_path / "elsewhere") in str(info.value)
        assert str(loading.FASHION_MNIST_DEBIAN_DIR) in str(info.value)


def test_real_fashion_mnist_shapes():
    source = needs_shared("fashion-mnist")
    ds = load_dataset("fashion-mnist", data_dir=source)
    assert ds.X_train.shape == (60000, 784) and ds.X_test.shape == (10000, 784)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10 and np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.classes.tolist() == list(range(10))


# ---------------------------------------------------------------------------------------------------
# HIGGS (LightGBM text)
# ---------------------------------------------------------------------------------------------------


def test_higgs_text_files_label_first(tmp_path):
    rows_train = "1\t0.5\t-1.25\n0\t2.0\t3.0\n1\t0.0\t1.0\n"
    (tmp_path / "binary.train").write_text(rows_train)
    (tmp_path / "binary.test").write_text("0\t1.5\t2.5\n")
    ds = load_dataset("higgs", data_dir=tmp_path, standardize=False)
    np.testing.assert_array_equal(ds.X_train, [[0.5, -1.25], [2.0, 3.0], [0.0, 1.0]])
    np.testing.assert_array_equal(ds.X_test, [[1.5, 2.5]])
    assert ds.classes.tolist() == [0, 1] and ds.classes.dtype.kind == "i"
    assert ds.y_train.tolist() == [1, 0, 1] and ds.y_test.tolist() == [0]


def test_missing_higgs_names_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("WASAP_HIGGS", raising=False)
    with pytest.raises(DataError, match="WASAP_HIGGS"):
        load_dataset("higgs")
    with pytest.raises(DataError, match=re.escape(str(tmp_path))):
        load_dataset("higgs", data_dir=tmp_path)


def test_real_higgs_subset_shapes_and_class_counts():
    source = needs_shared("higgs-subset")
    ds = load_dataset("higgs", data_dir=source, standardize=False)
    assert ds.X_train.shape == (7000, 28) and ds.X_test.shape == (500, 28)
    assert np.bincount(ds.y_train).tolist() == [3284, 3716] and np.bincount(ds.y_test).tolist() == [228, 272]
    first = (source / "binary.train").read_text().splitlines()[0].split("\t")
    np.testing.assert_array_equal(ds.X_train[0], np.array(first[1:], dtype=np.float32))


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 (JPEG copy)
# ---------------------------------------------------------------------------------------------------


def gradient_image(blue: int) -> np.ndarray:
    """32x32 RGB: red grows along columns, green along rows, blue constant (smooth, so JPEG keeps it)."""
    ramp = np.arange(32, dtype=np.uint8) * 8
    pixels = np.empty((32, 32, 3), dtype=np.uint8)
    pixels[..., 0] = ramp[None, :]
    pixels[..., 1] = ramp[:, None]
    pixels[..., 2] = blue
    return pixels


def write_fake_cifar_archive(path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    entries = [("train", "cat", "0001.jpg", 200), ("train", "airplane", "0000.jpg", 40),
               ("train", "cat", "0000.jpg", 120), ("test", "cat", "0002.jpg", 80)]
    with tarfile.open(path, "w:gz") as archive:
        for split, class_name, file_name, blue in entries:
            buffer = io.BytesIO()
            image_module.fromarray(gradient_image(blue)).save(buffer, format="JPEG", quality=95)
            info = tarfile.TarInfo(f"CIFAR-10-images/{split}/{class_name}/{file_name}")
            info.size = buffer.tell()
            buffer.seek(0)
            archive.addfile(info, buffer)


def test_cifar_jpeg_archive_is_read_channel_major(tmp_path):
    write_fake_cifar_archive(tmp_path / "CIFAR-10-images_jpeg.tar.gz")
    ds = load_dataset("cifar10", data_dir=tmp_path, standardize=False)
    assert ds.X_train.shape == (3, 3072) and ds.X_test.shape == (1, 3072)
    assert ds.classes.tolist() == ["airplane", "cat"] and ds.classes[ds.y_test].tolist() == ["cat"]
    assert ds.classes[ds.y_train].tolist() == ["airplane", "cat", "cat"]  # class order, then file name
    expected = gradient_image(0).transpose(2, 0, 1).reshape(3, 1024).astype(np.float32)
    for row, blue in zip(ds.X_train, (40, 120, 200)):
        planes = row.reshape(3, 1024)
        np.testing.assert_allclose(planes[:2], expected[:2], atol=12)
        np.testing.assert_allclose(planes[2], blue, atol=12)
    archive_ds = load_dataset("cifar10", data_dir=tmp_path / "CIFAR-10-images_jpeg.tar.gz", standardize=False)
    np.testing.assert_array_equal(archive_ds.X_test, ds.X_test)


def test_cifar_without_pillow_says_how_to_install_it(tmp_path, monkeypatch):
    write_fake_cifar_archive(tmp_path / "CIFAR-10-images_jpeg.tar.gz")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match="pip install pillow"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_missing_cifar_names_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("WASAP_CIFAR10", raising=False)
    with pytest.raises(DataError, match="WASAP_CIFAR10"):
        load_dataset("cifar10")


# ---------------------------------------------------------------------------------------------------
# User files: npz, csv, svmlight
# ---------------------------------------------------------------------------------------------------


def test_npz_round_trip_with_string_labels(tmp_path):
    rng = np.random.default_rng(6)
    X_train, X_test = rng.normal(size=(8, 3)), rng.normal(size=(4, 3))
    y_train = np.array(["cat", "dog", "emu", "dog", "cat", "emu", "cat", "dog"])
    y_test = np.array(["emu", "cat", "dog", "dog"])
    np.savez(tmp_path / "d.npz", X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test)
    ds = load_dataset(str(tmp_path / "d.npz"), standardize=False)
    np.testing.assert_array_equal(ds.X_train, X_train.astype(np.float32))
    np.testing.assert_array_equal(ds.X_test, X_test.astype(np.float32))
    assert ds.classes.tolist() == ["cat", "dog", "emu"]
    np.testing.assert_array_equal(ds.classes[ds.y_train], y_train)
    np.testing.assert_array_equal(ds.classes[ds.y_test], y_test)


def test_npz_round_trip_with_float_labels(tmp_path):
    y_train, y_test = np.array([0.5, 1.5, 0.5, 2.25]), np.array([2.25, 0.5])
    np.savez(tmp_path / "f.npz", X_train=np.eye(4), y_train=y_train, X_test=np.ones((2, 4)), y_test=y_test)
    ds = load_dataset(tmp_path / "f.npz", standardize=False)
    assert ds.classes.tolist() == [0.5, 1.5, 2.25]
    np.testing.assert_array_equal(ds.classes[ds.y_train], y_train)
    np.testing.assert_array_equal(ds.classes[ds.y_test], y_test)


def test_npz_missing_keys_are_named(tmp_path):
    np.savez(tmp_path / "bad.npz", X_train=np.eye(2), y_train=np.array([0, 1]))
    with pytest.raises(DataError, match="lacks the array\\(s\\) X_test, y_test"):
        load_dataset(str(tmp_path / "bad.npz"))


def test_csv_with_header_and_string_labels_is_split_stratified(tmp_path):
    rng = np.random.default_rng(7)
    X = rng.integers(0, 100, (40, 3)).astype(np.float64)
    y = np.array(["yes"] * 30 + ["no"] * 10)
    lines = ["a,b,c,label"] + [f"{r[0]},{r[1]},{r[2]},{label}" for r, label in zip(X, y)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset(str(tmp_path / "d.csv"), standardize=False, seed=3)
    assert ds.n_train == 28 and ds.n_test == 12 and ds.classes.tolist() == ["no", "yes"]
    assert sorted(ds.classes[ds.y_test].tolist()) == ["no"] * 3 + ["yes"] * 9
    both = np.vstack([ds.X_train, ds.X_test])
    labels = np.concatenate([ds.classes[ds.y_train], ds.classes[ds.y_test]])
    order = np.lexsort(both.T[::-1])
    expected_order = np.lexsort(X.T[::-1])
    np.testing.assert_array_equal(both[order], X[expected_order])
    np.testing.assert_array_equal(labels[order], y[expected_order])
    again = load_dataset(str(tmp_path / "d.csv"), standardize=False, seed=3)
    np.testing.assert_array_equal(again.X_test, ds.X_test)


def test_csv_pair_without_header_with_float_labels_and_label_column(tmp_path):
    (tmp_path / "train.csv").write_text("1,2,0.5\n3,4,1.5\n5,6,0.5\n")
    (tmp_path / "test.csv").write_text("3,8,1.5\n")
    ds = load_dataset(f"{tmp_path / 'train.csv'},{tmp_path / 'test.csv'}", standardize=False)
    np.testing.assert_array_equal(ds.X_train, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(ds.X_test, [[3, 8]])
    assert ds.classes.tolist() == [0.5, 1.5] and ds.y_train.tolist() == [0, 1, 0] and ds.y_test.tolist() == [1]
    first = load_dataset(f"{tmp_path / 'train.csv'},{tmp_path / 'test.csv'}", standardize=False, label_column=0)
    assert first.classes.tolist() == [1, 3, 5] and first.y_test.tolist() == [1]
    assert first.X_test.tolist() == [[8.0, 1.5]]


def test_csv_with_a_non_numeric_feature_names_the_value(tmp_path):
    (tmp_path / "bad.csv").write_text("1,2,a\n3,oops,b\n5,6,a\n")
    with pytest.raises(DataError, match="oops"):
        load_dataset(str(tmp_path / "bad.csv"))


def test_svmlight_single_file_and_pair(tmp_path):
    from sklearn.datasets import dump_svmlight_file

    rng = np.random.default_rng(8)
    X = np.where(rng.random((20, 5)) < 0.5, 0.0, rng.normal(size=(20, 5)))
    y = np.array([-1, 1] * 10)
    dump_svmlight_file(X, y, str(tmp_path / "all.svm"))
    ds = load_dataset(str(tmp_path / "all.svm"), standardize=False)
    assert ds.n_train == 14 and ds.n_test == 6 and ds.classes.tolist() == [-1, 1]
    assert ds.classes.dtype.kind == "i"
    # svmlight files stay sparse: CSR of float32, as the sparse input layer reads it.
    assert ds.is_sparse and ds.X_train.format == "csr" and ds.X_train.dtype == np.float32
    np.testing.assert_allclose(np.sort(np.vstack([ds.X_train.toarray(), ds.X_test.toarray()]), axis=0),
                               np.sort(X, axis=0).astype(np.float32), rtol=1e-6)
    dump_svmlight_file(X[:15], y[:15] * 0.5, str(tmp_path / "train.libsvm"))
    dump_svmlight_file(X[15:], y[15:] * 0.5, str(tmp_path / "test.libsvm"))
    pair = load_dataset(f"{tmp_path / 'train.libsvm'},{tmp_path / 'test.libsvm'}", standardize=False)
    assert pair.X_train.shape == (15, 5) and pair.X_test.shape == (5, 5) and pair.is_sparse
    np.testing.assert_allclose(pair.X_test.toarray(), X[15:].astype(np.float32), rtol=1e-6)
    assert pair.classes.tolist() == [-0.5, 0.5]
    np.testing.assert_array_equal(pair.classes[pair.y_test], y[15:] * 0.5)


def test_unknown_name_lists_the_known_names():
    with pytest.raises(DataError) as info:
        load_dataset("mnist-ish")
    message = str(info.value)
    assert "mnist-ish" in message
    assert all(name in message for name in ("madelon", "fashion-mnist", "higgs", "cifar10", "synthetic"))


def test_missing_path_is_named_with_the_accepted_formats(tmp_path):
    missing = tmp_path / "nothing" / "data.csv"
    with pytest.raises(DataError) as info:
        load_dataset(str(missing))
    assert str(missing) in str(info.value) and ".npz" in str(info.value) and "svmlight" in str(info.value)
    (tmp_path / "data.xyz").write_text("1,2\n")
    with pytest.raises(DataError, match="unknown file type '.xyz'"):
        load_dataset(str(tmp_path / "data.xyz"))
    with pytest.raises(DataError, match=re.escape(str(missing))):
        load_dataset(f"{tmp_path / 'data.xyz'},{missing}")


# ---------------------------------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------------------------------


def test_synthetic_uses_make_classification_with_the_seed():
    from sklearn.datasets import make_classification

    ds = load_dataset("synthetic", n_samples=500, n_features=20, n_classes=3, seed=5, standardize=False)
    assert (ds.n_train, ds.n_test, ds.n_features, ds.n_classes) == (350, 150, 20, 3)
    # Default n_informative: 10% of 20 features is 2, but 3 classes x 2 clusters need 2 ** 3 vertices.
    X, y = make_classification(n_samples=500, n_features=20, n_informative=3, n_redundant=2, n_classes=3,
                               random_state=5)
    both = np.vstack([ds.X_train, ds.X_test])
    labels = np.concatenate([ds.y_train, ds.y_test])
    order, expected_order = np.lexsort(both.T[::-1]), np.lexsort(X.astype(np.float32).T[::-1])
    np.testing.assert_array_equal(both[order], X.astype(np.float32)[expected_order])
    np.testing.assert_array_equal(labels[order], y[expected_order])
    other = load_dataset("synthetic", n_samples=500, n_features=20, n_classes=3, seed=6, standardize=False)
    assert not np.array_equal(other.X_train, ds.X_train)


def test_chunked_synthetic_follows_the_recipe_and_ignores_the_chunk_size():
    from sklearn.ensemble import RandomForestClassifier

    small = load_dataset("synthetic", n_samples=1000, n_features=60, chunk_rows=7, standardize=False)
    large = load_dataset("synthetic", n_samples=1000, n_features=60, chunk_rows=1000, standardize=False)
    assert small.X_train.shape == (700, 60) and small.X_test.shape == (300, 60)
    assert small.X_train.dtype == np.float32 and "make_classification-like" in small.description
    np.testing.assert_allclose(small.X_train, large.X_train, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(small.y_test, large.y_test)
    counts = np.bincount(np.concatenate([small.y_train, small.y_test]))
    assert abs(counts[0] - 500) < 30
    # 2 redundant features are linear combinations of the informative ones.
    assert np.linalg.matrix_rank(np.vstack([small.X_train, small.X_test])) == 58
    forest = RandomForestClassifier(n_estimators=50, random_state=0).fit(small.X_train, small.y_train)
    assert forest.score(small.X_test, small.y_test) > 0.7


def test_big_synthetic_shapes_switch_to_the_chunked_generator(monkeypatch):
    monkeypatch.setattr(synthetic, "SYNTHETIC_CHUNKED_ABOVE", 1000)
    ds = load_dataset("synthetic", n_samples=100, n_features=20, n_classes=4)
    assert "make_classification-like" in ds.description and ds.n_classes == 4
    np.testing.assert_allclose(ds.X_train.mean(axis=0), 0.0, atol=1e-5)


def test_synthetic_rejects_impossible_shapes():
    with pytest.raises(DataError, match="n_informative=30"):
        load_dataset("synthetic", n_features=10, n_informative=30)
    with pytest.raises(DataError, match="n_classes"):
        load_dataset("synthetic", n_classes=1)


# ---------------------------------------------------------------------------------------------------
# Dataset: checked and converted when it is made
# ---------------------------------------------------------------------------------------------------


def _splits(n_train=6, n_test=4, n_features=3, seed=0):
    rng = np.random.default_rng(seed)
    y_train = np.arange(n_train) % 2
    return (rng.standard_normal((n_train, n_features)), y_train,
            rng.standard_normal((n_test, n_features)), np.arange(n_test) % 2)


def test_dataset_converts_features_to_float32_c_order_once():
    X_train, y_train, X_test, y_test = _splits()
    ds = Dataset("toy", np.asfortranarray(X_train), y_train.astype(np.int32), X_test, y_test, np.array(["a", "b"]))
    for X, expected in ((ds.X_train, X_train), (ds.X_test, X_test)):
        assert X.dtype == np.float32 and X.flags.c_contiguous
        np.testing.assert_array_equal(X, expected.astype(np.float32))
    assert ds.y_train.dtype == np.int64 and ds.y_train.tolist() == y_train.tolist()
    # Arrays that already are float32 C-contiguous, and int64 labels, are kept, not copied.
    X32 = np.ascontiguousarray(X_train, dtype=np.float32)
    again = Dataset("toy", X32, ds.y_train, X32, ds.y_train, ds.classes)
    assert again.X_train is X32 and again.X_test is X32 and again.y_train is ds.y_train
    assert (again.n_train, again.n_test, again.n_features, again.n_classes) == (6, 6, 3, 2)


@pytest.mark.parametrize(("change", "fact"), [
    (dict(X_train=np.full((6, 3), np.nan)), "X_train holds 18 NaN"),
    (dict(X_test=np.array([[0.0, np.inf, 0.0]] * 4)), "X_test holds 4 NaN or infinite"),
    (dict(y_train=np.zeros(5, dtype=np.int64)), "X_train has 6 samples (rows) but y_train has 5 labels"),
    (dict(y_test=np.zeros(3, dtype=np.int64)), "X_test has 4 samples (rows) but y_test has 3 labels"),
    (dict(y_train=np.array([0, 1, 2, 0, 1, 0])), "class indices 0..1"),
    (dict(y_train=np.array([0.0, 1, 0, 1, 0, 1])), "class indices 0..1"),
    (dict(y_train=np.ones(6, dtype=np.int64)), "y_train holds a single class ('b')"),
    (dict(X_test=np.zeros((4, 2))), "toy: the train split has 3 features but the test split has 2"),
    (dict(classes=np.array([["a", "b"]])), "classes must be 1-D"),
], ids=["nan", "inf", "train lengths", "test lengths", "out of range", "float labels", "single class", "widths",
        "classes shape"])
def test_dataset_refuses_what_cannot_be_trained_on(change, fact):
    X_train, y_train, X_test, y_test = _splits()
    arrays = dict(X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test, classes=np.array(["a", "b"]))
    arrays.update(change)
    with pytest.raises(DataError, match=re.escape(fact)):
        Dataset("toy", **arrays)


def test_a_dataset_without_classes_holds_finite_float32_targets():
    X_train, _, X_test, _ = _splits()
    targets = np.linspace(0, 1, 12).reshape(6, 2)
    ds = Dataset("values", X_train, targets, X_test, targets[:4], np.empty(0))
    assert ds.n_classes == 0 and ds.y_train.dtype == np.float32 and ds.y_train.shape == (6, 2)
    np.testing.assert_array_equal(ds.y_train, targets.astype(np.float32))
    assert ds.preprocessing.classes is None
    targets[2, 1] = np.nan
    with pytest.raises(DataError, match="y_train holds 1 NaN or infinite value.*row 2, column 1"):
        Dataset("values", X_train, targets, X_test, targets[:4], np.empty(0))


def test_loaded_data_sets_are_float32_c_contiguous():
    ds = load_dataset("synthetic", n_samples=100, n_features=5)
    for X in (ds.X_train, ds.X_test):
        assert X.dtype == np.float32 and X.flags.c_contiguous


# ---------------------------------------------------------------------------------------------------
# encode_labels, standardize, validation
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels", [["b", "a", "c", "a"], [10, -3, 7, 10], [0.25, 2.5, 0.25, 1.0]])
def test_encode_labels_maps_back(labels):
    y_train = np.array(labels)
    y_test = y_train[::-1]
    train_idx, test_idx, classes = encode_labels(y_train, y_test)
    assert train_idx.dtype == np.int64 and classes.tolist() == sorted(set(labels))
    np.testing.assert_array_equal(classes[train_idx], y_train)
    np.testing.assert_array_equal(classes[test_idx], y_test)
    assert encode_labels(labels)[1] is None


def test_encode_labels_rejects_unknown_test_labels():
    with pytest.raises(DataError, match="'zebra'") as info:
        encode_labels(["cat", "dog"], ["dog", "zebra", "cat"])
    assert "position 1" in str(info.value)
    with pytest.raises(DataError, match="3"):
        encode_labels([1, 2], [1, 3])


def test_standardize_uses_train_statistics_and_maps_constant_columns_to_zero():
    X_train = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    X_test = np.array([[2.0, 6.0, 0.0]])
    before = X_train.copy()
    train, test = standardize(X_train, X_test)
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    std[1] = 1.0
    assert train.dtype == np.float32 and test.dtype == np.float32
    np.testing.assert_allclose(train, (X_train - mean) / std, atol=1e-6)
    np.testing.assert_allclose(test, (X_test - mean) / std, atol=1e-6)
    assert np.all(train[:, 1] == 0.0) and test[0, 1] == pytest.approx(1.0)
    np.testing.assert_array_equal(X_train, before)
    with pytest.raises(DataError, match="X_train has 3 features but X_test has 2"):
        standardize(X_train, X_test[:, :2])


def test_standardize_in_place_when_asked():
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    train, _ = standardize(X, copy=False)
    assert train is X and abs(X.mean()) < 1e-6


def test_validate_features_returns_float32_c_contiguous():
    X = np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3))
    out = validate_features(X)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, X)
    np.testing.assert_array_equal(validate_features([["1.5", "2"]]), [[1.5, 2.0]])


def test_validate_features_keeps_sparse_input_sparse_and_canonical():
    # Duplicates (summed, as scipy reads them), unsorted columns, int64 indices and float64 values.
    rows, columns = np.array([2, 0, 2, 0, 1]), np.array([3, 4, 3, 0, 1])
    values = np.array([1.0, 2.0, 0.5, -3.0, 4.0])
    given = scipy.sparse.coo_matrix((values, (rows, columns)), shape=(4, 6))
    given.row, given.col = given.row.astype(np.int64), given.col.astype(np.int64)
    snapshot = given.toarray()
    out = validate_features(given)
    assert scipy.sparse.issparse(out) and out.format == "csr" and out.dtype == np.float32
    assert out.has_canonical_format and out.indices.dtype == out.indptr.dtype == np.int32
    np.testing.assert_array_equal(out.toarray(), snapshot.astype(np.float32))
    np.testing.assert_array_equal(given.toarray(), snapshot)  # the caller's matrix is left as it was
    assert validate_features(out) is out  # already canonical float32 CSR: no copy
    as_array = validate_features(scipy.sparse.csr_array(snapshot))
    assert isinstance(as_array, scipy.sparse.sparray) and as_array.format == "csr"
    bad = scipy.sparse.csr_matrix(snapshot)
    bad.data[bad.indptr[2]] = np.nan  # row 2 holds one value, at column 3
    with pytest.raises(DataError, match="1 NaN or infinite value") as info:
        validate_features(bad, name="X_train")
    assert "row 2, column 3" in str(info.value)
    damaged = scipy.sparse.csr_matrix(snapshot)
    damaged.indices[0] = 9
    with pytest.raises(DataError, match="damaged CSR matrix: a column index lies outside 0..5"):
        validate_features(damaged)


def test_validate_features_reports_nan_count_and_first_position():
    X = np.zeros((5, 4))
    X[2, 3] = np.nan
    X[4, 0] = np.inf
    with pytest.raises(DataError, match="2 NaN or infinite value") as info:
        validate_features(X, name="X_train")
    assert "row 2, column 3" in str(info.value) and "X_train" in str(info.value)


@pytest.mark.parametrize(
    ("X", "fact"),
    [
        (np.arange(3.0), "1-D"),
        (np.zeros((0, 4)), "0 samples"),
        (np.zeros((3, 0)), "0 features"),
        (np.zeros((2, 2, 2)), "3 dimensions"),
        (np.array([[1.0, 2.0], [3.0, "x"]], dtype=object), "'x' at row 1, column 1"),
        (np.array([[1 + 2j]]), "complex"),
    ],
    ids=["1-D", "no samples", "no features", "3-D", "non-numeric", "complex"],
)
def test_validate_features_rejects_bad_input(X, fact):
    with pytest.raises(DataError, match=re.escape(fact)):
        validate_features(X)


def test_validate_training_data_names_both_lengths_and_the_single_class():
    with pytest.raises(DataError, match="X has 5 samples \\(rows\\) but y has 4 labels"):
        validate_training_data(np.zeros((5, 2)), [0, 1, 0, 1])
    with pytest.raises(DataError, match="single class \\('only'\\)"):
        validate_training_data(np.zeros((3, 2)), ["only"] * 3)
    with pytest.raises(DataError, match="position 1"):
        validate_training_data(np.zeros((3, 2)), [0.0, np.nan, 1.0])
    X, y = validate_training_data([[1, 2], [3, 4]], np.array([["a"], ["b"]]))
    assert X.dtype == np.float32 and y.tolist() == ["a", "b"]


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)
