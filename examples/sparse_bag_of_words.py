"""Sparse data kept sparse: a truly sparse MLP on bag-of-words-like rows, beside a logistic regression.

    python examples/sparse_bag_of_words.py [--quick]

The rows come from wasap.data.make_sparse_classification (power-law word frequencies, a few informative
words): 50,000 features, 0.2% nonzero. They stay a scipy.sparse CSR matrix from generation to prediction,
and the network gets them as they are, unscaled, in ReLU layers and batches of sparse_batch_size(n) rows:
the settings the command line takes for sparse data (docs/sparse-data.md says why). Prints both models'
test accuracies and what the features take as CSR against a dense array. --quick (or WASAP_EXAMPLES_QUICK=1)
trains a smaller network on fewer rows.
"""

import argparse
import os

from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from wasap.config import sparse_batch_size
from wasap.data import make_sparse_classification
from wasap.estimator import SparseMLPClassifier


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small configuration (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("WASAP_EXAMPLES_QUICK") == "1"

    n_samples, hidden, epochs = (3000, (256, 256), 20) if quick else (12000, (1000, 1000), 50)
    X, y = make_sparse_classification(n_samples, 50_000, density=0.002, n_informative=20, n_classes=3,
                                      seed=args.seed)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    csr_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    print(f"features: {X.shape[1]} columns, {X.nnz} nonzeros; {csr_bytes:,} bytes as CSR, "
          f"{4 * X.shape[0] * X.shape[1]:,} as a dense float32 array")

    classifier = SparseMLPClassifier(hidden_layer_sizes=hidden, epochs=epochs, activation="relu",
                                     batch_size=sparse_batch_size(X_train.shape[0]), random_state=args.seed)
    classifier.fit(X_train, y_train)
    print(f"network: {classifier.model_}")
    print(f"wasap test accuracy: {classifier.score(X_test, y_test):.4f}")

    linear = LogisticRegression(max_iter=2000).fit(X_train, y_train)
    print(f"logistic regression test accuracy: {linear.score(X_test, y_test):.4f}")


if __name__ == "__main__":
    main()
