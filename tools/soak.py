"""Soak test of the parallel trainer: a long WASAP-SGD run, its memory and epoch times sampled.

Starts ``python -m wasap.run --workers K`` on synthetic data for as long as
asked, samples the resident memory (RSS and USS) of the server and of every
worker every few seconds and reads each epoch's time from metrics.jsonl; then
stops the run with SIGTERM, as a job scheduler would (a process started in the
background of a shell ignores SIGINT), and checks that it wrote
its outputs and left no shared-memory segment behind.

It prints, and writes to soak.json in the run's folder:

- memory per process after the warm-up (the first ``--warmup`` fraction of the
  time): its spread, (max - min) / min, which should stay within 5%;
- epoch times: the median of the first and of the last third of the epochs
  after the warm-up, and their ratio (drift), against the spread of epoch
  times inside each third (the noise of a shared machine).

    python tools/soak.py [--minutes 30] [--workers 2] [--interval 5] [--out DIR] [-- extra wasap.run flags]
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

RUN = ["--dataset", "synthetic", "--n-samples", "30000", "--n-features", "784", "--n-classes", "10",
       "--hidden", "1000,1000,1000", "--epsilon", "20", "--epochs", "1000000", "--threads", "1", "--quiet"]


def sample(processes):
    """RSS and USS (bytes) of each named process that is still alive."""
    figures = {}
    for name, process in processes.items():
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        figures[name] = dict(rss=info.rss, uss=info.uss)
    return figures


def workers_of(server):
    """The run's worker processes (children that are not multiprocessing's resource tracker)."""
    children = [child for child in server.children() if "resource_tracker" not in " ".join(child.cmdline())]
    return {f"worker {index}": child for index, child in enumerate(sorted(children, key=lambda c: c.pid))}


def spread(values):
    return (max(values) - min(values)) / min(values) if values and min(values) > 0 else float("nan")


def thirds(values):
    third = max(1, len(values) // 3)
    return values[:third], values[-third:]


def relative_spread(values):
    """Interquartile range over the median: the noise of a set of epoch times."""
    if len(values) < 4:
        return float("nan")
    q1, _, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / statistics.median(values)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of the time left out as warm-up")
    parser.add_argument("--out", help="the run's folder (default: a new temporary folder)")
    args = parser.parse_args(argv)

    out = args.out or os.path.join(tempfile.mkdtemp(prefix="wasap-soak-"), "run")
    command = [sys.executable, "-m", "wasap.run", *RUN, "--workers", str(args.workers), "--out", out, *extra]
    print("soak:", " ".join(command), flush=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = psutil.Process(process.pid)
    started = time.monotonic()
    samples = []
    processes = {"server": server}
    try:
        while time.monotonic() - started < args.minutes * 60:
            if process.poll() is not None:
                raise SystemExit(f"the run ended by itself (exit {process.returncode}):\n{process.stdout.read()}")
            if len(processes) < args.workers + 1:
                processes = {"server": server, **workers_of(server)}
            samples.append(dict(t=time.monotonic() - started, **sample(processes)))
            time.sleep(args.interval)
    finally:
        signalled = time.monotonic()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=300)
    stopped_in = time.monotonic() - signalled

    warm = [s for s in samples if s["t"] >= args.warmup * args.minutes * 60]
    memory = {}
    for name in processes:
        rss = [s[name]["rss"] for s in warm if name in s]
        uss = [s[name]["uss"] for s in warm if name in s]
        if rss:
            memory[name] = dict(rss_min_mib=min(rss) / 2 ** 20, rss_max_mib=max(rss) / 2 ** 20,
                                rss_spread=spread(rss), uss_spread=spread(uss))
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    n_warm = max(1, int(round(args.warmup * len(records))))
    times = [r["train_seconds"] for r in records[n_warm:]]
    first, last = thirds(times)
    epochs = dict(count=len(records), first_third_median=statistics.median(first),
                  last_third_median=statistics.median(last),
                  drift=statistics.median(last) / statistics.median(first),
                  noise=max(relative_spread(first), relative_spread(last)))
    leftover = [name for name in os.listdir("/dev/shm") if name.startswith(f"wasap_{process.pid}_")] \
        if os.path.isdir("/dev/shm") else []
    with open(os.path.join(out, "summary.json")) as stream:
        stopped = json.load(stream)["stopped"]
    report = dict(command=command, minutes=args.minutes, samples=len(samples), memory=memory, epochs=epochs,
                  stopped=stopped, exit_status=process.returncode, stop_seconds=stopped_in,
                  leftover_segments=leftover)
    with open(os.path.join(out, "soak.json"), "w") as stream:
        json.dump(report, stream, indent=2)

    print(f"{len(records)} epochs in {args.minutes:g} min; memory after the first {args.warmup:.0%} of the time:")
    for name, figures in memory.items():
        print(f"  {name:>9}: RSS {figures['rss_min_mib']:.1f}-{figures['rss_max_mib']:.1f} MiB "
              f"(spread {figures['rss_spread']:.2%}, USS spread {figures['uss_spread']:.2%})")
    print(f"epoch time: first third {epochs['first_third_median']:.3f}s, last third "
          f"{epochs['last_third_median']:.3f}s, drift {epochs['drift'] - 1:+.2%} (noise, IQR/median: "
          f"{epochs['noise']:.2%})")
    print(f"stopped: {stopped} (exit {process.returncode}, {stopped_in:.1f}s after the signal); "
          f"shared segments left: {len(leftover)}")
    flat = all(f["rss_spread"] <= 0.05 for f in memory.values())
    print(f"memory flat within 5%: {'yes' if flat else 'NO'}; report in {os.path.join(out, 'soak.json')}")
    return 0 if flat and not leftover and stopped == "terminated" else 1


if __name__ == "__main__":
    sys.exit(main())
