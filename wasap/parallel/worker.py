"""A WASAP-SGD worker process: gradients in phase one, an independent replica in phase two.

Phase one (Algorithm 1, lines 2-10), one step:

1. wait for a free gradient slot (two per worker: the worker computes the
   next gradient while the server applies the last; in the synchronous
   variant one slot, so the slot coming back is the server's go);
2. pull the weights into a local working copy (under each layer's lock; the
   column view is rebuilt only when the layer's topology version changed);
3. compute the mini-batch gradient with the core kernels
   (:meth:`wasap.model.SparseMLP.gradient_batch`) straight into the slot;
4. asynchronous variant: apply it to the served layers whose topology has not
   changed since the pull, under each layer's lock, with the server's rule
   (:meth:`~.transport.WorkerTransport.apply_gradient`): the server is one
   process, and every update going through it would limit how many workers
   phase one can keep busy;
5. when every layer was applied, give the slot back at once and report the
   step to the server with up to 7 others in one message
   (:class:`~.messages.StepsApplied`: the server only counts them); otherwise
   send :class:`~.messages.GradientPushed`: the server remaps and applies the
   layers the worker could not (a topology changed in between). The server
   counts the updates and, once per epoch's worth of samples, evolves.

The worker walks its partition (rows ``w, w + K, w + 2K, ...`` of the training
data, one contiguous block of the shared copy, never copied again) in a fresh
random order each local epoch: its own generator in the asynchronous variant, the server's in the synchronous one
(which reproduces the sequential trainer's draws for one worker). Batch ``i``
of worker ``w`` drops out with ``stream_seed(seed, i * K + w)``, the sequential
trainer's ``stream_seed(seed, step)`` when K = 1.

Phase two (lines 24-33): the worker trains a private copy of the served model
with a :class:`wasap.train.SequentialTrainer` seeded per worker, on its
partition, with its own SET evolution, and publishes the replica after every
local epoch (before evolving) for the server to average
(:class:`~.messages.ReplicaPublished`).

Liveness: the worker beats (:meth:`~.transport.WorkerTransport.beat`) whenever
it moves on, saying what it does next, so that the server can tell a stalled
worker from a busy one; every wait is in steps of :data:`~.transport.WORKER_POLL`
seconds, and a STOP or a server gone ends the worker (:class:`~.transport.Stopped`).
"""
import math
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.sparse

from ..augment import AUGMENT_STREAM, augment_batch, training_image_shape
from ..batches import gather_transposed
from ..config import TrainConfig
from ..model import REPLICA_STREAM, TRAINER_STREAM, stream_seed
from ..profiling import TimeAccount
from ..threads import set_threads
from ..train import SequentialTrainer, TrainingDiverged
from .messages import Activity, Command, Failed, GradientPushed, ReplicaPublished, StepsApplied
from .server import warm_up_update_kernels
from .transport import WORKER_POLL, Stopped, WorkerTransport


@dataclass(frozen=True)
class WorkerStart:
    """Where a worker's phase one begins: batch ``step`` (its dropout seeds), at ``position`` of its current order.

    A fresh run starts at step 0 with a fresh order. A resumed synchronous run
    starts where the checkpoint's workers were: their step count and how far
    into the order (which the server writes again) they had got. ``salt`` keeps a
    resumed asynchronous run from drawing the orders it drew before.
    """

    step: int = 0
    position: int = 0
    salt: tuple = ()


def worker_main(handle, worker, n_workers, config, threads, first_phase2_epoch, start=None):
    """Entry point of a worker process (started with "spawn" or "forkserver").

    Parameters
    ----------
    handle : object
        Its ``connect()`` returns this worker's :class:`~.transport.WorkerTransport`
        (:meth:`wasap.parallel.shm_transport.SharedMemoryTransport.worker_handle`).
    worker, n_workers, config, threads, first_phase2_epoch, start
        As :func:`run_worker`'s.
    """
    # Ctrl-C in a terminal reaches the whole process group; the main process
    # decides what happens (stop, keep the model) and tells the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run_worker(handle.connect(), worker, n_workers, config, threads, first_phase2_epoch, start)


def run_worker(transport: WorkerTransport, worker: int, n_workers: int, config: TrainConfig, threads: int,
               first_phase2_epoch: Optional[int], start: Optional[WorkerStart] = None) -> None:
    """One worker's whole run over ``transport``: get ready, then follow the server's command word.

    Parameters
    ----------
    transport : WorkerTransport
        Closed on return.
    worker, n_workers : int
    config : wasap.config.TrainConfig
    threads : int
        Kernel threads of this worker (its share of the cores).
    first_phase2_epoch : int or None
        The epoch phase two starts at (None: no phase two).
    start : WorkerStart, optional
        Where a resumed run's phase one goes on from; None: the beginning.
    """
    try:
        set_threads(threads)
        model = transport.read_model()
        _warm_up(model, config.batch_size, transport.partition()[0])
        account = TimeAccount(transport.time_table())
        transport.account = account
        transport.ready()
        _run(transport, account, model, worker, n_workers, config, first_phase2_epoch, start or WorkerStart())
    except Stopped:
        pass  # told to stop while waiting, or the server is gone: nothing left to report
    except BaseException:
        if transport.server_gone():
            return  # no one to report to, and the run is over
        try:
            transport.send(Failed(worker, traceback.format_exc()))
        except Exception:
            pass
        raise
    finally:
        transport.close()


def _warm_up(model, batch_size, X_part):
    """Before the clock starts: map this worker's data pages and load the kernels (numba's cache).

    A shared block's pages are mapped into a process on first touch; touching one value per 4 KiB
    page now keeps those page faults out of the first epoch's batches.
    """
    sparse = scipy.sparse.issparse(X_part)
    flat = X_part.data if sparse else X_part.reshape(-1)
    float(flat[::1024].sum())
    if sparse:
        x_t = gather_transposed(X_part, np.zeros(min(batch_size, X_part.shape[0]), dtype=np.int64))
        batch_size = x_t.shape[1]
    else:
        x_t = np.zeros((model.n_features, batch_size), dtype=np.float32)
    target = np.zeros(batch_size, dtype=np.int64) if model.loss == "cross-entropy" else \
        np.zeros((model.n_outputs, batch_size), dtype=np.float32)
    grads = [np.empty(layer.nnz, dtype=np.float32) for layer in model.layers]
    bias_grads = [np.empty(layer.n_out, dtype=np.float32) for layer in model.layers]
    model.gradient_batch(x_t, target, grads, bias_grads, dropout=0.5, dropout_seed=0)
    warm_up_update_kernels()


def _run(transport, account, model, worker, n_workers, config, first_phase2_epoch, start):
    """Follow the command word: wait, phase one, phase two, stop."""
    while True:
        command = transport.command()
        if command == Command.STOP:
            return
        if command == Command.WAIT:
            # Every worker starts at once (the synchronous variant needs all K anyway).
            time.sleep(0.01)
            transport.beat(Activity.WAITING_TO_START)
            account.charge("slot_wait")
        elif command == Command.RUN:
            _phase_one(transport, account, model, worker, n_workers, config, start)
        elif command == Command.PHASE_TWO:
            _phase_two(transport, account, worker, n_workers, config, first_phase2_epoch)
            return


def _phase_one(transport, account, model, worker, n_workers, config, start):
    """Gradients until the command word leaves RUN (see the module docstring)."""
    X, y = transport.partition()
    n_rows = X.shape[0]
    n_layers = len(model.layers)
    regression = model.loss != "cross-entropy"
    rates = config.layer_rates()
    # A resumed asynchronous run draws orders it has not drawn before (it does not repeat exactly anyway).
    rng = np.random.default_rng(stream_seed(config.seed, TRAINER_STREAM, 1 + worker, *start.salt))
    versions = [-1] * n_layers  # forces the first pull to take the structure
    n_slots = transport.n_slots
    # Self-applied gradients are reported in groups of up to 8 (one server wake-up instead of 8), but
    # never more than 1/16 of the partition, so that the server's epoch count lags by at most 1/16 of
    # an epoch whatever K.
    report_every = max(1, min(8, n_rows // (16 * config.batch_size)))
    pending = _PendingReport(worker)
    step = start.step
    position = start.position if 0 < start.position < n_rows else n_rows  # n_rows: draw a fresh order
    # Inside an order (a resumed synchronous run): the server has written that order again.
    order = transport.order(n_rows) if position < n_rows else None
    image_shape = training_image_shape(config, X)
    sparse = scipy.sparse.issparse(X)
    account.charge("other")
    while True:
        if not transport.acquire_slot(WORKER_POLL):
            account.charge("slot_wait")
            if transport.command() != Command.RUN:
                return
            continue
        account.charge("slot_wait")
        if transport.command() != Command.RUN:
            return
        if position >= n_rows:
            order = transport.order(n_rows) if config.sync else rng.permutation(n_rows)
            position = 0
        versions = transport.pull_weights(model, versions)
        transport.beat(Activity.COMPUTING)
        batch_rows = order[position:position + config.batch_size]
        position += batch_rows.shape[0]
        # Into the workspace's 64-byte aligned buffer, as the sequential trainer does (the kernels'
        # vector loads are slower across cache lines); a sparse batch is read in place.
        x_t = gather_transposed(X, batch_rows, None if sparse else model.workspace(batch_rows.shape[0],
                                                                                   training=True).x_t)
        if image_shape is not None:  # as the sequential trainer's step, to the bit
            augment_batch(x_t, image_shape,
                          np.random.default_rng(stream_seed(config.seed, AUGMENT_STREAM, step * n_workers + worker)))
        target = np.ascontiguousarray(y[batch_rows].T, dtype=np.float32) if regression else y[batch_rows]
        account.charge("data")
        slot = step % n_slots
        grads, bias_grads = transport.gradient_slot(slot, model.nnz_per_layer())
        loss, n_correct = model.gradient_batch(x_t, target, grads, bias_grads, dropout=config.dropout,
                                               dropout_seed=stream_seed(config.seed, step * n_workers + worker))
        account.charge("compute")
        if config.sync:
            applied = (False,) * n_layers  # the server applies the average of the K gradients
        elif transport.command() != Command.RUN:
            return  # phase one is over: this step comes too late to count
        else:
            # The pulled layers have the structure of ``versions``: their nnz are the served ones.
            lrs = [rates.layer_lr(config.lr, l, model.sizes, layer.nnz) for l, layer in enumerate(model.layers)]
            applied = transport.apply_gradient(slot, versions, lrs, momentum=config.momentum,
                                               weight_decay=config.weight_decay)
        n_samples = batch_rows.shape[0]
        if all(applied):
            transport.release_own_slot()
            pending.add(loss, n_correct, n_samples)
            if pending.steps >= report_every:
                pending.flush(transport)
        else:
            pending.flush(transport)
            transport.send(GradientPushed(worker, slot, tuple(versions), float(loss), int(n_correct), int(n_samples),
                                          tuple(bool(a) for a in applied)))
        account.count()
        step += 1
        account.charge("other")


class _PendingReport:
    """Self-applied gradients not yet reported to the server: their count, summed loss and samples."""

    def __init__(self, worker):
        self.worker = worker
        self._clear()

    def _clear(self):
        self.steps = self.n_correct = self.n_samples = 0
        self.loss_sum = 0.0

    def add(self, loss, n_correct, n_samples):
        self.steps += 1
        self.loss_sum += loss * n_samples
        self.n_correct += n_correct
        self.n_samples += n_samples

    def flush(self, transport):
        if self.steps:
            transport.send(StepsApplied(self.worker, int(self.steps), float(self.loss_sum), int(self.n_correct),
                                        int(self.n_samples)))
            self._clear()


def _phase_two(transport, account, worker, n_workers, config, first_epoch):
    """Local training of a replica from ``first_epoch`` to ``config.epochs``, published after each epoch."""
    account.set_phase(2)
    # Views of the shared block: the partition is never copied.
    X_part, y_part = transport.partition()
    replica = transport.read_model()
    trainer = SequentialTrainer(replica, config.replace(seed=stream_seed(config.seed, REPLICA_STREAM, worker)))
    account.charge("data")

    def after_batch(_samples):
        # Called after every batch: a heartbeat, and a STOP (Ctrl-C, a failed worker) ends a long local
        # epoch at once.
        transport.beat(Activity.TRAINING_REPLICA, epoch)
        if transport.command() == Command.STOP:
            raise Stopped

    for epoch in range(first_epoch, config.epochs + 1):
        transport.beat(Activity.TRAINING_REPLICA, epoch)
        try:
            loss, accuracy = trainer.train_epoch(X_part, y_part, progress=after_batch)
        except TrainingDiverged:
            loss, accuracy = float("nan"), float("nan")
        account.charge("compute")
        n = X_part.shape[0]
        n_correct = 0 if math.isnan(accuracy) else int(round(accuracy * n))
        while True:
            transport.beat(Activity.PUBLISHING, epoch)  # also while the server has not gathered the last one
            if transport.publish_replica(replica, WORKER_POLL):
                break
            if transport.command() == Command.STOP:
                return
        transport.send(ReplicaPublished(worker, int(epoch), float(loss), int(n_correct), int(n)))
        account.charge("data")
        account.count()
        if transport.command() == Command.STOP:
            return
        if not math.isfinite(loss):
            break  # the server ends the run on this report; until its STOP, an exit would read as a failure
        transport.beat(Activity.EVOLVING_REPLICA)
        trainer.end_of_epoch(epoch, last=epoch == config.epochs)
        account.charge("compute")
    # Stay until the server has gathered the last replica and says STOP: a worker
    # that ended first would look like one that failed.
    while transport.command() != Command.STOP:
        transport.beat(Activity.WAITING_FOR_STOP)
        time.sleep(WORKER_POLL)
    account.charge("slot_wait")
