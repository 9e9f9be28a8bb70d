"""What the parameter server and the workers say to each other: command words, heartbeats, messages.

Everything here is transport-neutral: the shared-memory transport
(:mod:`.shm_transport`) carries the messages through pipes and the command
word and heartbeats in shared blocks; another transport carries the same
values its own way. The algorithm (:mod:`.trainer`, :mod:`.server`,
:mod:`.worker`) matches messages by type and reads them by field.

Server to workers: one :class:`Command` word that every worker polls.

Workers to server, one message per event:

- :class:`Ready`: the worker has loaded its kernels and waits for RUN;
- :class:`GradientPushed`: a gradient slot holds a gradient for the server to apply (all of it in the
  synchronous variant, in the asynchronous one the layers the worker could not apply itself);
- :class:`StepsApplied`: a group of gradients the worker applied to every layer itself (their slots
  are free again; the server only counts them);
- :class:`ReplicaPublished`: phase two, the worker's replica after a local epoch is ready to gather;
- :class:`Failed`: the worker raised; the run stops.

A worker that ends normally sends nothing: it ends only after the server said STOP, and the server
learns of any other end from the process itself (:meth:`~.transport.ServerTransport.check_workers`).

Messages are NamedTuples: the per-step ones are sent thousands of times a second, and a tuple
subclass pickles as compactly as a tuple.
"""

import enum
from typing import NamedTuple, Union


class Command(enum.IntEnum):
    """The command word the server sets and every worker polls."""

    #: Workers are starting; not all of them are ready yet.
    WAIT = 0
    #: Phase one: compute (and apply) gradients.
    RUN = 1
    #: Phase two: train a replica each.
    PHASE_TWO = 2
    #: Stop now (the run is over, or stopped).
    STOP = 3


class Activity(enum.IntEnum):
    """What a worker's heartbeat says it is doing; :meth:`describe` gives the words, with the beat's detail."""

    STARTING = 0
    WAITING_TO_START = 1
    SLOT_WAIT = 2
    LOCK_WAIT = 3
    HOLDING_LOCK = 4
    COMPUTING = 5
    TRAINING_REPLICA = 6
    PUBLISHING = 7
    EVOLVING_REPLICA = 8
    WAITING_FOR_STOP = 9

    def describe(self, detail: int = 0) -> str:
        """``"holding layer 2's lock"``: the words for this activity, ``detail`` a layer or a local epoch."""
        return _ACTIVITY_WORDS[self].format(detail)


_ACTIVITY_WORDS = {
    Activity.STARTING: "starting",
    Activity.WAITING_TO_START: "waiting for the run to start",
    Activity.SLOT_WAIT: "waiting for a gradient slot (the server's go)",
    Activity.LOCK_WAIT: "waiting for layer {}'s lock",
    Activity.HOLDING_LOCK: "holding layer {}'s lock",
    Activity.COMPUTING: "computing a gradient",
    Activity.TRAINING_REPLICA: "training its replica (local epoch {})",
    Activity.PUBLISHING: "publishing its replica (local epoch {})",
    Activity.EVOLVING_REPLICA: "evolving its replica's topology",
    Activity.WAITING_FOR_STOP: "waiting for the server to stop",
}


def describe_activity(activity: int, detail: int = 0) -> str:
    """The words for a heartbeat's raw ``(activity, detail)`` values, also for a value no :class:`Activity` has."""
    try:
        return Activity(activity).describe(detail)
    except ValueError:
        return f"activity {activity}"


class Ready(NamedTuple):
    """The worker is ready: its kernels are loaded and its heartbeat runs."""

    worker: int
    pid: int


class GradientPushed(NamedTuple):
    """Gradient slot ``slot`` of ``worker`` holds a gradient computed on the topology ``versions``.

    ``applied[l]``: the worker already applied layer ``l``'s part to the served
    weights (:meth:`~.transport.WorkerTransport.apply_gradient`); the server
    applies the others, remapped where their topology changed since. The slot
    stays the server's until it releases it.
    """

    worker: int
    slot: int
    versions: tuple
    #: Mean loss of the batch.
    loss: float
    n_correct: int
    n_samples: int
    applied: tuple


class StepsApplied(NamedTuple):
    """``steps`` gradients that ``worker`` applied to every layer itself and whose slots it released."""

    worker: int
    steps: int
    #: Sum over the steps of each batch's mean loss times its samples.
    loss_sum: float
    n_correct: int
    n_samples: int


class ReplicaPublished(NamedTuple):
    """Phase two: ``worker``'s replica after local epoch ``epoch`` is published, for the server to gather."""

    worker: int
    epoch: int
    #: Mean training loss of the local epoch (NaN when the replica diverged).
    loss: float
    n_correct: int
    n_samples: int


class Failed(NamedTuple):
    """``worker`` raised an error; ``traceback`` is its formatted traceback."""

    worker: int
    traceback: str


#: Any message a worker sends to the server.
WorkerMessage = Union[Ready, GradientPushed, StepsApplied, ReplicaPublished, Failed]
