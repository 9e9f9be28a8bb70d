"""Build wasap/datasets/madelon.npz from the original Madelon text files.

The inputs are the NIPS 2003 challenge files (UCI dataset 171, CC BY 4.0) as kept in the paper authors'
repository (SelimaC/large-scale-sparse-neural-networks, data/Madelon). Their sha256 sums are checked before
anything is read, and the data sums are checked against the challenge's own check-sums in madelon.param,
so the archive is built from exactly the published data.

The archive holds X_train (2000, 500) uint16, y_train (2000,) int8, X_test (600, 500) uint16 and
y_test (600,) int8, where "test" is the challenge's valid split (the paper's Madelon test set). The zip
entries carry a fixed timestamp, so rebuilding gives a byte-identical file.

Usage::

    python tools/make_madelon_npz.py [--src DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO_ROOT.parent / "shared" / "datasets" / "madelon"
DEFAULT_OUT = REPO_ROOT / "wasap" / "datasets" / "madelon.npz"

SHA256 = {
    "madelon.param": "c65bcf86fb79b284c2e628c0a8cf47b89f49aca14ca3a85e68f9f8a2f031f1b1",
    "madelon_train.data": "0b6e37711efdc7ab74250c51e7d6966bffd9f8f2b0e9971e882c3a7a380c2314",
    "madelon_train.labels": "10bffcc3b017467cb810d326b931951adcbde2b4870faf981da2991993b48689",
    "madelon_valid.data": "cb9a46475147de1a58d9f15ef4c318e5b85de344e0f9ab92626fa446aa815dc9",
    "madelon_valid.labels": "1aa311db914031ce44fc1dcf00fe4a0c31becb6c5c4e809db7fec13eead58fcc",
}

# The zip format cannot store dates before 1980; a fixed one makes the output reproducible byte for byte.
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def sha256_of(path: Path) -> str:
    """Hex sha256 digest of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_inputs(src: Path) -> None:
    """Stop unless every input file exists and has the published sha256."""
    for name, expected in SHA256.items():
        path = src / name
        if not path.is_file():
            sys.exit(f"missing input {path}; pass --src DIR holding the Madelon text files")
        actual = sha256_of(path)
        if actual != expected:
            sys.exit(f"sha256 mismatch for {path}: {actual}, expected {expected}")


def challenge_checksums(param_file: Path) -> dict[str, float]:
    """The Check_sum column of madelon.param (the sum of all feature values) per split."""
    sums = {}
    for line in param_file.read_text().splitlines():
        match = re.match(r"\s*(Train|Valid)\s+\d+\s+\d+\s+\d+\s+([\d.]+)", line)
        if match:
            sums[match.group(1).lower()] = float(match.group(2))
    return sums


def read_split(src: Path, split: str, checksum: float) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, 500) uint16 and labels (n,) int8 of one split, checked against the challenge's sum."""
    features = np.loadtxt(src / f"madelon_{split}.data", dtype=np.int64, ndmin=2)
    labels = np.loadtxt(src / f"madelon_{split}.labels", dtype=np.int64, ndmin=1)
    if features.sum() != checksum:
        sys.exit(f"{split}: feature sum {features.sum()} differs from madelon.param's {checksum}")
    if features.min() < 0 or features.max() > np.iinfo(np.uint16).max:
        sys.exit(f"{split}: feature values outside uint16")
    if not np.isin(labels, (-1, 1)).all() or len(labels) != len(features):
        sys.exit(f"{split}: labels must be -1/+1, one per row")
    return features.astype(np.uint16), labels.astype(np.int8)


def write_npz(out: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as a compressed .npz whose bytes depend only on the arrays."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w") as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder with the Madelon text files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the .npz to write")
    args = parser.parse_args(argv)

    check_inputs(args.src)
    sums = challenge_checksums(args.src / "madelon.param")
    X_train, y_train = read_split(args.src, "train", sums["train"])
    X_test, y_test = read_split(args.src, "valid", sums["valid"])
    write_npz(args.out, {"X_train": X_train, "y_train": y_train, "X_test": X_test, "y_test": y_test})
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {sha256_of(args.out)})")


if __name__ == "__main__":
    main()
