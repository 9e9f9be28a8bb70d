"""The paper's Fashion-MNIST run (Tables 2-4: 784-1000-1000-1000-10, All-ReLU alpha 0.6, epsilon 20).

    python examples/paper_fashion_mnist.py [--data-dir DIR] [--epochs 100] [--importance-pruning] [--quick]

The IDX files (train-images-idx3-ubyte[.gz], ...) are read from --data-dir, else from
$WASAP_FASHION_MNIST, else from Debian's /usr/share/datasets/fashion-mnist
(``apt-get install dataset-fashion-mnist``). --quick trains a 300-300-300 network for 4
epochs on the first 6000 training and 2000 test images.
"""

import sys

import wasap
from _paper import build_parser, is_quick, run

QUICK_EPOCHS = 4
QUICK_TRAIN, QUICK_TEST = 6000, 2000


def main(argv=None):
    parser = build_parser(__doc__.splitlines()[0], epochs=100, quick_epochs=QUICK_EPOCHS)
    parser.add_argument("--data-dir", help="folder of the Fashion-MNIST IDX files")
    args = parser.parse_args(argv)
    try:
        data = wasap.load_dataset("fashion-mnist", data_dir=args.data_dir, seed=args.seed)
    except wasap.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    changes = {}
    if is_quick(args):
        # The standardisation used the full train split's statistics; a prefix of it is fine for a demo.
        data = wasap.Dataset(data.name, data.X_train[:QUICK_TRAIN], data.y_train[:QUICK_TRAIN],
                             data.X_test[:QUICK_TEST], data.y_test[:QUICK_TEST], data.classes,
                             f"{data.description}; first {QUICK_TRAIN} train / {QUICK_TEST} test samples")
        changes["hidden"] = (300, 300, 300)
    run("paper-fashion-mnist", "fashion-mnist", data, args, quick_epochs=QUICK_EPOCHS, **changes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
