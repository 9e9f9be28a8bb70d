"""Per-worker profiling of a parallel run: CPU over time, memory, and where the time went.

Two sources, merged into ``profile.json``:

- :class:`TimeAccount`, inside each worker: the worker's wall time split into
  categories with ``time.perf_counter`` (every second is charged to exactly one
  category, so the categories add up to the wall time). It writes into a small
  float64 table the main process can read even after the worker died.
- :class:`CpuSampler`, a thread in the main process: every ``interval`` seconds
  each process's CPU utilisation, resident memory (RSS) and unique memory (USS,
  what the process would give back if it ended) from psutil.

:func:`format_profile_table` turns a profile into a short text table;
``tools/plot_profile.py`` draws it.
"""

import threading
import time

import numpy as np

#: Where a worker's time goes. compute: forward/backward kernels (and local
#: training in phase two); lock_wait: waiting for a layer's lock; slot_wait:
#: waiting for a free gradient slot, for the server's go, or for work;
#: data: copying weights in, gathering batches, publishing replicas;
#: other: everything else (Python bookkeeping, queue puts).
CATEGORIES = ("compute", "lock_wait", "slot_wait", "data", "other")
PHASES = ("phase1", "phase2")
#: Table columns: wall seconds per category, then CPU seconds of the process per category (what the
#: worker got of a core while in it: on a busy machine wall time includes waiting for the CPU), then
#: the wall seconds spent holding a layer's lock and those spent inside MPI calls (both part of the
#: categories' time, not categories of their own: the time other workers may have to wait, and what
#: the MPI transport costs), then the count of gradients (phase 1) or local epochs (phase 2).
TABLE_COLUMNS = 2 * len(CATEGORIES) + 3
_CPU = len(CATEGORIES)
_LOCK_HELD = 2 * len(CATEGORIES)
_IN_MPI = _LOCK_HELD + 1


def time_table_shape(n_workers):
    """Shape of the shared table of every worker's accounts: ``(workers, phases, TABLE_COLUMNS)``."""
    return (n_workers, len(PHASES), TABLE_COLUMNS)


class TimeAccount:
    """Charges a worker's wall time to categories.

    Parameters
    ----------
    table : (phases, TABLE_COLUMNS) float64
        This worker's row of the shared table (written in place).

    Examples
    --------
    >>> account = TimeAccount(np.zeros((2, TABLE_COLUMNS)))
    >>> _ = account.charge("compute")   # the time since the last charge was computing
    """

    def __init__(self, table):
        self.table = table
        self.phase = 0
        self._mark = time.perf_counter()
        self._cpu_mark = time.process_time()
        self._index = {name: i for i, name in enumerate(CATEGORIES)}

    def set_phase(self, phase):
        """Charge the time so far to 'other' and switch to phase ``phase`` (1 or 2)."""
        self.charge("other")
        self.phase = phase - 1

    def charge(self, category):
        """Add the time since the previous charge to ``category``; returns now."""
        now = time.perf_counter()
        cpu = time.process_time()
        index = self._index[category]
        self.table[self.phase, index] += now - self._mark
        self.table[self.phase, _CPU + index] += cpu - self._cpu_mark
        self._mark = now
        self._cpu_mark = cpu
        return now

    def count(self, n=1):
        """Count gradients (phase one) or local epochs (phase two)."""
        self.table[self.phase, -1] += n

    def held_lock(self, seconds):
        """Add ``seconds`` during which this worker held a layer's lock."""
        self.table[self.phase, _LOCK_HELD] += seconds

    def in_mpi(self, seconds):
        """Add ``seconds`` this worker spent inside MPI calls (the MPI transport)."""
        self.table[self.phase, _IN_MPI] += seconds


class CpuSampler:
    """Samples CPU utilisation and memory of a set of processes from a background thread.

    Parameters
    ----------
    processes : dict of str -> int
        Name (``"server"``, ``"worker 0"``...) to pid.
    interval : float
        Seconds between samples (USS: every fourth sample).
    phase : callable, optional
        Returns the current phase (recorded with each sample).
    reported : dict of str -> callable, optional
        Processes that report their own use (on other machines): name to a callable that returns
        ``(cpu_percent, rss_bytes)`` as last reported, or None; sampled with the others, without USS.
    """

    def __init__(self, processes, *, interval=0.5, phase=None, reported=None):
        import psutil

        self.interval = float(interval)
        self._phase = phase or (lambda: 0)
        self._handles = {}
        for name, pid in processes.items():
            try:
                handle = psutil.Process(pid)
                handle.cpu_percent(None)  # the first call only primes the counter
                self._handles[name] = handle
            except psutil.Error:
                pass
        self.times = []
        self.phases = []
        self.series = {name: dict(pid=handle.pid, cpu_percent=[], rss=[], uss=[])
                       for name, handle in self._handles.items()}
        self._reported = dict(reported or {})
        self.series.update({name: dict(pid=None, cpu_percent=[], rss=[], uss=[]) for name in self._reported})
        self._uss_ok = True
        self._stop = threading.Event()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="wasap-cpu-sampler", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        """Stop sampling (takes at most one interval)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5 * self.interval + 1)

    def _run(self):
        import psutil

        while not self._stop.wait(self.interval):
            self.times.append(round(time.perf_counter() - self._started, 3))
            self.phases.append(int(self._phase()))
            for name, handle in self._handles.items():
                series = self.series[name]
                cpu = rss = uss = None
                try:
                    cpu = handle.cpu_percent(None)
                    # USS walks the process's page map (a few ms with a large shared block mapped):
                    # every fourth sample keeps the sampler's own CPU negligible.
                    if self._uss_ok and len(self.times) % 4 == 1:
                        try:
                            info = handle.memory_full_info()
                            rss, uss = info.rss, info.uss
                        except psutil.AccessDenied:
                            self._uss_ok = False
                    if rss is None:
                        rss = handle.memory_info().rss
                except psutil.Error:
                    pass  # the process has ended: leave gaps (None)
                series["cpu_percent"].append(cpu)
                series["rss"].append(rss)
                series["uss"].append(uss)
            for name, read in self._reported.items():
                try:
                    cpu, rss = read() or (None, None)
                except Exception:  # the run is ending: leave a gap, as for a process that ended
                    cpu = rss = None
                series = self.series[name]
                series["cpu_percent"].append(cpu)
                series["rss"].append(rss)
                series["uss"].append(None)


def worker_breakdown(table):
    """Seconds per category of one worker.

    Parameters
    ----------
    table : (phases, TABLE_COLUMNS) float64

    Returns
    -------
    dict
        ``{"phase1": {"compute": s, ..., "wall": s, "cpu": {"compute": s, ...}, "cpu_total": s,
        "count": n, "lock_held": s, "in_mpi": s, "busy_fraction": f, "cpu_share": f}, "phase2": {...}}``:
        ``busy_fraction`` is the share of the wall time spent computing, ``cpu_share`` the CPU time the
        process got over its wall time (below 1 when other processes compete for the cores), ``lock_held``
        the wall time it held layer locks and ``in_mpi`` the wall time inside MPI calls (0 over shared
        memory), both within the categories' time.
    """
    out = {}
    for p, phase in enumerate(PHASES):
        row = {name: float(table[p, i]) for i, name in enumerate(CATEGORIES)}
        wall = float(sum(row.values()))
        row["wall"] = wall
        row["cpu"] = {name: float(table[p, _CPU + i]) for i, name in enumerate(CATEGORIES)}
        row["cpu_total"] = float(sum(row["cpu"].values()))
        row["count"] = int(table[p, -1])
        row["lock_held"] = float(table[p, _LOCK_HELD])
        row["in_mpi"] = float(table[p, _IN_MPI])
        row["busy_fraction"] = row["compute"] / wall if wall > 0 else None
        row["cpu_share"] = row["cpu_total"] / wall if wall > 0 else None
        out[phase] = row
    return out


def build_profile(sampler, tables, *, extra=None):
    """The profile.json object.

    Parameters
    ----------
    sampler : CpuSampler or None
    tables : (workers, phases, TABLE_COLUMNS) float64
        Every worker's time accounts.
    extra : dict, optional
        Server and run facts (updates per second, lock hold times, shared bytes...).

    Returns
    -------
    dict
        ``interval_s``, ``samples`` (``t``, ``phase`` and per process ``cpu_percent``/``rss``/``uss``),
        ``time_breakdown`` (per worker, per phase), ``summary`` (per process: mean CPU % in each phase,
        peak RSS and USS, busy fraction) and whatever ``extra`` holds.
    """
    breakdown = {f"worker {w}": worker_breakdown(tables[w]) for w in range(tables.shape[0])}
    profile = dict(categories=list(CATEGORIES), time_breakdown=breakdown)
    summary = {}
    if sampler is not None:
        profile["interval_s"] = sampler.interval
        profile["samples"] = dict(t=sampler.times, phase=sampler.phases, processes=sampler.series)
        phases = np.asarray(sampler.phases)
        for name, series in sampler.series.items():
            entry = dict(pid=series["pid"])
            cpu = np.array([np.nan if c is None else c for c in series["cpu_percent"]], dtype=float)
            for p, phase in enumerate(PHASES, start=1):
                chosen = cpu[phases == p] if cpu.shape == phases.shape else cpu[:0]
                chosen = chosen[np.isfinite(chosen)]
                entry[f"mean_cpu_percent_{phase}"] = float(chosen.mean()) if chosen.size else None
            entry["peak_rss_bytes"] = max((v for v in series["rss"] if v is not None), default=None)
            entry["peak_uss_bytes"] = max((v for v in series["uss"] if v is not None), default=None)
            summary[name] = entry
    for name, phases_row in breakdown.items():
        entry = summary.setdefault(name, {})
        for phase, row in phases_row.items():
            wall, cpu = row["wall"], row["cpu_total"]
            # busy: computing / wall; wait: starved by the server (lock, slot); cpu_share: the share of a
            # core the OS gave the worker; compute_share_of_cpu: what of that CPU went into the kernels.
            entry[f"busy_fraction_{phase}"] = row["busy_fraction"]
            entry[f"wait_fraction_{phase}"] = (row["lock_wait"] + row["slot_wait"]) / wall if wall > 0 else None
            entry[f"cpu_share_{phase}"] = row["cpu_share"]
            entry[f"compute_share_of_cpu_{phase}"] = row["cpu"]["compute"] / cpu if cpu > 0 else None
    profile["summary"] = summary
    profile.update(extra or {})
    return profile


def write_profile(path, profile):
    """Write ``profile`` as JSON to ``path``."""
    from .records import write_json_atomic

    write_json_atomic(path, profile)


def format_profile_table(profile):
    """A short text table of a profile: per worker and phase, where the time went; per process, CPU and memory.

    Parameters
    ----------
    profile : dict
        As built by :func:`build_profile` (or read from profile.json).

    Returns
    -------
    str
    """
    lines = []
    header = f"{'':10} {'phase':6} {'wall s':>7} {'busy':>6} {'wait':>6} {'cpu':>5} " + \
        " ".join(f"{c:>9}" for c in CATEGORIES) + f" {'count':>7}"
    lines.append("where the time went (wall seconds; busy = compute / wall; wait = (lock + slot waits) / wall; "
                 "cpu = CPU time the process got / wall)")
    lines.append(header)
    for name, phases in profile.get("time_breakdown", {}).items():
        for phase, row in phases.items():
            if row["wall"] <= 0:
                continue
            busy = "" if row["busy_fraction"] is None else f"{100 * row['busy_fraction']:5.1f}%"
            share = "" if row.get("cpu_share") is None else f"{100 * row['cpu_share']:4.0f}%"
            wait = f"{100 * (row['lock_wait'] + row['slot_wait']) / row['wall']:5.1f}%"
            lines.append(f"{name:10} {phase[-1]:>6} {row['wall']:7.2f} {busy:>6} {wait:>6} {share:>5} "
                         + " ".join(f"{row[c]:9.3f}" for c in CATEGORIES) + f" {row['count']:7d}")
    summary = profile.get("summary", {})
    if any("peak_rss_bytes" in entry for entry in summary.values()):
        lines.append("")
        lines.append(f"{'process':10} {'cpu% p1':>8} {'cpu% p2':>8} {'peak RSS':>10} {'peak USS':>10}")
        for name, entry in summary.items():
            if "peak_rss_bytes" not in entry:
                continue
            lines.append(f"{name:10} {_whole(entry.get('mean_cpu_percent_phase1')):>8} "
                         f"{_whole(entry.get('mean_cpu_percent_phase2')):>8} {_mib(entry.get('peak_rss_bytes')):>10} "
                         f"{_mib(entry.get('peak_uss_bytes')):>10}")
    server = profile.get("server")
    if server:
        # A run stopped before any update or training time has None for the rates and means.
        lines.append("")
        lines.append(
            f"server: {server.get('updates', 0)} updates, {_whole(server.get('updates_per_second'))}/s while "
            f"training; apply {_micro(server.get('apply_seconds_mean'))} us each, lock held "
            f"{_micro(server.get('lock_hold_seconds_mean'))} us per layer; stale {server.get('stale', 0)}, "
            f"dropped {server.get('dropped', 0)}"
        )
    if "shared_bytes" in profile:
        lines.append(f"shared memory: {_mib(profile['shared_bytes'])}")
    return "\n".join(lines)


def _whole(value):
    return "-" if value is None else f"{value:.0f}"


def _micro(seconds):
    return "-" if seconds is None else f"{1e6 * seconds:.0f}"


def _mib(value):
    return "-" if value is None else f"{value / (1 << 20):.1f}M"
