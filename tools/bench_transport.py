"""WASAP-SGD's transports side by side on one machine: shared memory, MPI one-sided windows, and MPI over TCP.

Three configurations: ``shm`` (the default transport), ``mpi`` (MPICH's own path on one node, its shared
memory) and ``mpi-tcp`` (MPICH told to use no shared memory and libfabric's TCP provider over loopback,
the path ranks on different machines take: ``MPIR_CVAR_NOLOCAL=1 MPIR_CVAR_CH4_NETMOD=ofi FI_PROVIDER=tcp``).

First, per layer of the Fashion-MNIST network (784-1000-1000-1000-10, epsilon 20), what one worker's pull
(the layer's weights and biases read under its lock, at an unchanged topology) and push (its own
momentum step: read, update and write back under the lock) cost, in microseconds, median of
``--repeats``; each layer is served alone, by a server that waits in an MPI call meanwhile.

Then rounds of the same asynchronous phase one, one run per configuration a round in turn: ``--workers
K`` over shared memory, then ``mpiexec -n K+1`` over each MPI path; one kernel thread a worker. Printed
per configuration, as the median over the rounds: seconds per epoch (the first epoch, which loads
numba's caches, left out), and from the workers' profile (``profile.json``, summed over workers and divided
by their steps) the microseconds a step spends pulling the weights and gathering its batch (``data``),
waiting for a layer's lock, holding one, in the rest of its own update (``other``) and inside MPI
calls (part of the others), with the server's updates a second; then each MPI figure over the shared-memory
one. The default data is random, of the Fashion-MNIST shape on 12,040 training samples an epoch.

    python tools/bench_transport.py [--workers 2] [--rounds 3] [--epochs 5] [--repeats 200] [-- wasap.run flags]
    python tools/bench_transport.py --dataset fashion-mnist --data-dir DIR --epochs 3
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from wasap.parallel.mpi_transport import MPICH_NETWORK_PATH

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The default data: random, of the Fashion-MNIST shape; 70% of the samples train (12,040 of 17,200).
SYNTHETIC = ["--dataset", "synthetic", "--n-samples", "17200", "--n-features", "784", "--n-classes", "10",
             "--hidden", "1000,1000,1000"]
#: The network whose layers the pull and push costs are measured on.
LAYER_SIZES = (784, 1000, 1000, 1000, 10)
LAYER_EPSILON = 20.0
#: What each configuration adds to the environment of its ``mpiexec`` (None: shared memory, no MPI).
CONFIGURATIONS = {
    "shm": None,
    "mpi": {},
    "mpi-tcp": MPICH_NETWORK_PATH,
}
#: The profile's categories shown per step, and how the table names them.
STEP_PARTS = (("data", "pull + batch"), ("lock_wait", "lock wait"), ("lock_held", "lock held"),
              ("other", "own update"), ("in_mpi", "in MPI calls"))


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--dataset", help="a wasap.run --dataset (default: random data of the Fashion-MNIST shape)")
    parser.add_argument("--data-dir")
    parser.add_argument("--repeats", type=int, default=200, help="pulls and pushes timed per layer")
    parser.add_argument("--layer-costs-rank", metavar="OUT", help=argparse.SUPPRESS)  # a rank of the MPI job
    args = parser.parse_args(argv)
    args.extra = extra
    return args


def mpiexec():
    found = shutil.which("mpiexec") or shutil.which(os.path.join(os.path.dirname(sys.executable), "mpiexec"))
    if found is None:
        sys.exit("bench_transport needs mpiexec and mpi4py: pip install 'wasap[mpi]' mpich")
    return found


def mpi_environment(configuration):
    return {**os.environ, **CONFIGURATIONS[configuration]}


def time_layer(worker, repeats):
    """Median microseconds ``(pull, push)`` of a worker transport serving a one-layer model."""
    model = worker.read_model()
    versions = [0]
    worker.gradient_slot(0, model.nnz_per_layer())
    pulls, pushes = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        worker.pull_weights(model, versions)
        pulled = time.perf_counter()
        worker.apply_gradient(0, versions, [1e-9], momentum=0.0, weight_decay=0.0)
        pushes.append(time.perf_counter() - pulled)
        pulls.append(pulled - started)
    return 1e6 * statistics.median(pulls), 1e6 * statistics.median(pushes)


def layer_models():
    from wasap.model import SparseMLP

    return [SparseMLP.random([n_in, n_out], epsilon=LAYER_EPSILON, seed=l, warn=False)
            for l, (n_in, n_out) in enumerate(zip(LAYER_SIZES[:-1], LAYER_SIZES[1:]))]


def _server_args(model):
    X = np.zeros((2, model.sizes[0]), dtype=np.float32)
    return dict(X=X, y=np.zeros(2, dtype=np.int64), n_workers=1, n_slots=1, partitions=[np.arange(2)],
                replicas=False)


def shm_layer_costs(repeats):
    """``[(pull, push)]`` per layer over shared memory: the server's and the worker's side in this process."""
    import multiprocessing

    from wasap.parallel.shm_transport import SharedMemoryTransport, SharedMemoryWorkerTransport

    costs = []
    for model in layer_models():
        server = SharedMemoryTransport(model, **_server_args(model), context=multiprocessing.get_context("spawn"))
        try:
            worker = SharedMemoryWorkerTransport(server.worker_handle(0))
            costs.append(time_layer(worker, repeats))
            worker.close()
        finally:
            server.close()
    return costs


def layer_costs_rank(out, repeats):
    """One rank of ``mpiexec -n 2``: rank 0 serves each layer in turn and waits; rank 1 times it."""
    from wasap.parallel import mpi_transport

    comm = mpi_transport.world()
    costs = []
    for model in layer_models():
        if comm.Get_rank() == 0:
            server = mpi_transport.MpiServerTransport(model, **_server_args(model))
            server.start_workers(None, [None], 1)
            costs.append(comm.recv(source=1))  # a blocking call: MPI progresses while the worker times
            server.shutdown()
            server.close()
        else:
            worker, _ = mpi_transport.join_run(comm)
            comm.send(time_layer(worker, repeats), dest=0)
            worker.close()
    if comm.Get_rank() == 0:
        with open(out, "w") as stream:
            json.dump(costs, stream)
    return mpi_transport.end_of_job(0)


def mpi_layer_costs(configuration, repeats, scratch):
    out = os.path.join(scratch, f"{configuration}-layers.json")
    command = [mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", os.path.abspath(__file__),
               "--layer-costs-rank", out, "--repeats", str(repeats)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_DIR, stdin=subprocess.DEVNULL,
                               env=mpi_environment(configuration))
    if completed.returncode != 0:
        sys.exit(f"the {configuration} layer timing failed:\n{completed.stdout}{completed.stderr}")
    with open(out) as stream:
        return [tuple(pair) for pair in json.load(stream)]


def run_once(args, configuration, out):
    """One run's figures: seconds per epoch, microseconds per step in each part, server updates a second."""
    data = SYNTHETIC
    if args.dataset:
        data = ["--dataset", args.dataset] + (["--data-dir", args.data_dir] if args.data_dir else [])
    flags = [*data, "--epochs", str(args.epochs), "--threads", "1", "--warmup-epochs", "0", "--quiet",
             "--out", out, "--overwrite", *args.extra]
    environment = None
    if CONFIGURATIONS[configuration] is not None:
        command = [mpiexec(), "-n", str(args.workers + 1), sys.executable, "-m", "mpi4py", "-m", "wasap.run", *flags,
                   "--transport", "mpi"]
        environment = mpi_environment(configuration)
    else:
        command = [sys.executable, "-m", "wasap.run", "--workers", str(args.workers), *flags]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_DIR, stdin=subprocess.DEVNULL,
                               env=environment)
    if completed.returncode != 0:
        sys.exit(f"the {configuration} run failed:\n{completed.stdout}{completed.stderr}")
    with open(os.path.join(out, "metrics.jsonl")) as stream:
        epochs = [json.loads(line)["train_seconds"] for line in stream]
    with open(os.path.join(out, "profile.json")) as stream:
        profile = json.load(stream)
    phase = [worker["phase1"] for worker in profile["time_breakdown"].values()]
    steps = sum(p["count"] for p in phase)
    figures = {"epoch_seconds": statistics.median(epochs[1:] or epochs),
               "updates_per_second": profile["server"]["updates_per_second"]}
    for part, _ in STEP_PARTS:
        figures[part] = 1e6 * sum(p[part] for p in phase) / max(steps, 1)
    return figures


def print_table(rows):
    """``rows``: ``[(label, format, {configuration: value})]``; MPI columns get their ratio to shm."""
    names = list(CONFIGURATIONS)
    ratios = [f"{name}/shm" for name in names[1:]]
    print(f"{'':>26}" + "".join(f"{name:>11}" for name in names) + "".join(f"{r:>13}" for r in ratios))
    for label, form, values in rows:
        line = f"{label:>26}" + "".join(f"{form.format(values[name]):>11}" for name in names)
        line += "".join(f"{values[name] / values['shm']:>12.2f}x" if values["shm"] else f"{'-':>13}"
                        for name in names[1:])
        print(line)


def main(argv=None):
    args = parse_args(argv)
    if args.layer_costs_rank:
        sys.exit(layer_costs_rank(args.layer_costs_rank, args.repeats))
    with tempfile.TemporaryDirectory() as scratch:
        layers = {"shm": shm_layer_costs(args.repeats)}
        for configuration in list(CONFIGURATIONS)[1:]:
            layers[configuration] = mpi_layer_costs(configuration, args.repeats, scratch)
        print(f"pull and push of one layer, microseconds, median of {args.repeats} (one worker, epsilon "
              f"{LAYER_EPSILON:g})")
        rows = []
        for l, (n_in, n_out) in enumerate(zip(LAYER_SIZES[:-1], LAYER_SIZES[1:])):
            for k, what in enumerate(("pull", "push")):
                rows.append((f"layer {l} {n_in}x{n_out} {what}", "{:.1f}",
                             {name: costs[l][k] for name, costs in layers.items()}))
        print_table(rows)
        figures = {name: [] for name in CONFIGURATIONS}
        for round_ in range(args.rounds):
            for configuration in figures:
                figures[configuration].append(run_once(args, configuration, os.path.join(scratch, configuration)))
            print(f"round {round_ + 1}/{args.rounds}: seconds an epoch " +
                  ", ".join(f"{figures[c][-1]['epoch_seconds']:.3f} over {c}" for c in figures), flush=True)
    median = {t: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for t, runs in figures.items()}
    columns = [("epoch_seconds", "s / epoch", "{:.3f}"), *((part, f"{name} us/step", "{:.1f}")
                                                           for part, name in STEP_PARTS),
               ("updates_per_second", "server updates/s", "{:.0f}")]
    print(f"\n{args.workers} workers, asynchronous phase one, 1 thread each; medians of {args.rounds} rounds")
    print_table([(name, form, {t: median[t][key] for t in median}) for key, name, form in columns])


if __name__ == "__main__":
    main()
