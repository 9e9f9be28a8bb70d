"""A run's output folder: metrics.jsonl, summary.json and model.npz.

The key names are a contract (docs/guide.md, "The output folder"): tools and benchmarks
read any run through them.
"""

import datetime
import fcntl
import json
import math
import os
import resource
import sys
import time

from .checkpoint import CHECKPOINT_FILE
from .files import atomic_file, is_temporary


class OutputDirError(ValueError):
    """The output folder cannot be used as asked."""


def peak_rss_bytes():
    """Peak resident memory of this process and its finished children, in bytes.

    This process's own peak is ``VmHWM`` where /proc has it: ``ru_maxrss``
    survives fork and exec, so a process started by a large parent would
    report the parent's peak.
    """
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    own = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return int(max(own, children))


def write_json_atomic(path, value):
    """Write JSON so that readers see the old file or the new one, never half of one."""
    with atomic_file(path, "w") as stream:
        json.dump(_strict(value), stream, indent=2, default=_jsonable, allow_nan=False)
        stream.write("\n")


def _strict(value):
    """NaN and infinities as null: strict JSON readers (jq, JavaScript) reject them."""
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return value


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


#: The files a run writes into its output folder; ``overwrite`` replaces these and leaves others alone.
OUTPUT_FILES = ("metrics.jsonl", "summary.json", "model.npz", "profile.json", CHECKPOINT_FILE)


class OutputWriteError(RuntimeError):
    """Writing the output folder failed (disk full, folder gone, no permission); the message says what was kept."""


def prepare_output_dir(out_dir, *, overwrite=False, resume=False):
    """Create and lock ``out_dir`` for one run; returns the lock (an open descriptor of the folder).

    A folder holding anything but the temporary files of a killed write is
    refused unless ``overwrite`` (which replaces a run's :data:`OUTPUT_FILES`
    and keeps other files) or ``resume`` (which continues the run in it).
    While one run holds the lock, a second run into the same folder is refused.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputDirError(f"--out {out_dir!r} exists and is not a folder; give a folder path.")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise OutputDirError(f"cannot create the output folder {out_dir!r}: {error.strerror}.") from error
    lock = _lock_folder(out_dir)
    try:
        names = [name for name in os.listdir(out_dir) if not is_temporary(name)]
        if names and not (overwrite or resume):
            raise OutputDirError(
                f"--out {out_dir!r} exists and is not empty; choose a new folder, pass --resume {out_dir} to "
                f"continue the run in it, or --overwrite to replace its run ({', '.join(OUTPUT_FILES)}; other "
                "files are left alone)."
            )
        for name in os.listdir(out_dir):
            if is_temporary(name) or (overwrite and not resume and name in OUTPUT_FILES):
                os.unlink(os.path.join(out_dir, name))
    except BaseException:
        os.close(lock)
        raise
    return lock


def _lock_folder(out_dir):
    """An exclusive lock on the folder itself (flock on its descriptor: no lock file to leave behind)."""
    descriptor = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise OutputDirError(f"another wasap run is writing to {out_dir!r} right now; wait for it to end or "
                             "choose another folder.") from None
    except OSError:
        pass  # file systems without flock: no protection, but no reason to refuse the run
    return descriptor


def run_facts(data=None, command_line=None):
    """What summary.json records about how a run was started: data set, whether its features were standardised
    (what ``--resume`` loads them as), wasap version, time, command line."""
    from . import __version__

    return dict(dataset=None if data is None else (getattr(data, "description", "") or getattr(data, "name", None)),
                standardized=None if data is None else getattr(data, "feature_scale", None) is not None,
                wasap_version=__version__,
                started_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command_line=command_line)


class RunRecorder:
    """Collects a run's per-epoch metrics and writes its output folder.

    Parameters
    ----------
    out_dir : str or None
        None keeps everything in memory.
    config : wasap.config.TrainConfig
    overwrite : bool
        Replace the run in a non-empty ``out_dir``.
    resume : dict, optional
        The state of the checkpoint this run continues (:func:`wasap.checkpoint.load_checkpoint`):
        its metrics become this run's first epochs, and metrics.jsonl is rewritten to hold each once.
    facts : dict, optional
        Added to summary.json (:func:`run_facts`).

    The folder stays locked against other runs until :meth:`close`.
    """

    def __init__(self, out_dir, config, *, overwrite=False, resume=None, facts=None):
        self.out_dir = out_dir
        self.config = config
        self.history = [dict(record) for record in resume["history"]] if resume else []
        self.extra = dict(facts or {})
        self.resumed_from = resume["epoch"] if resume else None
        self._elapsed_before = resume["elapsed_seconds"] if resume else 0.0
        self._lock = None
        if out_dir is not None:
            self._lock = prepare_output_dir(out_dir, overwrite=overwrite, resume=resume is not None)
            if resume:
                self._write(self.path("metrics.jsonl"), "w",
                            "".join(_json_line(record) for record in self.history), atomic=True)
        self._started = time.perf_counter()
        self.nnz_start = resume["nnz_start"] if resume else None
        self.init_seconds = None

    def path(self, name):
        return None if self.out_dir is None else os.path.join(self.out_dir, name)

    def start(self, model, *, init_seconds=None):
        """Note the model's size before training (and how long building it took)."""
        if self.nnz_start is None:
            self.nnz_start = model.nnz_per_layer()
        if init_seconds is not None:
            self.init_seconds = init_seconds

    def elapsed_seconds(self):
        """Seconds of this run so far, those before the checkpoint it resumed from included."""
        return self._elapsed_before + time.perf_counter() - self._started

    def epoch(self, **fields):
        """Record one epoch (the metrics.jsonl keys) and append it to metrics.jsonl."""
        record = {key: (value.tolist() if hasattr(value, "tolist") else value) for key, value in fields.items()}
        self.history.append(record)
        if self.out_dir is not None:
            self._write(self.path("metrics.jsonl"), "a", _json_line(record))
        return record

    @staticmethod
    def describe(record):
        """One line of text for an epoch record."""
        parts = [f"epoch {record['epoch']}", f"train loss {record['train_loss']:.4f}"]
        accuracy = record.get("test_accuracy")
        if accuracy is not None and accuracy == accuracy:
            parts.append(f"test accuracy {100 * accuracy:.2f}%")
        else:
            parts.append(f"test loss {record['test_loss']:.4f}")
        parts.append(f"nnz {sum(record['nnz'])}")
        parts.append(f"{record['train_seconds']:.2f}s")
        return ", ".join(parts)

    def summary(self, model, stop_reason):
        """The summary.json object."""
        accuracies = [r["test_accuracy"] for r in self.history if r.get("test_accuracy") == r.get("test_accuracy")]
        return dict(
            config=self.config.to_dict(),
            best_test_accuracy=max(accuracies) if accuracies else None,
            final_test_accuracy=accuracies[-1] if accuracies else None,
            final_test_loss=self.history[-1]["test_loss"] if self.history else None,
            epochs_completed=len(self.history),
            stopped=stop_reason,
            resumed_from=self.resumed_from,
            nnz_start=self.nnz_start,
            nnz_end=model.nnz_per_layer(),
            init_seconds=self.init_seconds,
            total_seconds=self.elapsed_seconds(),
            peak_rss_bytes=peak_rss_bytes(),
            **self.extra,
        )

    def finish(self, model, stop_reason, *, classes=None, preprocessing=None):
        """Write summary.json and model.npz; return the summary with ``history`` added.

        ``classes`` and ``preprocessing`` (:class:`wasap.preprocessing.Preprocessing`) go into
        model.npz, so that the model can predict raw rows (:meth:`wasap.model.SparseMLP.predict`).

        Raises
        ------
        OutputWriteError
            When a file cannot be written; the message says what the folder still holds.
        """
        summary = self.summary(model, stop_reason)
        if self.out_dir is not None:
            self.guarded_write(lambda: model.save(
                self.path("model.npz"), metadata=dict(config=self.config.to_dict(), stopped=stop_reason),
                classes=classes, preprocessing=preprocessing), self.path("model.npz"))
            self.guarded_write(lambda: write_json_atomic(self.path("summary.json"), summary),
                             self.path("summary.json"))
        return dict(summary, history=self.history)

    def write_checkpoint(self, checkpoints, model, trainer_state, *, command_line=None, classes=None):
        """Write a checkpoint of ``model`` with the trainer's state and this run's metrics so far.

        Parameters
        ----------
        checkpoints : wasap.checkpoint.Checkpointer
        model : SparseMLP
        trainer_state : dict
            JSON-ready: what the trainer needs to go on (:meth:`wasap.train.SequentialTrainer.state_dict`,
            or the parallel server's state).
        command_line : list of str, optional
        classes : array-like, optional

        Raises
        ------
        OutputWriteError
            When the file cannot be written.
        """
        state = dict(epoch=self.history[-1]["epoch"] if self.history else 0, trainer=trainer_state,
                     history=self.history, nnz_start=self.nnz_start, elapsed_seconds=self.elapsed_seconds(),
                     config=self.config.to_dict(),
                     run=dict(command_line=command_line, standardized=self.extra.get("standardized")))
        self.guarded_write(lambda: checkpoints.write(model, state, classes=classes), checkpoints.path)

    def close(self):
        """Release the output folder's lock."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _write(self, path, mode, text, *, atomic=False):
        def write():
            if atomic:
                with atomic_file(path, mode) as stream:
                    stream.write(text)
            else:
                with open(path, mode) as stream:
                    stream.write(text)
        self.guarded_write(write, path)

    def guarded_write(self, write, path):
        """Run ``write``; turn an OSError into an :class:`OutputWriteError` that says what was kept."""
        try:
            write()
        except OSError as error:
            raise OutputWriteError(f"cannot write {path}: {error.strerror or error}. {self.kept()}") from error

    def kept(self):
        """One sentence on what the output folder holds that a user can continue from."""
        checkpoint = self.path(CHECKPOINT_FILE)
        if checkpoint is not None and os.path.exists(checkpoint):
            return (f"The last checkpoint, {checkpoint}, is intact: free some space and continue with "
                    f"`python -m wasap.run --resume {self.out_dir}`.")
        return "No checkpoint had been written yet."


def _json_line(record):
    return json.dumps(_strict(record), allow_nan=False) + "\n"
