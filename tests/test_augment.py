"""Image augmentation against scipy.ndimage's bilinear interpolation, and in training."""

import numpy as np
import pytest
import scipy.ndimage
import scipy.sparse

from wasap.augment import augment_batch, parse_image_shape, random_transforms, resolve_augment, warp_batch
from wasap.config import ConfigError, TrainConfig
from wasap.data import Dataset
from wasap.model import SparseMLP
from wasap.train import fit


def _oracle(image, angle, shift_row, shift_col, flip):
    """One (C, H, W) image transformed by scipy.ndimage.map_coordinates, as the module defines it."""
    channels, height, width = image.shape
    r, c = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    c0 = width - 1 - c if flip else c
    y, x = r - (height - 1) / 2, c0 - (width - 1) / 2
    r_in = np.cos(angle) * y - np.sin(angle) * x + (height - 1) / 2 + shift_row * height
    c_in = np.sin(angle) * y + np.cos(angle) * x + (width - 1) / 2 + shift_col * width
    return np.stack([scipy.ndimage.map_coordinates(image[ch].astype(np.float64), [r_in, c_in], order=1,
                                                   mode="nearest") for ch in range(channels)])


@pytest.mark.parametrize("shape", [(3, 8, 10), (1, 7, 7), (2, 1, 5)])
def test_warped_images_equal_scipys_bilinear_interpolation(shape):
    rng = np.random.default_rng(0)
    batch = 9
    images = rng.standard_normal((batch, *shape)).astype(np.float32)
    angles, shift_rows, shift_cols, flips = random_transforms(rng, batch)
    angles[0], shift_rows[0] = 0.6, 0.45  # beyond the defaults' range: far outside the image
    flips[:2] = True, False
    x_t = np.ascontiguousarray(images.reshape(batch, -1).T)
    warp_batch(x_t, *shape, angles, shift_rows, shift_cols, flips)
    for b in range(batch):
        expected = _oracle(images[b], angles[b], shift_rows[b], shift_cols[b], flips[b])
        np.testing.assert_allclose(x_t[:, b].reshape(shape), expected, rtol=0, atol=2e-5)


def test_no_transform_keeps_the_images_and_a_flip_mirrors_them():
    images = np.random.default_rng(1).standard_normal((4, 3, 6, 5)).astype(np.float32)
    x_t = np.ascontiguousarray(images.reshape(4, -1).T)
    zeros = np.zeros(4)
    kept = x_t.copy()
    warp_batch(kept, 3, 6, 5, zeros, zeros, zeros, np.zeros(4, dtype=bool))
    np.testing.assert_array_equal(kept, x_t)
    flipped = x_t.copy()
    warp_batch(flipped, 3, 6, 5, zeros, zeros, zeros, np.ones(4, dtype=bool))
    np.testing.assert_array_equal(flipped.T.reshape(images.shape), images[..., ::-1])


def test_transforms_stay_within_the_papers_ranges_and_flip_half_the_samples():
    angles, shift_rows, shift_cols, flips = random_transforms(np.random.default_rng(2), 20000)
    assert np.abs(np.rad2deg(angles)).max() <= 10 and np.abs(np.rad2deg(angles)).max() > 9.9
    assert np.abs(shift_rows).max() <= 0.1 and np.abs(shift_cols).max() <= 0.1
    assert 0.48 < flips.mean() < 0.52


def test_image_shapes_are_parsed_resolved_and_checked():
    assert parse_image_shape("3x32x32") == (3, 32, 32)
    assert resolve_augment("auto", "CIFAR10") == "3x32x32" and resolve_augment("auto", "fashion-mnist") == "1x28x28"
    assert resolve_augment(None, "madelon") is None and resolve_augment("1x4x5", "blobs") == "1x4x5"
    with pytest.raises(ValueError, match="give their shape as CxHxW"):
        resolve_augment("auto", "madelon")
    with pytest.raises(ConfigError, match="three positive integers"):
        TrainConfig(augment="32x32")


def _images(n=600, seed=0):
    """Two classes of 1x6x6 images: a bright left half or a bright right half, with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    images = rng.standard_normal((n, 1, 6, 6)).astype(np.float32) * 0.5
    images[y == 0, :, :, :3] += 1
    images[y == 1, :, :, 3:] += 1
    X = images.reshape(n, -1)
    return Dataset("halves", X[:400], y[:400], X[400:], y[400:], np.arange(2), "halves")


def _fit(data, **overrides):
    config = TrainConfig(hidden=(30,), epsilon=4, epochs=3, batch_size=32, threads=1, seed=3, **overrides)
    model = SparseMLP.from_config(data.n_features, 2, config, warn=False)
    summary = fit(model, data, config, log=None, progress=False)
    return model, summary


def test_training_with_augmentation_repeats_exactly_and_differs_from_training_without():
    data = _images()
    first, _ = _fit(data, augment="1x6x6")
    again, summary = _fit(data, augment="1x6x6")
    plain, _ = _fit(data)
    assert summary["config"]["augment"] == "1x6x6" and summary["stopped"] == "completed"
    for a, b, c in zip(first.layers, again.layers, plain.layers):
        np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(first.layers[0].data, plain.layers[0].data)
    # The data set itself is never changed: only the gathered batches are.
    np.testing.assert_array_equal(data.X_train, _images().X_train)


def test_augmentation_that_does_not_fit_the_data_is_refused_before_training():
    data = _images()
    with pytest.raises(ConfigError, match="describes images of 27 values, but the data have 36 features"):
        _fit(data, augment="3x3x3")
    with pytest.raises(ConfigError, match="names no image shape"):
        _fit(data, augment="auto")
    sparse = Dataset("halves", scipy.sparse.csr_matrix(data.X_train), data.y_train,
                     scipy.sparse.csr_matrix(data.X_test), data.y_test, np.arange(2), "sparse")
    with pytest.raises(ConfigError, match="needs dense data"):
        _fit(sparse, augment="1x6x6")


def test_augment_batch_draws_from_the_generator_it_is_given():
    x = np.random.default_rng(4).standard_normal((36, 8)).astype(np.float32)
    a, b = x.copy(), x.copy()
    augment_batch(a, (1, 6, 6), np.random.default_rng(9))
    augment_batch(b, (1, 6, 6), np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, x)


def test_the_cifar10_preset_augments_as_the_authors_code_and_none_turns_it_off():
    from wasap import run

    def config(*flags):
        return run.config_from_args(run.build_parser().parse_args(["--dataset", "cifar10", *flags]))

    assert config().augment == "3x32x32"
    assert config("--augment", "none").augment is None
    assert run.config_from_args(run.build_parser().parse_args(["--dataset", "madelon"])).augment is None
    assert run.config_from_args(run.build_parser().parse_args(
        ["--dataset", "fashion-mnist", "--augment", "auto"])).augment == "1x28x28"
