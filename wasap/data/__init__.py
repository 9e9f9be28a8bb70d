"""Data sets for wasap: the bundled Madelon, public sets on disk, user files and synthetic data.

Every loader returns a :class:`Dataset` whose features are dense float32 rows, C-contiguous, or, for
sparse data (svmlight files, sparse .npz splits, scipy.sparse matrices), canonical CSR matrices of
float32 values that are never densified (``Dataset.is_sparse``: the input layer then works on the
nonzeros, :mod:`wasap.sparse_input`), and whose labels are class indices 0..n_classes-1, with
``Dataset.classes`` mapping an index back to the user's label value. A Dataset checks its arrays
when it is made, so the trainers take it as it is.

Every problem with the data raises :class:`DataError` (a ``ValueError``) whose message says what is
wrong and how to fix it.

The modules, one job each: :mod:`~wasap.data.validation` (the checks and label encoding),
:mod:`~wasap.data.dataset` (:class:`Dataset`), :mod:`~wasap.data.readers` (file formats),
:mod:`~wasap.data.synthetic` (generated data), :mod:`~wasap.data.sparse_synthetic` (generated
high-dimensional sparse data, as scipy.sparse CSR: :func:`make_sparse_classification`) and
:mod:`~wasap.data.loading` (:func:`load_dataset`: the named data sets and where their files are
found). Standardisation is in :mod:`wasap.preprocessing`.
"""

from .validation import DataError, encode_labels, validate_features, validate_training_data
from .dataset import Dataset
from .readers import ACCEPTED_FORMATS, read_table, write_npz
from .synthetic import SYNTHETIC_CHUNKED_ABOVE
from .sparse_synthetic import make_sparse_classification
from .loading import KNOWN_DATASETS, load_dataset

__all__ = [
    "ACCEPTED_FORMATS",
    "KNOWN_DATASETS",
    "SYNTHETIC_CHUNKED_ABOVE",
    "DataError",
    "Dataset",
    "encode_labels",
    "load_dataset",
    "make_sparse_classification",
    "read_table",
    "validate_features",
    "validate_training_data",
    "write_npz",
]
