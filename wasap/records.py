"""A run's output folder: metrics.jsonl, summary.json and model.npz.

The key names are a contract (README, "Output files"): tools and benchmarks
read any run through them.
"""

import json
import math
import os
import resource
import sys
import time

from .files import atomic_file


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


def prepare_output_dir(out_dir, *, overwrite):
    """Create ``out_dir``; refuse a non-empty one unless ``overwrite``."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputDirError(f"--out {out_dir!r} exists and is not a folder; give a folder path.")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise OutputDirError(
            f"--out {out_dir!r} exists and is not empty; choose a new folder, or pass --overwrite to replace "
            "the run in it."
        )
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise OutputDirError(f"cannot create the output folder {out_dir!r}: {error.strerror}.") from error
    if overwrite:
        for name in ("metrics.jsonl", "summary.json", "model.npz", "profile.json"):
            if os.path.exists(os.path.join(out_dir, name)):
                os.unlink(os.path.join(out_dir, name))


class RunRecorder:
    """Collects a run's per-epoch metrics and writes its output folder.

    Parameters
    ----------
    out_dir : str or None
        None keeps everything in memory.
    config : wasap.config.TrainConfig
    overwrite : bool
    """

    def __init__(self, out_dir, config, *, overwrite=False):
        self.out_dir = out_dir
        self.config = config
        self.history = []
        self.extra = {}
        if out_dir is not None:
            prepare_output_dir(out_dir, overwrite=overwrite)
        self._started = time.perf_counter()
        self.nnz_start = None
        self.init_seconds = None

    def path(self, name):
        return None if self.out_dir is None else os.path.join(self.out_dir, name)

    def start(self, model, *, init_seconds=None):
        """Note the model's size before training (and how long building it took)."""
        self.nnz_start = model.nnz_per_layer()
        if init_seconds is not None:
            self.init_seconds = init_seconds

    def epoch(self, **fields):
        """Record one epoch (the metrics.jsonl keys) and append it to metrics.jsonl."""
        record = {key: (value.tolist() if hasattr(value, "tolist") else value) for key, value in fields.items()}
        self.history.append(record)
        if self.out_dir is not None:
            with open(self.path("metrics.jsonl"), "a") as stream:
                stream.write(json.dumps(_strict(record), allow_nan=False) + "\n")
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
            nnz_start=self.nnz_start,
            nnz_end=model.nnz_per_layer(),
            init_seconds=self.init_seconds,
            total_seconds=time.perf_counter() - self._started,
            peak_rss_bytes=peak_rss_bytes(),
            **self.extra,
        )

    def finish(self, model, stop_reason, *, classes=None):
        """Write summary.json and model.npz; return the summary with ``history`` added."""
        summary = self.summary(model, stop_reason)
        if self.out_dir is not None:
            model.save(self.path("model.npz"), metadata=dict(config=self.config.to_dict(), stopped=stop_reason),
                       classes=classes)
            write_json_atomic(self.path("summary.json"), summary)
        return dict(summary, history=self.history)
