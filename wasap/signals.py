"""Stop requests: Ctrl-C (SIGINT) and SIGTERM mean the same thing to a training run.

A first signal asks the run to stop at the next consistent point (after the
batch in progress), so that the checkpoint written there continues the run
exactly. A second stops at once, with the model as it is. While the outputs
are written a first signal is only announced, so that the files are whole; a
further one abandons them, and the checkpoint on disk is what stays.
"""

import contextlib
import signal
import threading

#: The signals a run treats as "stop and keep what was trained".
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: The exit statuses of the command line after a stop: 128 + the signal's number, as shells report it.
EXIT_STATUS = {"interrupted": 128 + signal.SIGINT, "terminated": 128 + signal.SIGTERM}


class StopRequested(KeyboardInterrupt):
    """A stop signal arrived.

    Attributes
    ----------
    signum : int
        SIGINT or SIGTERM.
    at_safe_point : bool
        Raised between two batches (by :meth:`StopSignals.check`): the model
        and the trainer's state agree, so a checkpoint taken now is exact.
    """

    def __init__(self, signum=signal.SIGINT, *, at_safe_point=False):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.at_safe_point = at_safe_point


def stop_reason(error):
    """``"terminated"`` for SIGTERM, ``"interrupted"`` for Ctrl-C or any other KeyboardInterrupt."""
    return "terminated" if getattr(error, "signum", None) == signal.SIGTERM else "interrupted"


def describe_stop(reason):
    """The line a run logs when it stops on a signal (``reason`` from :func:`stop_reason`)."""
    return f"{'Terminated (SIGTERM)' if reason == 'terminated' else 'Interrupted'}: keeping the model trained so far."


class StopSignals:
    """SIGINT and SIGTERM handling for the duration of a run.

    Only the main thread can receive signals; elsewhere, or when the embedding
    program installed handlers of its own (a job system, a notebook), this
    changes nothing and Ctrl-C raises a plain KeyboardInterrupt as usual.

    Parameters
    ----------
    log : callable, optional
        Receives one line when a signal is noted.

    Examples
    --------
    >>> with StopSignals() as stop:  # doctest: +SKIP
    ...     for batch in batches:
    ...         train(batch)
    ...         stop.check()  # raises StopRequested once a signal came
    ...     with stop.deferred():
    ...         write_outputs()
    """

    def __init__(self, log=None):
        self.log = log or (lambda line: None)
        self.requested = None
        self._previous = {}
        self._deferring = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                current = signal.getsignal(signum)
                if current in (signal.SIG_DFL, signal.default_int_handler):
                    self._previous[signum] = current
                    signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        return False

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested is None:
            self.requested = signum
            if self._deferring:
                self.log(f"{name}: writing the outputs first; send it again to abandon them "
                         "(the last checkpoint stays).")
            else:
                self.log(f"{name}: stopping after the batch in progress and keeping the model; "
                         "send it again to stop at once.")
            return
        raise StopRequested(signum)

    def check(self):
        """Raise :class:`StopRequested` (at a safe point) if a stop signal has arrived."""
        if self.requested is not None and not self._deferring:
            raise StopRequested(self.requested, at_safe_point=True)

    @contextlib.contextmanager
    def deferred(self):
        """Within this block a first signal is only noted: the outputs being written stay whole."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
