"""Checkpoints: everything an exact continuation of a run needs, in one file of its output folder.

A checkpoint is a model file (:meth:`wasap.model.SparseMLP.save`, momentum
included) whose metadata holds the run's state: the epochs completed, the
trainer's counters and random streams (:meth:`wasap.train.SequentialTrainer.state_dict`,
with the position inside an epoch when it was taken mid-epoch), the metrics
so far, and what the run was started with. It is written atomically, so a
kill at any moment leaves the previous checkpoint or the new one.

:class:`Checkpointer` decides when to write: after an epoch, unless the last
checkpoint is so recent that writing would take more than about
``1 / OVERHEAD_FACTOR`` of the training time; inside an epoch once the last
checkpoint is older than ``every`` seconds.
"""

import json
import os
import time

import numpy as np

from .model import SparseMLP

CHECKPOINT_FILE = "checkpoint.npz"
CHECKPOINT_FORMAT = "wasap-checkpoint-1"
#: Checkpoints may take at most about this fraction's inverse of a run's time.
OVERHEAD_FACTOR = 20.0
#: Default seconds between checkpoints inside an epoch (long epochs of very large networks).
DEFAULT_EVERY = 600.0
_STATE_KEYS = ("epoch", "trainer", "history", "nnz_start", "elapsed_seconds", "config")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not match the run it should continue."""


def save_checkpoint(path, model, state, *, classes=None):
    """Write ``model`` (with its momentum) and the run's ``state`` (a JSON-ready dict) to ``path``."""
    model.save(path, metadata={"checkpoint": dict(state, format=CHECKPOINT_FORMAT)}, classes=classes,
               include_momentum=True)


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    model : SparseMLP
        With its momentum buffers.
    state : dict
        The run's state (keys ``epoch``, ``trainer``, ``history``, ``nnz_start``,
        ``elapsed_seconds``, ``config``, and ``run`` when the command line wrote it).

    Raises
    ------
    CheckpointError
        No such file, an unreadable or corrupt one, or a model file that is not a checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"there is no checkpoint at {path!r}; a run writes {CHECKPOINT_FILE} into its output folder "
            "after its first epoch (or on a stop), so this run stopped before that or the folder is not a run's."
        )
    try:
        model = SparseMLP.load(path)
    except ValueError as error:
        raise CheckpointError(f"the checkpoint {path!r} cannot be read: {error}") from error
    state = model.metadata.get("checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path!r} is a model file, not a {CHECKPOINT_FORMAT} checkpoint.")
    missing = [key for key in _STATE_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"the checkpoint {path!r} lacks {missing}; it cannot continue a run.")
    return model, state


def peek_checkpoint_config(path):
    """The config a checkpoint's run was started with, read from its header alone (no layer is loaded).

    Returns
    -------
    dict or None
        None for a missing, unreadable or foreign file: :func:`load_checkpoint` says what is wrong with it.
    """
    try:
        with np.load(os.fspath(path), allow_pickle=False) as archive:
            header = json.loads(str(archive["header"]))
        config = header["metadata"]["checkpoint"]["config"]
    except Exception:
        return None
    return config if isinstance(config, dict) else None


class Checkpointer:
    """When and where a run writes its checkpoints.

    Parameters
    ----------
    path : str
        The checkpoint file.
    every : float
        Seconds between checkpoints inside an epoch; 0 writes one after every
        batch and every epoch (tests, or data too precious to lose a batch of).
    clock : callable
        Monotonic seconds.
    """

    def __init__(self, path, every=DEFAULT_EVERY, *, clock=time.monotonic):
        if not every >= 0:
            raise ValueError(f"checkpoint_every must be >= 0 seconds, got {every}.")
        self.path = path
        self.every = float(every)
        self.clock = clock
        self.last_written = clock()
        self.write_seconds = 0.0
        self.epoch = None  # the completed epochs the file on disk holds

    def due(self, *, mid_epoch):
        """Whether a checkpoint should be written now (after a batch, or after an epoch)."""
        if self.every == 0:
            return True
        age = self.clock() - self.last_written
        affordable = OVERHEAD_FACTOR * self.write_seconds
        return age >= (max(self.every, affordable) if mid_epoch else min(self.every, affordable))

    def write(self, model, state, *, classes=None):
        """Write a checkpoint of ``model`` and ``state`` and time it."""
        started = self.clock()
        save_checkpoint(self.path, model, state, classes=classes)
        self.last_written = self.clock()
        self.write_seconds = self.last_written - started
        self.epoch = state["epoch"]
