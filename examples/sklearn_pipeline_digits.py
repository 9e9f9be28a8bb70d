"""A scikit-learn Pipeline: StandardScaler, then a truly sparse MLP, on scikit-learn's digits.

    python examples/sklearn_pipeline_digits.py [--quick]

Prints the test accuracy (about 97% in the full configuration, 60 epochs of a 400-100-400
network; --quick, or WASAP_EXAMPLES_QUICK=1, trains one hidden layer for 20 epochs).
"""

import argparse
import os

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from wasap.estimator import SparseMLPClassifier


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small configuration (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("WASAP_EXAMPLES_QUICK") == "1"

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    network = dict(hidden_layer_sizes=(256,), epochs=20) if quick else dict(hidden_layer_sizes=(400, 100, 400),
                                                                            epochs=60)
    # alpha is the All-ReLU slope here, not an L2 penalty (that is weight_decay).
    classifier = SparseMLPClassifier(**network, epsilon=10, alpha=0.5, batch_size=32, random_state=args.seed)
    pipeline = make_pipeline(StandardScaler(), classifier).fit(X_train, y_train)

    model = pipeline[-1].model_
    dense = sum(n_in * n_out for n_in, n_out in zip(model.sizes, model.sizes[1:]))
    print(f"network: {model}")
    print(f"weights: {model.nnz}, {100 * model.nnz / dense:.1f}% of a dense network's {dense}")
    print(f"test accuracy: {pipeline.score(X_test, y_test):.4f}")


if __name__ == "__main__":
    main()
