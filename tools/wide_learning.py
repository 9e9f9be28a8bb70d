"""Does a wide sparse network learn the Table 5 data in one epoch? A small, fast stand-in for the big rows.

Trains ``65536-W-W-2`` (epsilon 10; ``--depth`` hidden layers of W) for one pass over the 7000 training rows
of the scale test's data (make_classification, 10000 x 65536, 2 informative features, standardised, 70/30)
and prints the test loss and accuracy before and after, and the mean training loss of the first and last
quarter of the pass. Every batch is new to the network, so a falling training loss here is generalisation,
not memorisation.

The knobs are the ones that decide whether a network this wide learns at all: the hidden activation
(``--activation tanh``: zero-mean outputs, so the output layer has no huge common mode), the initial values
(``he-uniform`` sized for the dense fan-in, as the paper; ``he-uniform-sparse`` for the connections a
neuron has), a zeroed output layer (``--zero-output``: logits start at 0, loss at ln 2), the learning
rate and ``--lr-fan-in`` (layers of a larger mean fan-in step ``lr * lr_fan_in / fan_in``) or a learning
rate of the output layer's own (``--output-lr``), momentum,
dropout and a linear warm-up. ``--baseline`` also trains scikit-learn's logistic regression by SGD over
the same rows (one sample at a time), to show what one epoch can learn.

Usage::

    python tools/wide_learning.py                                    # the paper's recipe
    python tools/wide_learning.py --init he-uniform-sparse --zero-output --lr 3 --lr-fan-in 25
    python tools/wide_learning.py --width 500000 --activation tanh --init he-uniform-sparse --zero-output \
        --lr 30 --output-lr 1.5e-4
    python tools/wide_learning.py --baseline
    python tools/wide_learning.py --width 500000 --depth 10 --epsilon 1 --activation tanh \
        --init he-uniform-sparse --zero-output --lr 15 --output-lr 2e-4 --cache /tmp/wide_data.npz

The last is a stand-in for the paper's ten-layer 50M-neuron network (65536-5M x10-2, epsilon 1): the
same fan-in in every hidden layer (two), a tenth of the width.
"""

import argparse
import math
import os
import sys
import time

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS_DIR))  # this checkout's wasap, installed or not

import numpy as np  # noqa: E402

from wasap import load_dataset  # noqa: E402
from wasap.model import SparseMLP, stream_seed  # noqa: E402
from wasap.optim import LayerRates  # noqa: E402
from wasap.activations import HIDDEN_ACTIVATIONS  # noqa: E402
from wasap.topology import INIT_SCHEMES  # noqa: E402
from wasap.batches import gather_transposed  # noqa: E402
from wasap.threads import available_cores, set_threads  # noqa: E402

BATCH_SIZE = 128


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=50000, help="neurons of each hidden layer [%(default)s]")
    parser.add_argument("--depth", type=int, default=2, help="hidden layers of W neurons [%(default)s]")
    parser.add_argument("--epsilon", type=float, default=10.0, help="[%(default)s]")
    parser.add_argument("--activation", choices=HIDDEN_ACTIVATIONS, default="all-relu", help="[%(default)s]")
    parser.add_argument("--init", choices=INIT_SCHEMES, default="he-uniform", help="[%(default)s]")
    parser.add_argument("--zero-output", action="store_true", help="start the output layer's weights at 0")
    parser.add_argument("--lr", type=float, default=0.01, help="[%(default)s]")
    parser.add_argument("--lr-fan-in", type=float, default=None, help="see wasap.optim.LayerRates")
    parser.add_argument("--output-lr", type=float, default=None,
                        help="the output layer's own learning rate (default: lr, times its --lr-fan-in factor)")
    parser.add_argument("--momentum", type=float, default=0.9, help="[%(default)s]")
    parser.add_argument("--dropout", type=float, default=0.0, help="[%(default)s]")
    parser.add_argument("--warmup", type=int, default=0, help="batches of linear learning-rate warm-up [0]")
    parser.add_argument("--informative", type=int, default=2, help="[%(default)s]")
    parser.add_argument("--eval-samples", type=int, default=1500, help="test rows evaluated [%(default)s]")
    parser.add_argument("--baseline", action="store_true", help="also run logistic regression by SGD")
    parser.add_argument("--threads", type=int, default=None, help="kernel threads [all cores]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", help="an .npz to keep the generated data in between runs")
    return parser.parse_args(argv)


def load_data(args):
    """(X_train, y_train, X_test, y_test), generated as tools/scale.py does, or read from ``--cache``."""
    if args.cache and os.path.exists(args.cache):
        with np.load(args.cache) as f:
            return f["X_train"], f["y_train"], f["X_test"], f["y_test"]
    data = load_dataset("synthetic", n_samples=10000, n_features=65536, n_classes=2,
                        n_informative=args.informative, seed=args.seed, chunk_rows=256)
    arrays = data.X_train, data.y_train, data.X_test, data.y_test
    if args.cache:
        np.savez(args.cache, X_train=arrays[0], y_train=arrays[1], X_test=arrays[2], y_test=arrays[3])
    return arrays


def train_one_pass(model, X, y, args):
    """One pass in a random order; returns each batch's training loss."""
    rates = LayerRates(lr_fan_in=args.lr_fan_in,
                       output_ratio=None if args.output_lr is None else args.output_lr / args.lr)
    order = np.random.default_rng(args.seed).permutation(y.shape[0])
    losses = []
    for step in range(y.shape[0] // BATCH_SIZE):
        rows = order[step * BATCH_SIZE:(step + 1) * BATCH_SIZE]
        warm = min(1.0, (step + 1) / args.warmup) if args.warmup else 1.0
        loss, _ = model.train_batch(gather_transposed(X, rows), y[rows], lr=warm * args.lr, momentum=args.momentum,
                                    weight_decay=0.0, dropout=args.dropout, dropout_seed=stream_seed(args.seed, step),
                                    rates=rates)
        losses.append(loss)
    return losses


def logistic_baseline(X_train, y_train, X_test, y_test, seed):
    """Logistic regression by SGD, one sample at a time, one pass in batches' order, for a few step sizes."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import log_loss

    order = np.random.default_rng(seed).permutation(y_train.shape[0])
    for eta in (1e-4, 1e-3):
        clf = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=eta, alpha=1e-4, random_state=seed)
        for start in range(0, order.shape[0] - BATCH_SIZE + 1, BATCH_SIZE):
            rows = order[start:start + BATCH_SIZE]
            clf.partial_fit(X_train[rows], y_train[rows], classes=[0, 1])
        print(f"logistic regression by SGD, step {eta:g}: test log-loss "
              f"{log_loss(y_test, clf.predict_proba(X_test)):.4f}, accuracy {clf.score(X_test, y_test):.3f}")


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads or available_cores())
    started = time.perf_counter()
    X_train, y_train, X_test, y_test = load_data(args)
    print(f"data: {X_train.shape[0]} train / {X_test.shape[0]} test rows, {X_train.shape[1]} features, "
          f"{args.informative} informative ({time.perf_counter() - started:.0f} s)")
    if args.baseline:
        logistic_baseline(X_train, y_train, X_test, y_test, args.seed)
    sizes = (X_train.shape[1],) + (args.width,) * args.depth + (2,)
    model = SparseMLP.random(sizes, epsilon=args.epsilon, activation=args.activation, init=args.init, seed=args.seed,
                             warn=False,
                             zero_output=args.zero_output)
    X_eval, y_eval = X_test[:args.eval_samples], y_test[:args.eval_samples]
    before = model.evaluate(X_eval, y_eval)
    losses = train_one_pass(model, X_train, y_train, args)
    after = model.evaluate(X_eval, y_eval)
    quarter = max(1, len(losses) // 4)
    print(f"{'-'.join(map(str, sizes))}, {args.activation}, init {args.init}{' (output 0)' if args.zero_output else ''}, "
          f"lr {args.lr:g}, output lr {args.output_lr}, lr_fan_in {args.lr_fan_in}, momentum {args.momentum:g}, dropout {args.dropout:g}, "
          f"warm-up {args.warmup}")
    print(f"  test loss {before[0]:.4f} -> {after[0]:.4f}, accuracy {before[1]:.3f} -> {after[1]:.3f}; "
          f"training loss, first quarter of the pass {np.mean(losses[:quarter]):.4f}, last quarter "
          f"{np.mean(losses[-quarter:]):.4f}; finite: {all(math.isfinite(v) for v in losses)}")


if __name__ == "__main__":
    main()
