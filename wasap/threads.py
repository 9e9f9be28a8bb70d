"""How many threads the kernels run on: the cores this process may use, numba's pool and its threading layer.

numba runs every parallel kernel (``prange``) on a pool of ``NUMBA_NUM_THREADS`` threads
started when numba is imported; each Python thread then chooses how many of them its
kernels use (:func:`set_threads`). Threads beyond the cores take turns on them, and
numba's threads slow down many-fold when they compete for a core, so every count asked
for is capped to :func:`max_threads`, with a :class:`ThreadCountWarning` that says which
limit binds and how to lift it. numba's own threading layer, workqueue, starts every
kernel through the operating system; :func:`set_threads` warns once when numba runs on it.
"""

import collections
import math
import os
import statistics
import warnings

import numba
import numpy as np
from numba import njit, prange

#: numba's own threading layer, the one it falls back to without a TBB or OpenMP runtime.
SLOW_THREADING_LAYER = "workqueue"
_warned_slow_layer = False


class ThreadCountWarning(RuntimeWarning):
    """More kernel threads were asked for than can run at once; fewer are used (the message says why)."""


@njit(parallel=True, cache=True)
def _start_thread_pool(out):
    for i in prange(out.shape[0]):
        out[i] = i


def threading_layer() -> str:
    """numba's threading layer in this process: ``"tbb"``, ``"omp"`` or ``"workqueue"``.

    numba chooses it at the first parallel kernel (TBB, else OpenMP, else its own
    workqueue) and keeps it for the life of the process; this runs a trivial kernel if
    none has run yet. workqueue wakes its threads through the operating system at every
    kernel, even with one thread, so that an empty kernel and a whole training step take
    many times as long as with OpenMP (``tools/thread_scaling.py`` with and without
    ``NUMBA_THREADING_LAYER=workqueue`` measures both).
    """
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run in this process yet
        _start_thread_pool(np.zeros(2, dtype=np.int64))
        return numba.threading_layer()


def _warn_if_slow_threading_layer():
    """Warn, once a process, when numba runs on workqueue, and say what to install."""
    global _warned_slow_layer
    if not _warned_slow_layer and threading_layer() == SLOW_THREADING_LAYER:
        _warned_slow_layer = True
        warnings.warn(
            f"numba runs its threads on its '{SLOW_THREADING_LAYER}' layer (taken when it finds neither an "
            "OpenMP nor a TBB runtime, or when NUMBA_THREADING_LAYER asks for it), which starts every parallel "
            "kernel through the operating system, on one thread as on several: training runs about half as "
            "fast as with OpenMP. Install an OpenMP runtime (Debian/Ubuntu: apt install libgomp1; macOS: "
            "brew install libomp) and start again.", RuntimeWarning, stacklevel=3)


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity where the system has one, else every core."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def max_threads() -> int:
    """The most kernel threads that run at once: one per core this process may use, within numba's pool.

    numba starts a pool of ``NUMBA_NUM_THREADS`` threads when it is imported and can never use more;
    threads beyond the cores would take turns on them, and numba's threads slow down many-fold when
    they compete for a core.
    """
    return max(1, min(available_cores(), numba.config.NUMBA_NUM_THREADS))


def capped_threads(n_threads: int, *, name: str = "threads") -> int:
    """``n_threads`` lowered to :func:`max_threads`, with one :class:`ThreadCountWarning` when it is.

    Parameters
    ----------
    n_threads : int
        Threads asked for, >= 1.
    name : str
        How the caller calls the count, for the warning: ``"threads"`` (shown as ``threads=8``) or a
        flag (``"--threads"``, shown as ``--threads 8``).

    Returns
    -------
    int
        The thread count to use.

    Raises
    ------
    ValueError
        When ``n_threads`` is below 1.
    """
    n_threads = int(n_threads)
    if n_threads < 1:
        raise ValueError(f"{name} must be >= 1, got {n_threads}.")
    limit = max_threads()
    if n_threads > limit:
        warnings.warn(_cap_reason(n_threads, limit, name), ThreadCountWarning, stacklevel=3)
    return min(n_threads, limit)


def _cap_reason(asked, used, name):
    """Why ``asked`` threads became ``used``: which limit binds, and how to lift it without oversubscribing."""
    cores, pool = available_cores(), numba.config.NUMBA_NUM_THREADS
    if pool < cores:
        why = (f"numba was started with NUMBA_NUM_THREADS={pool}, and its pool cannot grow once imported "
               f"(to use up to the {cores} cores this process may run on, set NUMBA_NUM_THREADS={cores} "
               "before starting Python)")
    else:
        why = (f"this process may run on {cores} core(s) (its CPU affinity), and threads beyond the cores "
               "take turns on them, which slows every kernel down many times")
    asked_as = f"{name} {asked}" if name.startswith("-") else f"{name}={asked}"
    return f"{asked_as} asks for more kernel threads than can run at once; using {used}: {why}."


def set_threads(n_threads: int | None) -> int:
    """Set how many threads the kernels called from this thread use.

    numba keeps the count per thread: a thread started later (an evaluation
    thread, say) begins at ``NUMBA_NUM_THREADS`` and must call this itself.

    Parameters
    ----------
    n_threads : int or None
        Threads, >= 1; more than :func:`max_threads` (the cores this process may
        use, within numba's pool) are capped to it, with a :class:`ThreadCountWarning`.
        ``None`` means :func:`max_threads`. On numba's slow workqueue layer
        (:func:`threading_layer`) the first call warns.

    Returns
    -------
    int
        The thread count now in force.

    Raises
    ------
    ValueError
        When ``n_threads`` is below 1.
    """
    n_threads = max_threads() if n_threads is None else capped_threads(n_threads)
    _warn_if_slow_threading_layer()
    numba.set_num_threads(n_threads)
    return n_threads


def get_threads() -> int:
    """Return the number of threads the kernels called from this thread use."""
    return numba.get_num_threads()


def default_threads() -> int:
    """One kernel thread per idle core this process may use, at least one, at most numba's pool.

    numba's threads slow down many-fold when another process competes for
    their cores, so busy cores (by the 1-minute load average) are left out;
    :func:`max_threads` bounds the count by the cores and by
    ``NUMBA_NUM_THREADS``.
    """
    cores = available_cores()
    try:
        busy = int(math.floor(os.getloadavg()[0] + 0.5))
    except OSError:
        busy = 0
    return max(1, min(max_threads(), cores - busy + 1))


#: Steps between two probes of another thread count, at first and at most (the interval doubles each
#: time a probe confirms the count in use, so that a count that loses costs ever less to check again).
PROBE_EVERY, PROBE_EVERY_MAX = 16, 512
#: A count is taken when its steps are faster than the one in use by this fraction at least.
SWITCH_MARGIN = 0.15
#: Steps of a probe: the first wakes the count's threads (they sleep while fewer run), the last is timed.
PROBE_STEPS = 2
#: Latest steps at the count in use whose median is its speed (a median: the system's hiccups pass).
RECENT_STEPS = 15


class ThreadGovernor:
    """Chooses, step by step, the kernel thread count that trains fastest on the machine as it is now.

    numba's OpenMP threads wait for each other at the end of every kernel by spinning. When other
    processes compete for the cores, a thread that waits for a descheduled one spins its time away,
    and two threads can be many times slower than one; on an idle machine they are faster. No count
    chosen once at the start is right for both, so the governor times the steps: it trains at one
    count, keeping the median seconds per sample of its latest steps, and now and then probes a
    neighbouring count (half or double, in turn, within ``1 .. limit``) for :data:`PROBE_STEPS` steps,
    timing the last (the first wakes its threads); it moves to the neighbour when its two latest
    probes were both faster by :data:`SWITCH_MARGIN`. The kernels give the same
    bits whatever the count, so the choice changes the speed only.

    Parameters
    ----------
    limit : int
        The most threads (:func:`max_threads`).
    start : int, optional
        The count to start at (default ``limit``).

    Attributes
    ----------
    steps_at : dict
        ``{threads: steps trained at that count}``.
    """

    def __init__(self, limit: int, start: int | None = None):
        self.limit = max(1, int(limit))
        self.current = min(self.limit, max(1, int(start or self.limit)))
        self.recent = collections.deque(maxlen=RECENT_STEPS)  # seconds per sample at the current count
        self.probed = {}  # threads -> seconds per sample of its latest probes (two at most)
        self.steps_at = {}
        self._interval = PROBE_EVERY
        self._until_probe = PROBE_EVERY
        self._probe_down = True
        self._trial = None
        self._trial_steps = 0

    def _neighbour(self):
        down, up = max(1, self.current // 2), min(self.limit, self.current * 2)
        if down == self.current:
            return up if up != self.current else None
        if up == self.current:
            return down
        self._probe_down = not self._probe_down
        return down if self._probe_down else up

    def threads(self) -> int:
        """The thread count of the next step (set it before the step, then :meth:`record` the step)."""
        if self._trial is None and self.limit > 1 and self.recent:
            self._until_probe -= 1
            if self._until_probe <= 0:
                self._trial, self._trial_steps = self._neighbour(), PROBE_STEPS
        return self._trial or self.current

    def record(self, seconds: float, n_samples: int) -> None:
        """The step just run took ``seconds`` for ``n_samples`` samples."""
        threads, trial = self._trial or self.current, self._trial
        self.steps_at[threads] = self.steps_at.get(threads, 0) + 1
        rate = seconds / max(1, n_samples)
        if trial is None:
            self.recent.append(rate)
            return
        self._trial_steps -= 1
        if self._trial_steps > 0:
            return
        self._trial = None
        # Two probes must agree: one step can be lucky.
        latest = self.probed[trial] = (self.probed.get(trial, ()) + (rate,))[-2:]
        if len(latest) == 2 and max(latest) < (1 - SWITCH_MARGIN) * statistics.median(self.recent):
            self.current, self.probed = trial, {}
            self.recent = collections.deque(latest, maxlen=RECENT_STEPS)
            self._interval = PROBE_EVERY
        else:
            self._interval = min(PROBE_EVERY_MAX, 2 * self._interval)
        self._until_probe = self._interval

    def summary(self) -> dict:
        """``{"threads_in_use": int, "steps_at": {threads: steps}}``, JSON-ready."""
        return {"threads_in_use": self.current, "steps_at": {str(k): v for k, v in sorted(self.steps_at.items())}}


def default_governor(config, start: int) -> ThreadGovernor | None:
    """The :class:`ThreadGovernor` of a run whose ``config.threads`` is None (the default), from ``start``."""
    return ThreadGovernor(max_threads(), start=start) if config.threads is None else None
