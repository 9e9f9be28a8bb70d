"""The sequential trainer: the reference that the parallel trainer is tested against.

:class:`SequentialTrainer` does the work of one epoch (shuffle, batches, SET,
Importance Pruning); :func:`fit` runs the epochs around any such trainer:
evaluation, metrics, progress bars, Ctrl-C, divergence and the output folder.
"""

import math
import os
import time

import numpy as np

from . import kernels
from .kernels import gather_transposed
from .data import DataError, validate_features, validate_training_data
from .model import SparseMLP, stream_seed
from .records import RunRecorder


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite."""


def default_threads():
    """One kernel thread per idle core this process may use, at least one.

    numba's threads slow down many-fold when another process competes for
    their cores, so busy cores (by the 1-minute load average) are left out.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = int(math.floor(os.getloadavg()[0] + 0.5))
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy + 1))


def batches_of(order, batch_size):
    """Split a sample order into consecutive batches; the last may be smaller."""
    return [order[start:start + batch_size] for start in range(0, order.shape[0], batch_size)]


class SequentialTrainer:
    """Trains a :class:`~wasap.model.SparseMLP` one batch after another.

    Parameters
    ----------
    model : SparseMLP
    config : wasap.config.TrainConfig
        Uses batch_size, micro_batch, lr, lr_fan_in, output_lr, momentum, weight_decay, dropout, zeta, init,
        importance_pruning, ip_start, ip_every, ip_percentile and seed.

    Attributes
    ----------
    step : int
        Batches trained so far (seeds each batch's dropout masks).
    """

    def __init__(self, model, config):
        self.model = model
        self.config = config
        self.rng = np.random.default_rng(stream_seed(config.seed, 0x5E7))
        self.step = 0

    def train_epoch(self, X, y, *, progress=None):
        """One pass over the data in a fresh random order.

        Parameters
        ----------
        X : (n_samples, n_features) float32
        y : (n_samples,) int class indices, or (n_samples, n_outputs) float32 targets (mse)
        progress : callable, optional
            Called with the number of samples done after each batch.

        Returns
        -------
        loss : float
            Mean training loss over the epoch's batches (with dropout).
        accuracy : float
            Training accuracy over the epoch (NaN for mse).

        Raises
        ------
        TrainingDiverged
            As soon as a batch's loss is not finite.
        """
        cfg = self.config
        model = self.model
        X = np.ascontiguousarray(X, dtype=np.float32)  # no copy when it already is
        regression = model.loss != "cross-entropy"
        total_loss = 0.0
        total_correct = 0
        in_parts = cfg.micro_batch is not None and cfg.micro_batch < cfg.batch_size
        for rows in batches_of(self.rng.permutation(X.shape[0]), cfg.batch_size):
            # Micro-batches have workspaces of their own: no activations for the whole batch.
            into = None if in_parts else model.workspace(rows.shape[0], training=True).x_t
            x_t = gather_transposed(X, rows, into)
            target = np.ascontiguousarray(y[rows].T, dtype=np.float32) if regression else y[rows]
            loss, n_correct = model.train_batch(
                x_t, target, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                dropout=cfg.dropout, dropout_seed=stream_seed(cfg.seed, self.step), micro_batch=cfg.micro_batch,
                rates=cfg.layer_rates(),
            )
            self.step += 1
            if not math.isfinite(loss):
                raise TrainingDiverged(f"the loss became {loss} at step {self.step}")
            total_loss += loss * rows.shape[0]
            total_correct += n_correct
            if progress is not None:
                progress(rows.shape[0])
        n = X.shape[0]
        return total_loss / n, (float("nan") if regression else total_correct / n)

    def evolve(self):
        """One SET step on every layer."""
        self.model.evolve(self.config.zeta, self.rng, init=self.config.init)

    def importance_pruning_due(self, epoch):
        """Whether Importance Pruning runs after ``epoch`` (1-based)."""
        cfg = self.config
        return cfg.importance_pruning and epoch >= cfg.ip_start and epoch % cfg.ip_every == 0

    def end_of_epoch(self, epoch, last):
        """Topology changes after ``epoch``: Importance Pruning when due, then SET; none after the last."""
        if last:
            return
        if self.importance_pruning_due(epoch):
            self.model.importance_prune(self.config.ip_percentile)
        self.evolve()


def check_data(model, data):
    """Refuse data the model cannot train on, with a message that says why.

    Raises
    ------
    wasap.data.DataError
        NaN or inf, X and y of different lengths, a single class, or a
        feature count that differs from the model's input layer.
    """
    if model.loss == "cross-entropy":
        validate_training_data(data.X_train, data.y_train)
    else:
        validate_features(data.X_train, name="X_train")
    validate_features(data.X_test, name="X_test")
    for name, X, y in (("train", data.X_train, data.y_train), ("test", data.X_test, data.y_test)):
        if len(X) != len(y):
            raise DataError(f"X_{name} has {len(X)} rows but y_{name} has {len(y)} targets; give one per row.")
    for name, X in (("X_train", data.X_train), ("X_test", data.X_test)):
        if X.shape[1] != model.n_features:
            raise DataError(f"{name} has {X.shape[1]} features but the model's input layer has "
                            f"{model.n_features}; build the model with n_features={X.shape[1]}.")
    if model.loss == "cross-entropy":
        for name, y in (("y_train", data.y_train), ("y_test", data.y_test)):
            y = np.asarray(y)
            if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= model.n_outputs:
                raise DataError(f"{name} must hold class indices 0..{model.n_outputs - 1} (integers); "
                                "encode labels with wasap.data.encode_labels, or load data with "
                                "wasap.load_dataset, which does.")


def fit(model, data, config, *, out_dir=None, trainer=None, progress=None, log=print, overwrite=False,
        keep_last_good=True, init_seconds=None):
    """Train ``model`` for ``config.epochs`` epochs and record the run.

    Each epoch: train, evaluate on the test split, then Importance Pruning (when
    due) and SET evolution (not after the last). Ctrl-C stops cleanly and keeps
    the model trained so far; a loss or weight that turns NaN stops the run and
    restores the model of the last good epoch.

    Parameters
    ----------
    model : SparseMLP
        Trained in place.
    data : wasap.data.Dataset
        ``X_train`` (n, n_features) float32, ``y_train``, ``X_test``, ``y_test``.
    config : wasap.config.TrainConfig
    out_dir : str, optional
        Receives metrics.jsonl, summary.json and model.npz (see the README).
    trainer : object, optional
        Anything with ``train_epoch(X, y, progress=)`` and ``end_of_epoch(epoch, last)``;
        a :class:`SequentialTrainer` by default.
    progress : bool, optional
        Progress bars; None shows them only on a terminal.
    log : callable
        Receives one line of text per event (None: silent).
    overwrite : bool
        Allow a non-empty ``out_dir``.
    keep_last_good : bool
        Keep a copy of the last finite model to fall back on if training diverges.
    init_seconds : float, optional
        How long building the model took, for summary.json.

    Returns
    -------
    dict
        The run's summary (as written to summary.json), with its per-epoch
        ``history`` added.
    """
    from tqdm.auto import tqdm

    log = log or (lambda line: None)
    check_data(model, data)
    kernels.set_threads(config.threads or default_threads())
    recorder = RunRecorder(out_dir, config, overwrite=overwrite)
    trainer = trainer or SequentialTrainer(model, config)
    recorder.start(model, init_seconds=init_seconds)
    disable = (not progress) if progress is not None else None
    last_good = model.copy() if keep_last_good else None
    stop_reason = "completed"
    n_train = data.X_train.shape[0]
    epochs = tqdm(range(1, config.epochs + 1), desc="epochs", unit="epoch", disable=disable, dynamic_ncols=True)
    try:
        for epoch in epochs:
            with tqdm(total=n_train, desc=f"epoch {epoch}", unit="sample", leave=False, disable=disable,
                      dynamic_ncols=True, mininterval=0.5) as bar:
                started = time.perf_counter()
                train_loss, train_accuracy = trainer.train_epoch(data.X_train, data.y_train, progress=bar.update)
                train_seconds = time.perf_counter() - started
            started = time.perf_counter()
            test_loss, test_accuracy = model.evaluate(data.X_test, data.y_test)
            eval_seconds = time.perf_counter() - started
            if not (math.isfinite(test_loss) and model.is_finite()):
                raise TrainingDiverged(f"the weights became non-finite in epoch {epoch}")
            started = time.perf_counter()
            trainer.end_of_epoch(epoch, last=epoch == config.epochs)
            evolve_seconds = time.perf_counter() - started
            record = recorder.epoch(epoch=epoch, train_loss=train_loss, train_accuracy=train_accuracy,
                                    test_loss=test_loss, test_accuracy=test_accuracy, nnz=model.nnz_per_layer(),
                                    train_seconds=train_seconds, eval_seconds=eval_seconds,
                                    evolve_seconds=evolve_seconds)
            if keep_last_good:
                last_good = model.copy()
            epochs.set_postfix(loss=f"{train_loss:.4f}", test_acc=_percent(test_accuracy), nnz=model.nnz)
            if epochs.disable:
                log(recorder.describe(record))
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        log("Interrupted: keeping the model trained so far.")
    except TrainingDiverged as error:
        stop_reason = "diverged"
        if last_good is not None:
            model.layers = last_good.layers
            model.release_workspaces()
        log(f"Training diverged ({error}); kept the model of the last good epoch. "
            "Lower the learning rate (--lr) or raise the weight decay, and check the inputs are scaled.")
    finally:
        epochs.close()
    return recorder.finish(model, stop_reason, classes=getattr(data, "classes", None))


def _percent(value):
    return "n/a" if value != value else f"{100 * value:.2f}%"
