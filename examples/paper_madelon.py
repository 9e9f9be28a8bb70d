"""The paper's Madelon run (Table 2: 500-400-100-400-2, All-ReLU alpha 0.5, epsilon 10, batch 32).

    python examples/paper_madelon.py [--epochs 500] [--importance-pruning] [--plot run.png] [--quick]

Uses the copy of Madelon shipped with wasap and the Python API (see _paper.py); the
command line equivalent is ``python -m wasap.run --dataset madelon``. --quick trains 20
epochs with Importance Pruning from epoch 10.
"""

import wasap
from _paper import build_parser, run

QUICK_EPOCHS = 20


def main(argv=None):
    args = build_parser(__doc__.splitlines()[0], epochs=500, quick_epochs=QUICK_EPOCHS).parse_args(argv)
    data = wasap.load_dataset("madelon", seed=args.seed)
    run("paper-madelon", "madelon", data, args, quick_epochs=QUICK_EPOCHS)


if __name__ == "__main__":
    main()
