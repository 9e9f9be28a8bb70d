"""Reproduce the paper's Tables 2 and 3 with ``python -m wasap.run``, and write docs/results.md beside them.

    python tools/reproduce.py --data-root DIR --out runs/reproduce                 # every row, 3 seeds, 500 epochs
    python tools/reproduce.py --data-root DIR --out runs/reproduce --only fashion  # rows whose id matches
    python tools/reproduce.py --quick --out /tmp/reproduce                         # a few minutes: the tool itself
    python tools/reproduce.py --report --out runs/reproduce                        # results.md from finished runs

Each row of the tables (a data set, an activation, Importance Pruning off or on, a trainer: the sequential
one, WASAP-SGD, its synchronous variant WASSP-SGD, or a dense MLP of the same sizes) runs once per seed,
with ``--threads 1`` as the paper's sequential rows did, into ``OUT/<row id>/seed<k>``: an ordinary wasap
output folder. A run whose summary.json says it completed its epochs is kept and not run again; one that
was stopped goes on from its checkpoint (``--resume``); so a campaign stopped at any point continues where
it stopped when started again with the same arguments. Each run records the gradient flow
(``--gradient-flow``, :mod:`wasap.gradient_flow`).

``--data-root DIR`` is a folder holding ``fashion-mnist/`` (IDX files), ``cifar10-jpeg/`` (the JPEG
archive) and ``higgs-subset/`` (LightGBM's binary.train/binary.test); Madelon ships with wasap. Rows
whose data is missing are skipped with a line that says so.

The results page gives, per row, the paper's figure, wasap's best test accuracy (mean and sample standard
deviation over the seeds, and the number of seeds), weights at the start and the end, minutes per run,
the command of one seed and the machine; the figures (learning curves and weights per layer as the
paper's Figure 4; gradient flow, ReLU against All-ReLU, as its Figure 5) go beside it when matplotlib is
installed.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Optional

import numpy as np


class Paper(NamedTuple):
    """A row's figures in the paper: best test accuracy (%), weights at the start and end, minutes."""

    accuracy: Optional[float]
    start_weights: Optional[int] = None
    end_weights: Optional[int] = None
    minutes: Optional[float] = None


class Row(NamedTuple):
    """One row of the paper's Table 2 or 3."""

    dataset: str
    activation: str  # "relu" or "all-relu"
    alpha: Optional[float]
    importance_pruning: bool
    trainer: str  # "sequential", "wasap", "wassp" or "dense"
    paper: Paper
    table: int
    #: True: wasap's preset learning rate where it differs from the paper's (:data:`PAPER_LR`).
    preset_lr: bool = False
    #: True: CIFAR-10 without the training-image augmentation of the authors' code (``--augment none``).
    no_augment: bool = False

    @property
    def id(self):
        parts = [self.dataset, self.activation, "ip" if self.importance_pruning else "no-ip", self.trainer]
        return "_".join(parts) + ("_preset-lr" if self.preset_lr else "") + ("_no-augment" if self.no_augment else "")

    def label(self):
        activation = "ReLU" if self.activation == "relu" else f"All-ReLU (alpha {self.alpha:g})"
        trainer = dict(sequential="SET-MLP, sequential", wasap="SET-MLP, WASAP-SGD", wassp="SET-MLP, WASSP-SGD",
                       dense="dense MLP")[self.trainer]
        return (f"{trainer}, {activation}" + (", Importance Pruning" if self.importance_pruning else "")
                + (", wasap's preset learning rate" if self.preset_lr else "")
                + (", training images not augmented" if self.no_augment else ""))


#: Where each data set lives under --data-root (None: shipped with wasap).
DATA_FOLDERS = {"madelon": None, "fashion-mnist": "fashion-mnist", "cifar10": "cifar10-jpeg",
                "higgs": "higgs-subset"}
#: Workers of the parallel rows: the paper's 5 workers ran on 6 physical cores; one per core here.
PARALLEL_WORKERS = 2
#: Phase two (independent replicas, averaged) takes the last tenth of a parallel run's epochs.
PHASE_TWO_SHARE = 0.1


def _table_two(dataset, alpha, rows):
    """Table 2's six rows of a data set from ``rows``: ``(activation, ip, trainer) -> Paper``."""
    return [Row(dataset, activation, alpha if activation == "all-relu" else None, ip, trainer, paper, 2)
            for (activation, ip, trainer), paper in rows.items()]


ROWS = [
    *_table_two("madelon", 0.5, {
        ("relu", False, "sequential"): Paper(68.50, 19000, 19000, 3.6),
        ("relu", True, "sequential"): Paper(75.00, 19000, 2739, 3.2),
        ("all-relu", False, "sequential"): Paper(71.33, 19011, 19011, 3.6),
        ("all-relu", True, "sequential"): Paper(77.00, 19000, 2737, 3.2),
        ("relu", False, "dense"): Paper(59.66, 281702, 281702, 3.62),
        ("all-relu", False, "dense"): Paper(62.00, 281702, 281702, 3.62)}),
    *_table_two("fashion-mnist", 0.6, {
        ("relu", False, "sequential"): Paper(90.48, 126302, 126302, 137.5),
        ("relu", True, "sequential"): Paper(89.43, 126302, 26111, 96.25),
        ("all-relu", False, "sequential"): Paper(91.38, 126302, 126302, 137.5),
        ("all-relu", True, "sequential"): Paper(90.12, 126302, 25759, 96.25),
        ("relu", False, "dense"): Paper(90.85, 2797010, 2797010, 95.05),
        ("all-relu", False, "dense"): Paper(90.73, 2797010, 2797010, 95.05)}),
    *_table_two("cifar10", 0.75, {
        ("relu", False, "sequential"): Paper(67.05, 381758, 381758, 590),
        ("relu", True, "sequential"): Paper(65.21, 381758, 238114, 530),
        ("all-relu", False, "sequential"): Paper(69.83, 381425, 381425, 590),
        ("all-relu", True, "sequential"): Paper(68.55, 380318, 221323, 530),
        ("relu", False, "dense"): Paper(64.94, 20337010, 20337010, 530.7),
        ("all-relu", False, "dense"): Paper(67.96, 20337010, 20337010, 530.7)}),
    *_table_two("higgs", 0.05, {
        ("relu", False, "sequential"): Paper(73.59, 50224, 50244, 216.67),
        ("relu", True, "sequential"): Paper(73.50, 50246, 10065, 182.3),
        ("all-relu", False, "sequential"): Paper(73.67, 50165, 50165, 216.67),
        ("all-relu", True, "sequential"): Paper(73.76, 50165, 9992, 140.3),
        ("relu", False, "dense"): Paper(70.59, 2033002, 2033002, 182.3),
        ("all-relu", False, "dense"): Paper(70.10, 2033002, 2033002, 140.13)}),
    # Table 3: All-ReLU, parallel; its sequential rows are Table 2's.
    *[Row(dataset, "all-relu", alpha, ip, trainer, Paper(accuracy, minutes=minutes), 3)
      for dataset, alpha, figures in (
          ("fashion-mnist", 0.6, {("wassp", False): (90.52, 90.6), ("wassp", True): (89.96, 77.6),
                                  ("wasap", False): (91.23, 87.25), ("wasap", True): (90.15, 74.85)}),
          ("cifar10", 0.75, {("wassp", False): (67.13, 309.9), ("wassp", True): (66.88, 279.9),
                             ("wasap", False): (69.03, 281.9), ("wasap", True): (68.51, 246.5)}),
          ("higgs", 0.05, {("wassp", False): (74.26, 142.52), ("wassp", True): (74.16, 113.33),
                           ("wasap", False): (74.47, 138.52), ("wasap", True): (74.88, 108.33)}))
      for (trainer, ip), (accuracy, minutes) in figures.items()],
]

#: The paper's learning rate where wasap's preset differs from it (Fashion-MNIST's preset doubles it for
#: its 100-epoch runs): the rows run at the paper's rate, and a second row each at the preset's.
PAPER_LR = {"fashion-mnist": 0.01}
ROWS = [variant for row in ROWS for variant in (
    (row, row._replace(preset_lr=True))
    if row.dataset in PAPER_LR and row.trainer == "sequential" and row.activation == "all-relu" else (row,))]
#: Data sets whose training images the authors' code augments (wasap's preset does the same); their
#: sequential All-ReLU row runs a second time without, to show what augmentation is worth.
AUGMENTED = ("cifar10",)
ROWS = [variant for row in ROWS for variant in (
    (row, row._replace(no_augment=True))
    if row.dataset in AUGMENTED and row.trainer == "sequential" and row.activation == "all-relu"
    and not row.importance_pruning else (row,))]
#: ``--quick``: rows that check the tool end to end in a few minutes (with Fashion-MNIST where present).
QUICK_ROWS = ("madelon_all-relu_no-ip_sequential", "madelon_relu_ip_sequential", "madelon_all-relu_no-ip_dense",
              "fashion-mnist_all-relu_no-ip_sequential", "fashion-mnist_all-relu_no-ip_wasap")


def run_arguments(row, epochs, data_root):
    """``python -m wasap.run`` flags of ``row`` (without --seed and --out), or None when its data is absent."""
    args = ["--dataset", row.dataset, "--epochs", str(epochs), "--activation", row.activation]
    folder = DATA_FOLDERS[row.dataset]
    if folder is not None:
        path = os.path.join(data_root, folder) if data_root else None
        if path is None or not os.path.isdir(path):
            return None
        args += ["--data-dir", path]
    if row.alpha is not None:
        args += ["--alpha", str(row.alpha)]
    if row.dataset in PAPER_LR and not row.preset_lr:
        args += ["--lr", str(PAPER_LR[row.dataset])]
    if row.importance_pruning:
        args += ["--importance-pruning"]
    if row.no_augment:
        args += ["--augment", "none"]
    if row.trainer == "dense":
        # Every layer at density 1 (epsilon far above any layer's width), and no SET: a dense MLP of the same
        # sizes trained by the same code and algorithm.
        args += ["--epsilon", "1e9", "--zeta", "0"]
    elif row.trainer in ("wasap", "wassp"):
        args += ["--workers", str(PARALLEL_WORKERS)]
        if row.trainer == "wassp":
            args += ["--sync"]
        else:
            args += ["--phase2-start", str(max(2, int(round(epochs * (1 - PHASE_TWO_SHARE))) + 1))]
    else:
        args += ["--gradient-flow"]
    return args + ["--threads", "1", "--quiet"]


def run_state(run_dir, epochs):
    """``"done"``, ``"resumable"`` (a checkpoint to go on from) or ``"new"``."""
    summary = read_json(os.path.join(run_dir, "summary.json"))
    if summary and summary.get("stopped") == "completed" and summary.get("epochs_completed") == epochs:
        return "done"
    if os.path.isfile(os.path.join(run_dir, "checkpoint.npz")):
        return "resumable"
    return "new"


def read_json(path):
    try:
        with open(path) as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return None


def run_one(row, seed, args, out_root, epochs, log):
    """Run (or continue) one seed of one row; returns the run's folder."""
    run_dir = os.path.join(out_root, row.id, f"seed{seed}")
    state = run_state(run_dir, epochs)
    if state == "done":
        return run_dir
    if state == "resumable":
        command = [sys.executable, "-m", "wasap.run", "--resume", run_dir, "--quiet"]
    else:
        command = [sys.executable, "-m", "wasap.run", *args, "--seed", str(seed), "--out", run_dir, "--overwrite"]
    log(f"{'continuing' if state == 'resumable' else 'starting'} {row.id} seed {seed}")
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    minutes = (time.perf_counter() - started) / 60
    if completed.returncode != 0:
        log(f"FAILED {row.id} seed {seed} (exit {completed.returncode}): {completed.stderr.strip()[-800:]}")
    else:
        summary = read_json(os.path.join(run_dir, "summary.json")) or {}
        best = summary.get("best_test_accuracy")
        log(f"finished {row.id} seed {seed} in {minutes:.1f} min: best test accuracy "
            f"{'?' if best is None else f'{100 * best:.2f}%'}")
    return run_dir


def collect(row, out_root, seeds, epochs):
    """The completed runs of ``row``: their summaries and metrics, in seed order."""
    runs = []
    for seed in seeds:
        run_dir = os.path.join(out_root, row.id, f"seed{seed}")
        if run_state(run_dir, epochs) != "done":
            continue
        with open(os.path.join(run_dir, "metrics.jsonl")) as stream:
            metrics = [json.loads(line) for line in stream if line.strip()]
        runs.append(dict(seed=seed, dir=run_dir, summary=read_json(os.path.join(run_dir, "summary.json")),
                         metrics=metrics))
    return runs


def _mean_spread(values, digits=2):
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return ""
    if values.size == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def machine():
    """One line: the processor's name, its logical CPUs and the memory, as this machine reports them."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as stream:
            names = [line.split(":", 1)[1].strip() for line in stream if line.startswith("model name")]
        if names:
            model = names[0]
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as stream:
            kib = int(stream.readline().split()[1])
        memory = f", {kib / (1 << 20):.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{model}, {os.cpu_count()} logical CPUs{memory}"


def results_table(rows, out_root, seeds, epochs, data_root, figures):
    """The markdown of the results page."""
    lines = ["# Results: the paper's Tables 2 and 3", "",
             "Written by `python tools/reproduce.py`; every figure below comes from the runs it lists. "
             "Accuracy is the best test accuracy over a run's epochs (as the paper reports it), mean ± sample "
             "standard deviation over the seeds that completed (n). Weights are the run's nnz at the start and "
             "at the end (mean over seeds), minutes the wall time of one run (mean). The paper's figures are "
             f"those of its Tables 2 and 3 (5 trials, 500 epochs). These runs: {epochs} epochs.",
             "", f"Machine: {machine()}. Sequential and dense rows ran on one thread; parallel rows with "
             f"{PARALLEL_WORKERS} workers of one thread (the paper: 5 workers on 6 physical cores), phase two "
             f"over the last {int(PHASE_TWO_SHARE * 100)}% of the epochs for WASAP-SGD. Several runs shared "
             "the machine at once, so the minutes are an upper bound on a quiet machine's.", "",
             "Data as the paper's but for two: *higgs* is a subset of HIGGS, LightGBM's 7,000 training and 500 "
             "test rows (the paper: 105,000 and 50,000), so its figures are not the paper's experiment and "
             "their spread is large; *cifar10* is a JPEG copy of CIFAR-10 (decoded pixels about 6/255 off). "
             "CIFAR-10's training images are augmented (rotations, shifts, flips: `--augment`, on in the "
             "cifar10 preset) as the paper's code does; a row marked *not augmented* shows the network without.",
             ""]
    for table in (2, 3):
        lines += [f"## Table {table}", "",
                  "| data set | model | paper accuracy | wasap accuracy (n) | paper weights start -> end "
                  "| wasap weights start -> end | paper minutes | wasap minutes |",
                  "|---|---|---|---|---|---|---|---|"]
        commands = []
        for row in rows:
            if row.table != table:
                continue
            runs = collect(row, out_root, seeds, epochs)
            paper = row.paper
            weights = "" if paper.start_weights is None else f"{paper.start_weights} -> {paper.end_weights}"
            if runs:
                best = [100 * run["summary"]["best_test_accuracy"] for run in runs]
                start = np.mean([sum(run["summary"]["nnz_start"]) for run in runs])
                end = np.mean([sum(run["summary"]["nnz_end"]) for run in runs])
                minutes = np.mean([run["summary"]["total_seconds"] / 60 for run in runs])
                ours = (f"{_mean_spread(best)} ({len(runs)})", f"{start:.0f} -> {end:.0f}", f"{minutes:.1f}")
                args = run_arguments(row, epochs, data_root or "DIR") or []
                commands.append(f"- {row.id}: `python -m wasap.run {' '.join(_shown(args, data_root))} "
                                f"--seed {runs[0]['seed']}`")
            else:
                ours = ("not run", "", "")
            lines.append(f"| {row.dataset} | {row.label()} | {_figure(paper.accuracy)} | {ours[0]} | {weights} "
                         f"| {ours[1]} | {_figure(paper.minutes)} | {ours[2]} |")
        lines += ["", "Commands (one seed each; `DIR` is the data set's folder):", "", *commands, ""] if commands \
            else ["", "No row of this table has finished a run yet.", ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{caption}]({path})" + "\n" for caption, path in figures]
    return "\n".join(lines)


def _figure(value):
    return "" if value is None else f"{value:g}"


def _shown(args, data_root):
    """The flags as the page shows them: the data folder as DIR, without --quiet."""
    shown = []
    for arg in args:
        if data_root and arg.startswith(data_root):
            arg = "DIR"
        if arg != "--quiet":
            shown.append(arg)
    return shown


def draw_figures(rows, out_root, seeds, epochs, folder, page_folder):
    """Learning curves and weights per layer per data set (Figure 4), gradient flow per data set (Figure 5).

    Returns ``[(caption, path relative to the page)]``; empty without matplotlib.
    """
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    drawn = []
    for dataset in DATA_FOLDERS:
        chosen = [(row, collect(row, out_root, seeds, epochs)) for row in rows
                  if row.dataset == dataset and row.trainer in ("sequential", "dense")]
        chosen = [(row, runs) for row, runs in chosen if runs]
        if not chosen:
            continue
        figure, (accuracy, weights, flow) = plt.subplots(1, 3, figsize=(17, 4.8), constrained_layout=True)
        for row, runs in chosen:
            first = runs[0]["metrics"]
            epoch_axis = [record["epoch"] for record in first]
            curves = np.array([[100 * record["test_accuracy"] for record in run["metrics"]] for run in runs])
            accuracy.plot(epoch_axis, curves.mean(axis=0), label=row.label())
            weights.plot(epoch_axis, [sum(record["nnz"]) for record in first], label=row.label())
            if row.trainer == "sequential" and not row.importance_pruning and "gradient_flow" in first[0]:
                values = np.array([[record["gradient_flow"] for record in run["metrics"]] for run in runs])
                flow.plot(epoch_axis, values.mean(axis=0), label=row.label())
        accuracy.set(xlabel="epoch", ylabel="test accuracy (%, mean over seeds)", title=f"{dataset}: test accuracy")
        weights.set(xlabel="epoch", ylabel="weights (nnz, seed 0)", title=f"{dataset}: weights", yscale="log")
        flow.set(xlabel="epoch", ylabel="gradient flow ||g||^2 (mean over seeds)", yscale="log",
                 title=f"{dataset}: gradient flow, ReLU against All-ReLU")
        for axis in (accuracy, weights, flow):
            axis.grid(alpha=0.3)
            axis.legend(fontsize="small")
        path = os.path.join(folder, f"{dataset}.png")
        figure.savefig(path, dpi=100)
        plt.close(figure)
        drawn.append((f"{dataset}: test accuracy, weights and gradient flow per epoch",
                      os.path.relpath(path, page_folder)))
    return drawn


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder of the runs (one subfolder per row and seed)")
    parser.add_argument("--data-root", default=os.environ.get("WASAP_DATASETS"),
                        help="folder of fashion-mnist/, cifar10-jpeg/, higgs-subset/ (default: $WASAP_DATASETS)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per row (the paper: 5)")
    parser.add_argument("--epochs", type=int, default=500, help="epochs per run (the paper: 500)")
    parser.add_argument("--only", help="a regular expression: run only the rows whose id matches")
    parser.add_argument("--jobs", type=int, default=1, help="sequential runs at once (parallel rows run alone)")
    parser.add_argument("--quick", action="store_true",
                        help="a few rows, 2 epochs, 1 seed: checks the tool end to end in minutes")
    parser.add_argument("--report", action="store_true", help="run nothing: write the results of finished runs")
    parser.add_argument("--results", help="the results page to write (default: docs/results.md; with --quick, "
                                           "OUT/results.md)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds = 2, 1
        rows = [row for row in ROWS if row.id in QUICK_ROWS]
    else:
        rows = ROWS
    if args.only:
        rows = [row for row in rows if re.search(args.only, row.id)]
    if not rows:
        parser.error("no row matches --only; row ids look like fashion-mnist_all-relu_no-ip_sequential")
    seeds = range(args.seeds)
    if args.results is None:
        args.results = (os.path.join(args.out, "results.md") if args.quick else
                        os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "docs", "results.md"))

    def log(line):
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    if not args.report:
        runnable = []
        for row in rows:
            run_args = run_arguments(row, args.epochs, args.data_root)
            if run_args is None:
                log(f"skipping {row.id}: its data set is not under --data-root ({args.data_root})")
                continue
            runnable.extend((row, seed, run_args) for seed in seeds)
        alone = [job for job in runnable if job[0].trainer in ("wasap", "wassp")]
        together = [job for job in runnable if job not in alone]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(lambda job: run_one(*job, args.out, args.epochs, log), together))
        for job in alone:
            run_one(*job, args.out, args.epochs, log)
    results = os.path.abspath(args.results)
    figures = draw_figures(rows, args.out, seeds, args.epochs,
                           os.path.join(os.path.dirname(results), "_static", "results"), os.path.dirname(results))
    page = results_table(rows, args.out, seeds, args.epochs, args.data_root, figures)
    with open(results, "w") as stream:
        stream.write(page + "\n")
    log(f"wrote {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
