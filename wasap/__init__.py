"""wasap: truly sparse neural networks on CPUs.

Sparse Evolutionary Training (SET) of MLPs whose weights exist only as their
nonzeros, the All-ReLU activation, Importance Pruning of neurons, and
WASAP-SGD, a two-phase data-parallel trainer over shared memory.

>>> import wasap
>>> data = wasap.load_dataset("madelon")
>>> config = wasap.TrainConfig(hidden=(400, 100, 400), epsilon=10, alpha=0.5, batch_size=32, epochs=5)
>>> model = wasap.SparseMLP.from_config(data.n_features, data.n_classes, config)
>>> summary = wasap.fit(model, data, config, log=None)  # doctest: +SKIP
"""

#: The package's version (setup.cfg reads it from here); declared before the imports so that
#: modules can import it while the package is still being initialised.
__version__ = "0.1.0"

from .config import ConfigError, TrainConfig
from .data import DataError, Dataset, load_dataset
from .model import ModelFileError, SparseLayer, SparseMLP
from .parallel import WorkerFailed, fit_parallel
from .train import SequentialTrainer, TrainingDiverged, fit

__all__ = [
    "ConfigError", "DataError", "Dataset", "ModelFileError", "SequentialTrainer", "SparseLayer", "SparseMLP",
    "SparseMLPClassifier", "SparseMLPRegressor", "TrainConfig", "TrainingDiverged", "WorkerFailed", "fit",
    "fit_parallel", "load_dataset",
]


def __getattr__(name):
    # The estimators import scikit-learn's estimator machinery (about 1 s):
    # load them only when asked for.
    if name in ("SparseMLPClassifier", "SparseMLPRegressor"):
        from . import estimator
        return getattr(estimator, name)
    raise AttributeError(f"module 'wasap' has no attribute {name!r}")
