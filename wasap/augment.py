"""Image augmentation of training batches: random rotations, shifts and horizontal flips.

The paper's authors trained CIFAR-10 with the real-time augmentation of Keras's ``ImageDataGenerator``
(rotations up to 10 degrees, shifts up to a tenth of the image each way, horizontal flips, edges
extended); an MLP that sees each image as it is learns the training set by heart instead. This module
draws such a transform per sample and applies it to a gathered batch in place, on the batch's own
layout ``(n_features, batch)``; the data set is never changed, and test data are never augmented.

Images are rows of ``C * H * W`` features in channel-major order (all of channel 0 row by row, then
channel 1, ...), as wasap reads CIFAR-10 and Fashion-MNIST. Output pixel ``(r, c)`` of a sample with
angle ``a``, shift ``(dr, dc)`` and flip ``f`` reads the input at the point

    c0 = W - 1 - c if f else c
    y, x = r - (H - 1) / 2, c0 - (W - 1) / 2
    r_in = cos(a) y - sin(a) x + (H - 1) / 2 + dr
    c_in = sin(a) y + cos(a) x + (W - 1) / 2 + dc

interpolated bilinearly, points outside the image taking the nearest edge's value.
"""

import math

import numpy as np
from numba import njit, prange

#: Largest rotation either way, in degrees, and largest shift either way as a fraction of the side.
MAX_ROTATION_DEGREES = 10.0
MAX_SHIFT_FRACTION = 0.1
#: The image shape of the data sets wasap knows, for ``augment="auto"``.
KNOWN_IMAGE_SHAPES = {"cifar10": (3, 32, 32), "fashion-mnist": (1, 28, 28)}
#: Salt of the random stream of a step's transforms: ``stream_seed(seed, AUGMENT_STREAM, step)``.
AUGMENT_STREAM = 0xA06


def parse_image_shape(text: str) -> tuple:
    """``"3x32x32"`` as ``(3, 32, 32)`` (channels, height, width); ValueError for anything else."""
    try:
        shape = tuple(int(part) for part in str(text).lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"an image shape is CxHxW, three positive integers (3x32x32 for CIFAR-10), not {text!r}")
    return shape


def random_transforms(rng: np.random.Generator, n: int):
    """Per sample of a batch of ``n``: angle (radians), row and column shift (fractions of the side), flip.

    Returns
    -------
    angles, shift_rows, shift_cols : ndarray of float64, shape (n,)
    flips : ndarray of bool, shape (n,)
    """
    angles = np.deg2rad(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES, n))
    shift_rows = rng.uniform(-MAX_SHIFT_FRACTION, MAX_SHIFT_FRACTION, n)
    shift_cols = rng.uniform(-MAX_SHIFT_FRACTION, MAX_SHIFT_FRACTION, n)
    flips = rng.random(n) < 0.5
    return angles, shift_rows, shift_cols, flips


@njit(parallel=True, cache=True)
def warp_batch(x_t, channels, height, width, angles, shift_rows, shift_cols, flips):
    """Transform every sample (column) of ``x_t`` in place, as the module's docstring defines.

    Parameters
    ----------
    x_t : ndarray of float32, shape (channels * height * width, batch)
    channels, height, width : int
    angles, shift_rows, shift_cols : ndarray of float64, shape (batch,)
        Radians, and shifts as fractions of the height and the width.
    flips : ndarray of bool, shape (batch,)
    """
    n_pixels = height * width
    mid_r = (height - 1) / 2.0
    mid_c = (width - 1) / 2.0
    for b in prange(x_t.shape[1]):
        source = x_t[:, b].copy()
        cos_a = math.cos(angles[b])
        sin_a = math.sin(angles[b])
        dr = shift_rows[b] * height
        dc = shift_cols[b] * width
        for r in range(height):
            y = r - mid_r
            for c in range(width):
                x = (width - 1 - c if flips[b] else c) - mid_c
                r_in = min(max(cos_a * y - sin_a * x + mid_r + dr, 0.0), height - 1.0)
                c_in = min(max(sin_a * y + cos_a * x + mid_c + dc, 0.0), width - 1.0)
                r0 = int(r_in)
                c0 = int(c_in)
                r1 = min(r0 + 1, height - 1)
                c1 = min(c0 + 1, width - 1)
                wr = r_in - r0
                wc = c_in - c0
                for ch in range(channels):
                    base = ch * n_pixels
                    top = source[base + r0 * width + c0] * (1 - wc) + source[base + r0 * width + c1] * wc
                    bottom = source[base + r1 * width + c0] * (1 - wc) + source[base + r1 * width + c1] * wc
                    x_t[base + r * width + c, b] = top * (1 - wr) + bottom * wr


def augment_batch(x_t: np.ndarray, image_shape: tuple, rng: np.random.Generator) -> None:
    """Apply a random transform (:func:`random_transforms`) to each sample of the gathered batch ``x_t``.

    Parameters
    ----------
    x_t : ndarray of float32, shape (C * H * W, batch)
        Changed in place.
    image_shape : tuple of int
        ``(C, H, W)``.
    rng : numpy.random.Generator
    """
    channels, height, width = image_shape
    warp_batch(x_t, channels, height, width, *random_transforms(rng, x_t.shape[1]))


def resolve_augment(augment: str | None, dataset: str) -> str | None:
    """``augment`` with ``"auto"`` replaced by the image shape of the known data set ``dataset``, and
    ``"none"`` by None (no augmentation, where a data set's preset has some).

    Raises
    ------
    ValueError
        For ``"auto"`` on a data set whose image shape wasap does not know.
    """
    if augment is None or str(augment).lower() == "none":
        return None
    if augment != "auto":
        return augment
    key = str(dataset).strip().lower().replace("cifar-10", "cifar10")
    if key not in KNOWN_IMAGE_SHAPES:
        raise ValueError(f"--augment auto knows the images of {', '.join(KNOWN_IMAGE_SHAPES)}; for "
                         f"{dataset!r} give their shape as CxHxW (channel-major), e.g. --augment 3x32x32.")
    return "x".join(map(str, KNOWN_IMAGE_SHAPES[key]))


def training_image_shape(config, X) -> tuple | None:
    """The ``(C, H, W)`` to augment the batches of ``X`` with under ``config``, None without augmentation.

    Raises
    ------
    wasap.config.ConfigError
        When ``config.augment`` is ``"auto"`` (not resolved for a data set), ``X`` is sparse, or the shape
        does not have ``X``'s number of features.
    """
    from .config import ConfigError  # the config module declares augment with this module's parser

    if config.augment is None:
        return None
    if config.augment == "auto":
        raise ConfigError("augment='auto' names no image shape here; give it as CxHxW, e.g. augment='3x32x32'.")
    shape = parse_image_shape(config.augment)
    if not isinstance(X, np.ndarray):
        raise ConfigError("augment transforms images: it needs dense data, not a scipy.sparse matrix.")
    if int(np.prod(shape)) != X.shape[1]:
        raise ConfigError(f"augment={config.augment!r} describes images of {int(np.prod(shape))} values, but the "
                         f"data have {X.shape[1]} features; give the shape of its images as CxHxW.")
    return shape
