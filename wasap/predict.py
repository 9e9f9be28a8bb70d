"""The command line that applies a trained model to new raw data: ``python -m wasap.predict MODEL DATA``.

MODEL is a model file (the ``model.npz`` of a training run's output folder); DATA is read whole,
in any format the trainer reads from a path (:func:`wasap.data.read_table`), and goes through the
preprocessing stored in the model file, so it holds raw values like the training file did. One
predicted label per row goes to ``--out FILE`` or to standard output; the accuracy (when DATA has
labels) and any notes go to standard error, so that standard output holds the predictions alone.
Problems with the model file or the data end with ``error: ...`` and exit status 2.
"""

import argparse
import sys

import numpy as np

from . import __version__
from .data import DataError, read_table
from .files import atomic_file
from .model import ModelFileError, SparseMLP
from .preprocessing import Preprocessing

_DATA_HELP = (
    "the rows to predict: a .csv file (header detected; labelled when it has one column more than the model's "
    "features, the label in --label-column, else features only), an svmlight/libsvm file (.svm, .svmlight, "
    ".libsvm, .txt; always labelled), a .npz with X (and optionally labels y) or with the trainer's X_train, "
    "y_train, X_test, y_test (all rows), or a folder of IDX or Madelon-style files (all rows)"
)


def build_parser(prog="python -m wasap.predict"):
    """The argument parser of ``python -m wasap.predict`` (``wasap predict`` passes its own ``prog``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Predict the label of each row of a data file with a trained wasap model. The model file "
                    "carries the training run's preprocessing (standardisation), so give raw values.",
        epilog="Predictions go to --out or to standard output, one per line; the accuracy and notes go to "
               "standard error. Exit status 2: the model file or the data cannot be used (the message says why).",
    )
    parser.add_argument("model", help="a model file: the model.npz of a training run's output folder")
    parser.add_argument("data", help=_DATA_HELP)
    parser.add_argument("--out", help="write the predictions to this file instead of standard output")
    parser.add_argument("--label-column", type=int, default=-1,
                        help="the csv column of the label in a labelled file (default: the last)")
    parser.add_argument("--ignore-labels", action="store_true",
                        help="do not compare with the file's labels (e.g. placeholder labels of an svmlight file)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv=None, *, prog="python -m wasap.predict"):
    """Run the command line; returns the exit status."""
    args = build_parser(prog).parse_args(argv)
    try:
        model = SparseMLP.load(args.model)
        if model.preprocessing is None:
            _note(f"{args.model} was saved without its preprocessing: the rows go in unchanged, so they must be "
                  "preprocessed as the training data was.")
        X, y = read_table(args.data, n_features=model.n_features, label_column=args.label_column)
        predictions = model.predict(X)
        if y is not None and not args.ignore_labels:
            _report_accuracy(model, predictions, y)
        _write_predictions(predictions, args.out)
    except (ModelFileError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot write {args.out}: {error.strerror or error}; check the path and its permissions.",
              file=sys.stderr)
        return 2
    _note(f"predicted {len(predictions)} rows" + (f" into {args.out}" if args.out else ""))
    return 0


def label_indices(model, y):
    """Class index of each of the labels ``y`` (n_samples,) under ``model``'s classes.

    Raises
    ------
    DataError
        When a label is not among the model's classes (:meth:`Preprocessing.label_indices`).
    """
    known = model.preprocessing
    if known is None or known.classes is None:
        classes = model.classes if model.classes is not None else np.arange(model.n_outputs)
        known = Preprocessing(model.n_features, classes=classes)
    return known.label_indices(y)


def _report_accuracy(model, predictions, y):
    """Note the accuracy of ``predictions`` against the labels ``y``."""
    if model.loss != "cross-entropy":
        _note("this model outputs values, not classes: the file's labels are not compared.")
        return
    correct = int(np.count_nonzero(label_indices(model, predictions) == label_indices(model, y)))
    _note(f"accuracy: {100 * correct / len(y):.2f}% ({correct} of {len(y)} rows)")


def _write_predictions(predictions, out):
    """One prediction per line (a row of outputs as comma-separated values) to ``out`` or standard output."""
    if predictions.ndim == 2:
        lines = (",".join(f"{value:.9g}" for value in row) for row in predictions)
    else:
        lines = (str(value) for value in predictions.tolist())
    text = "".join(f"{line}\n" for line in lines)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_file(out, "w") as stream:
        stream.write(text)


def _note(line):
    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
