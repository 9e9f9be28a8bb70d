"""The sequential trainer: the reference that the parallel trainer is tested against.

:class:`SequentialTrainer` does the work of one epoch (shuffle, batches, SET,
Importance Pruning); :func:`fit` runs the epochs around any such trainer:
evaluation, metrics, progress bars, Ctrl-C, divergence and the output folder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.sparse

from .batches import gather_transposed
from .checkpoint import CHECKPOINT_FILE, DEFAULT_EVERY, Checkpointer, load_checkpoint
from .config import TrainConfig
from .data import DataError, Dataset
from .gradient_flow import gradient_flow, sample_rows
from .augment import AUGMENT_STREAM, augment_batch, training_image_shape
from .model import TRAINER_STREAM, SparseLayer, SparseMLP, stream_seed
from .records import RunRecorder, run_facts
from .signals import StopSignals, describe_stop
from .signals import stop_reason as stop_reason_of
from .sparse_input import DeferredDecay
from .threads import ThreadGovernor, default_governor, default_threads, get_threads, set_threads
from .topology import importance_pruning_due


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite."""


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

    governor : wasap.threads.ThreadGovernor, optional
        Chooses the kernels' thread count before each batch (``config.threads`` None: :func:`fit` and the
        estimators give one); without it the kernels run on the count in force.

    Attributes
    ----------
    step : int
        Batches trained so far (seeds each batch's dropout masks).
    position : dict or None
        Inside an epoch: the batches of it done so far, their loss and correct
        counts, and the random stream's state the epoch's order was drawn from;
        None between epochs. With :attr:`step`, the random stream and the model
        it makes :meth:`state_dict`.
    """

    def __init__(self, model: SparseMLP, config: TrainConfig, *, governor: ThreadGovernor | None = None):
        self.model = model
        self.config = config
        self.governor = governor
        self.rng = np.random.default_rng(stream_seed(config.seed, TRAINER_STREAM))
        self.step = 0
        self.position = None
        self._deferred = None

    def state_dict(self) -> dict:
        """The trainer's state besides the model, JSON-ready: what an exact continuation needs."""
        return dict(step=self.step, rng=self.rng.bit_generator.state,
                    position=None if self.position is None else dict(self.position))

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`; a position inside an epoch resumes that epoch at its next batch."""
        self.step = int(state["step"])
        self.rng.bit_generator.state = state["rng"]
        self.position = None if state["position"] is None else dict(state["position"])

    def train_epoch(self, X: np.ndarray, y: np.ndarray, *,
                    progress: Callable[[int], None] | None = None) -> tuple[float, float]:
        """One pass over the data in a fresh random order (or the rest of an epoch :meth:`load_state_dict` resumed).

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features), float32, C-contiguous; or scipy.sparse CSR
            As a :class:`~wasap.data.Dataset` holds it (it is not checked again here). The batches
            of a sparse ``X`` are its row numbers (:class:`~wasap.batches.SparseBatch`): nothing
            of ``batch x n_features`` is gathered.
        y : ndarray of shape (n_samples,) int class indices, or (n_samples, n_outputs) float32 targets (mse)
        progress : callable, optional
            Called with the number of samples done after each batch, when
            :attr:`position` describes the epoch so far.

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
        regression = model.loss != "cross-entropy"
        position = self.position
        if position is None:
            position = dict(order_rng=self.rng.bit_generator.state, batches=0, loss_sum=0.0, correct=0)
        else:
            # The order is drawn again from the state it was first drawn from: the same order.
            self.rng.bit_generator.state = position["order_rng"]
        batches = batches_of(self.rng.permutation(X.shape[0]), cfg.batch_size)
        in_parts = cfg.micro_batch is not None and cfg.micro_batch < cfg.batch_size
        sparse = scipy.sparse.issparse(X)
        image_shape = training_image_shape(cfg, X)
        # The first layer's steps at gradient 0 wait in the rows of the features a batch lacks: the weights are
        # current wherever the trainer is settled, and at the end of the epoch, however it ends.
        self._deferred = DeferredDecay(model.layers[0]) if sparse and not in_parts else None
        try:
            loss_sum, correct = self._train_batches(X, y, batches, position, image_shape, progress)
        finally:
            if self._deferred is not None:
                self._deferred.settle()
            self._deferred = None
        n = X.shape[0]
        return loss_sum / n, (float("nan") if regression else correct / n)

    def _train_batches(self, X, y, batches, position, image_shape, progress):
        """The batches of :meth:`train_epoch` from ``position`` on: the epoch's loss sum and correct count."""
        cfg = self.config
        model = self.model
        regression = model.loss != "cross-entropy"
        in_parts = cfg.micro_batch is not None and cfg.micro_batch < cfg.batch_size
        sparse = scipy.sparse.issparse(X)
        governor = self.governor
        for rows in batches[position["batches"]:]:
            if governor is not None:
                threads = governor.threads()
                if threads != get_threads():  # a change of count only now and then: no call per step
                    set_threads(threads)
                started = time.perf_counter()
            # Micro-batches have workspaces of their own: no activations for the whole batch.
            # A sparse batch is read in place: no buffer to gather into.
            into = None if in_parts or sparse else model.workspace(rows.shape[0], training=True).x_t
            x_t = gather_transposed(X, rows, into)
            if image_shape is not None:
                augment_batch(x_t, image_shape, np.random.default_rng(stream_seed(cfg.seed, AUGMENT_STREAM, self.step)))
            target = np.ascontiguousarray(y[rows].T, dtype=np.float32) if regression else y[rows]
            loss, n_correct = model.train_batch(
                x_t, target, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                dropout=cfg.dropout, dropout_seed=stream_seed(cfg.seed, self.step), micro_batch=cfg.micro_batch,
                rates=cfg.layer_rates(), deferred=self._deferred,
            )
            if governor is not None:
                governor.record(time.perf_counter() - started, rows.shape[0])
            self.step += 1
            if not math.isfinite(loss):
                self.position = None
                raise TrainingDiverged(f"the loss became {loss} at step {self.step}")
            position = dict(position, batches=position["batches"] + 1,
                            loss_sum=position["loss_sum"] + loss * rows.shape[0],
                            correct=position["correct"] + n_correct)
            self.position = position
            if progress is not None:
                progress(rows.shape[0])
        self.position = None
        return position["loss_sum"], position["correct"]

    @property
    def settled(self) -> bool:
        """Whether the model's arrays hold the weights trained so far (deferred steps pending make them not).

        Always between epochs; inside an epoch on sparse data, every
        :data:`wasap.sparse_input.SETTLE_EVERY` batches: where a checkpoint may be taken.
        """
        return self._deferred is None or self._deferred.settled

    def samples_done(self, n_samples: int) -> int:
        """Samples of the epoch in progress already trained (0 between epochs)."""
        if self.position is None:
            return 0
        return min(n_samples, self.position["batches"] * self.config.batch_size)

    def evolve(self) -> None:
        """One SET step on every layer."""
        self.model.evolve(self.config.zeta, self.rng, init=self.config.init)

    def importance_pruning_due(self, epoch):
        """Whether Importance Pruning runs after ``epoch`` (1-based): :func:`wasap.topology.importance_pruning_due`."""
        return importance_pruning_due(self.config, epoch)

    def end_of_epoch(self, epoch: int, last: bool) -> None:
        """Topology changes after ``epoch``: Importance Pruning when due, then SET; none after the last."""
        if last:
            return
        if self.importance_pruning_due(epoch):
            self.model.importance_prune(self.config.ip_percentile)
        self.evolve()


def check_data(model: SparseMLP, data: Dataset) -> None:
    """Refuse a data set the model cannot train on, with a message that says why.

    The arrays were checked when the :class:`~wasap.data.Dataset` was made (finite float32
    features, class indices or targets, one per row); what is left is whether they fit
    ``model``, a check of shapes only.

    Raises
    ------
    TypeError
        When ``data`` is not a :class:`~wasap.data.Dataset`.
    wasap.data.DataError
        A feature count that differs from the model's input layer, more classes than the
        model has outputs (or no classes for a classifier), or targets of another width
        than the outputs of a model trained with the mse loss.
    """
    if not isinstance(data, Dataset):
        raise TypeError(f"data must be a wasap.data.Dataset, got {type(data).__name__}; make one with "
                        "Dataset(name, X_train, y_train, X_test, y_test, classes) or load one with "
                        "wasap.load_dataset.")
    if data.n_features != model.n_features:
        raise DataError(f"X_train has {data.n_features} features but the model's input layer has "
                        f"{model.n_features}; build the model with n_features={data.n_features}.")
    if model.loss == "cross-entropy":
        if data.n_classes == 0:
            raise DataError(f"{data.name} holds regression targets (its classes are empty), but the model is a "
                            "classifier (cross-entropy loss): give the label values as classes and class indices "
                            "as labels, or train a model with loss='mse'.")
        if data.n_classes > model.n_outputs:
            raise DataError(f"{data.name} has {data.n_classes} classes but the model has {model.n_outputs} "
                            f"outputs; build the model with n_outputs={data.n_classes}.")
        return
    for name, y in (("y_train", data.y_train), ("y_test", data.y_test)):
        width = y.shape[1] if y.ndim == 2 else 1
        if width != model.n_outputs:
            raise DataError(f"{name} has {width} target(s) a sample but the model has {model.n_outputs} "
                            "outputs; give one target per output.")


def fit(model: SparseMLP, data: Dataset, config: TrainConfig, *, out_dir: str | None = None, trainer=None,
        progress: bool | None = None, log: Callable[[str], None] | None = print, overwrite: bool = False,
        keep_last_good: bool = True, init_seconds: float | None = None, resume: dict | None = None,
        checkpoint_every: float = DEFAULT_EVERY, command_line: list[str] | None = None) -> dict:
    """Train ``model`` for ``config.epochs`` epochs and record the run.

    Each epoch: train, evaluate on the test split, then Importance Pruning (when
    due) and SET evolution (not after the last). With an ``out_dir`` the run
    writes checkpoints there (:mod:`wasap.checkpoint`) and can be continued
    exactly with ``resume``. Ctrl-C or SIGTERM stops after the batch in
    progress (a second one at once) and keeps the model trained so far; a loss
    or weight that turns NaN stops the run and restores the last good model.

    Parameters
    ----------
    model : SparseMLP
        Trained in place (with ``resume``: the checkpoint's model).
    data : wasap.data.Dataset
        ``X_train`` (n, n_features) float32, ``y_train``, ``X_test``, ``y_test``, as checked when
        the Dataset was made; only their fit to ``model`` is checked here (:func:`check_data`).
    config : wasap.config.TrainConfig
    out_dir : str, optional
        Receives metrics.jsonl, summary.json, model.npz and checkpoint.npz (docs/guide.md, "The output folder").
    trainer : object, optional
        Anything with ``train_epoch(X, y, progress=)`` and ``end_of_epoch(epoch, last)``;
        a :class:`SequentialTrainer` by default. Checkpoints need its
        ``state_dict`` and ``load_state_dict`` too; without them none are written.
    progress : bool, optional
        Progress bars; None shows them only on a terminal.
    log : callable
        Receives one line of text per event (None: silent).
    overwrite : bool
        Allow a non-empty ``out_dir`` (its run's files are replaced).
    keep_last_good : bool
        Keep the model of the last good epoch to fall back on if training diverges:
        the last checkpoint when there are checkpoints (an ``out_dir``), else a
        snapshot in memory, taken after every epoch, of each layer's weights, bias
        and momentum (about 12 bytes a weight). False keeps none: a diverged run
        ends with the model as it was when it stopped.
    init_seconds : float, optional
        How long building the model took, for summary.json.
    resume : dict, optional
        The state of the checkpoint in ``out_dir`` that ``model`` was loaded from
        (:func:`wasap.checkpoint.load_checkpoint`): training goes on from there,
        to the model an uninterrupted run would have given.
    checkpoint_every : float
        Seconds between checkpoints inside an epoch (:class:`wasap.checkpoint.Checkpointer`).
    command_line : list of str, optional
        The command line that started the run, for summary.json and ``--resume``.

    Returns
    -------
    dict
        The run's summary (as written to summary.json), with its per-epoch
        ``history`` added.

    Raises
    ------
    TypeError, wasap.data.DataError
        Before anything starts, for data that is not a Dataset or does not fit the model (:func:`check_data`).
    wasap.records.OutputWriteError
        When an output file cannot be written (disk full); the message says what was kept.
    """
    log = log or (lambda line: None)
    check_data(model, data)
    training_image_shape(config, data.X_train)  # a shape that does not fit is refused before anything starts
    threads = set_threads(config.threads or default_threads())
    trainer = trainer or SequentialTrainer(model, config, governor=default_governor(config, threads))
    resumable = hasattr(trainer, "state_dict") and hasattr(trainer, "load_state_dict")
    if resume is not None:
        if not resumable:
            raise ValueError("resume needs a trainer with state_dict() and load_state_dict(), as SequentialTrainer.")
        trainer.load_state_dict(resume["trainer"])
    recorder = RunRecorder(out_dir, config, overwrite=overwrite, resume=resume,
                           facts=run_facts(data, command_line))
    try:
        checkpoints = None
        if out_dir is not None and resumable:
            checkpoints = Checkpointer(recorder.path(CHECKPOINT_FILE), checkpoint_every)
            checkpoints.epoch = None if resume is None else resume["epoch"]
        run = _Run(model, data, config, trainer, recorder, checkpoints, command_line=command_line, log=log)
        return run.train(progress=progress, keep_last_good=keep_last_good, init_seconds=init_seconds,
                         first_epoch=1 if resume is None else resume["epoch"] + 1)
    finally:
        recorder.close()


class _Run:
    """One :func:`fit` call: the epoch loop, its checkpoints, its stop signals and its fallback."""

    def __init__(self, model, data, config, trainer, recorder, checkpoints, *, command_line, log):
        self.model = model
        self.data = data
        self.config = config
        self.trainer = trainer
        self.recorder = recorder
        self.checkpoints = checkpoints
        self.command_line = command_line
        self.log = log
        self.classes = getattr(data, "classes", None)

    def checkpoint(self):
        """Write a checkpoint of the model and the trainer as they are now (a consistent point)."""
        self.recorder.write_checkpoint(self.checkpoints, self.model, self.trainer.state_dict(),
                                       command_line=self.command_line, classes=self.classes)

    def train(self, *, progress, keep_last_good, init_seconds, first_epoch):
        from tqdm.auto import tqdm

        model, data, config, trainer, recorder, checkpoints = (
            self.model, self.data, self.config, self.trainer, self.recorder, self.checkpoints)
        log = self.log
        recorder.start(model, init_seconds=init_seconds)
        recorder.extra["compile_seconds"] = prepare_kernels(model, data, config, log)
        if checkpoints is not None and checkpoints.epoch is None:
            # A run killed before its first epoch ends can start again from here, and a divergence
            # in epoch 1 has a model to go back to.
            self.checkpoint()
        fallback = _LastGood(model, checkpoints) if keep_last_good else None
        disable = (not progress) if progress is not None else None
        stop_reason = "completed"
        n_train = data.X_train.shape[0]
        flow_rows = sample_rows(n_train) if config.gradient_flow else None
        epochs = tqdm(range(first_epoch, config.epochs + 1), initial=first_epoch - 1, total=config.epochs,
                      desc="epochs", unit="epoch", disable=disable, dynamic_ncols=True)
        with StopSignals(log) as stop:
            try:
                for epoch in epochs:
                    done = trainer.samples_done(n_train) if hasattr(trainer, "samples_done") else 0
                    with tqdm(total=n_train, initial=done, desc=f"epoch {epoch}", unit="sample", leave=False,
                              disable=disable, dynamic_ncols=True, mininterval=0.5) as bar:
                        def after_batch(n_samples):
                            bar.update(n_samples)
                            stop.check()
                            # Where the trainer is settled: a resumed run then goes on exactly as this one.
                            if checkpoints is not None and checkpoints.due(mid_epoch=True) and \
                                    getattr(trainer, "settled", True) and model.is_finite():
                                self.checkpoint()

                        started = time.perf_counter()
                        train_loss, train_accuracy = trainer.train_epoch(data.X_train, data.y_train,
                                                                         progress=after_batch)
                        train_seconds = time.perf_counter() - started
                        if getattr(trainer, "governor", None) is not None:
                            recorder.extra["kernel_threads"] = trainer.governor.summary()
                    started = time.perf_counter()
                    test_loss, test_accuracy = model.evaluate(data.X_test, data.y_test)
                    eval_seconds = time.perf_counter() - started
                    if not (math.isfinite(test_loss) and model.is_finite()):
                        raise TrainingDiverged(f"the weights became non-finite in epoch {epoch}")
                    # Of the weights the epoch trained, before the topology changes.
                    flow = ({} if flow_rows is None else
                            gradient_flow(model, data.X_train, data.y_train, flow_rows))
                    started = time.perf_counter()
                    trainer.end_of_epoch(epoch, last=epoch == config.epochs)
                    evolve_seconds = time.perf_counter() - started
                    record = recorder.epoch(epoch=epoch, train_loss=train_loss, train_accuracy=train_accuracy,
                                            test_loss=test_loss, test_accuracy=test_accuracy,
                                            nnz=model.nnz_per_layer(), train_seconds=train_seconds,
                                            eval_seconds=eval_seconds, evolve_seconds=evolve_seconds, **flow)
                    if fallback is not None and epoch < config.epochs:  # after the last, none is needed
                        fallback.keep()
                    if checkpoints is not None and checkpoints.due(mid_epoch=False):
                        self.checkpoint()
                    epochs.set_postfix(loss=f"{train_loss:.4f}", test_acc=_percent(test_accuracy), nnz=model.nnz)
                    if epochs.disable:
                        log(recorder.describe(record))
                    if epoch < config.epochs:
                        stop.check()
            except KeyboardInterrupt as error:
                stop_reason = stop_reason_of(error)
                if checkpoints is not None and getattr(error, "at_safe_point", False):
                    self.checkpoint()
                log(describe_stop(stop_reason))
            except TrainingDiverged as error:
                stop_reason = "diverged"
                kept = fallback.restore() if fallback is not None else (
                    "the model is left as it was when training stopped.")
                recorder.extra["error"] = (f"Training diverged ({error}); {kept} Lower the learning "
                                           "rate (--lr) or raise the weight decay, and check the inputs are scaled.")
                log(recorder.extra["error"])
            finally:
                epochs.close()
            with stop.deferred():
                return recorder.finish(model, stop_reason, classes=self.classes,
                                       preprocessing=data.preprocessing)


class _LastGood:
    """The model to go back to when training diverges: the last checkpoint on disk, else a snapshot in memory.

    The snapshot holds what a restore needs, each layer's CSR arrays, values, bias and momentum
    (a model trained on after the restore, as an estimator's warm start does, goes on as from that
    epoch); the column view is derived from the CSR arrays, so it is rebuilt on a restore instead
    of copied every epoch.
    """

    def __init__(self, model: SparseMLP, checkpoints: Checkpointer | None):
        self.model = model
        self.checkpoints = checkpoints
        self.snapshot = None
        if checkpoints is None:
            self.keep()

    def keep(self) -> None:
        """Note the model after a good epoch (nothing to do when checkpoints keep it)."""
        if self.checkpoints is not None:
            return
        self.snapshot = None  # the old snapshot goes first: two beside the model would take a third model's room
        self.snapshot = [_LayerSnapshot(layer.n_in, layer.n_out, layer.indptr.copy(), layer.indices.copy(),
                                        layer.data.copy(), layer.bias.copy(), layer.velocity.copy(),
                                        layer.bias_velocity.copy()) for layer in self.model.layers]

    def restore(self) -> str:
        """Put the last good model back; returns a sentence saying which."""
        if self.checkpoints is not None:
            good, state = load_checkpoint(self.checkpoints.path)
            position = state["trainer"].get("position")
            where = f"epoch {state['epoch']}" + (f" and {position['batches']} batches" if position else "")
            self.model.layers = good.layers
            sentence = f"kept the last checkpoint's model ({where})."
        else:
            # SparseLayer rebuilds the column view from the CSR arrays.
            self.model.layers = [SparseLayer(*saved) for saved in self.snapshot]
            sentence = "kept the model of the last good epoch."
        self.model.release_workspaces()
        return sentence


class _LayerSnapshot(NamedTuple):
    """A layer's arrays, in :class:`~wasap.model.SparseLayer`'s argument order."""

    n_in: int
    n_out: int
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    bias: np.ndarray
    velocity: np.ndarray
    bias_velocity: np.ndarray


#: The kinds of network whose kernels this process has compiled (see :func:`prepare_kernels`).
_PREPARED = set()


def prepare_kernels(model: SparseMLP, data: Dataset, config: TrainConfig,
                    log: Callable[[str], None] | None = None) -> float:
    """Compile the kernels a run calls, or load them from numba's cache, before its first epoch.

    numba compiles each kernel at its first call. Running one batch, one
    evaluation and one evolution of a throwaway network of a few neurons
    here makes that happen once, announced, rather than inside epoch 1,
    whose time and progress bar it would distort. The batches are the data's
    own, so a sparse ``X`` prepares the sparse input layer's kernels.

    Parameters
    ----------
    model : SparseMLP
    data : wasap.data.Dataset
    config : wasap.config.TrainConfig
    log : callable, optional

    Returns
    -------
    float
        Seconds it took (0 when this process had prepared them already).
    """
    key = (model.activation, model.output_activation, model.loss, config.micro_batch is not None,
           scipy.sparse.issparse(data.X_train),
           config.importance_pruning, model.n_features)
    if key in _PREPARED:
        return 0.0
    log = log or (lambda line: None)
    log("preparing the numba kernels (a first run compiles them; later runs load them from numba's cache)")
    started = time.perf_counter()
    tiny = SparseMLP.random([model.n_features, 4, model.n_outputs], epsilon=1.0, activation=model.activation,
                            alpha=model.alpha, output_activation=model.output_activation, loss=model.loss,
                            init=config.init, warn=False)
    rows = min(data.X_train.shape[0], config.batch_size)
    SequentialTrainer(tiny, config).train_epoch(data.X_train[:rows], data.y_train[:rows])
    tiny.evaluate(data.X_test[:rows], data.y_test[:rows])
    if config.importance_pruning:
        tiny.importance_prune(config.ip_percentile)
    tiny.evolve(config.zeta, np.random.default_rng(0), init=config.init)
    _PREPARED.add(key)
    seconds = time.perf_counter() - started
    log(f"kernels ready in {seconds:.1f}s")
    return seconds


def _percent(value):
    return "n/a" if value != value else f"{100 * value:.2f}%"
