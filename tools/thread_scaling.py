"""Why two kernel threads scale as they do: per-layer times of the Fashion-MNIST shape at 1 and 2 threads.

For 784-1000-1000-1000-10 (epsilon 20, batch 128, dropout 0.3, random data) it prints, per thread
count (each in a fresh process, since numba fixes its thread pool per process):

- each layer's forward and backward kernel per batch, the batch gather, the loss, and the rest (this
  tool's own Python between the calls included);
- what an empty parallel kernel costs on numba's threading layer (run with
  NUMBA_THREADING_LAYER=workqueue to see the layer numba falls back to without OpenMP);
- layer 2's forward pass right after layer 1 wrote its input (half of it written by the other core
  when two threads run) and again at once (the input now in this core's cache): the cost of reading
  activations another core has just written;
- every kernel of a training step run a second time at once (its data now in this core's caches): how
  the kernels would scale if nothing had to move between cores and caches;
- with two threads, the rate at which a core reads 256 KB the other core has just written, against
  256 KB it wrote itself, and how many bytes of a training step each thread reads that the other
  wrote (the neuron partition's cross-core traffic): what moving them costs at that rate;
- a training step on one set of batch buffers (activations, derivatives: what the model caches) and
  on two sets used in turn (3.3 MiB more data a step): how much a step's speed depends on its data
  staying in this core's caches from one step to the next;
- a 64-sample gradient step alone, and two of them at once in two threads on two copies of the model
  (the batch split between the threads, no activations shared): what such a split could give.

    python tools/thread_scaling.py [--batches 400]
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS_DIR))  # this checkout's wasap, installed or not

SIZES = [784, 1000, 1000, 1000, 10]
BATCH = 128
THREAD_ENV = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _setup():
    import numpy as np

    from wasap.model import SparseMLP

    rng = np.random.default_rng(0)
    X = rng.standard_normal((60000, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], 60000)
    model = SparseMLP.random(SIZES, epsilon=20, activation="all-relu", alpha=0.6, seed=0, warn=False)
    return X, y, model, rng.permutation(60000)


def _training_step(model, ws, X, y, rows, step, run):
    """One training step at lr 0 (the weights stay as they are), every call handed to ``run``.

    ``run(part, l, call)`` must call ``call()`` at least once; ``part`` is ``"gather"``,
    ``"forward"``, ``"loss"`` or ``"backward"`` and ``l`` the layer. A backward call takes an
    optional buffer for the delta it writes (by default the layer below's, in place).
    """
    import numpy as np

    from wasap import kernels
    from wasap.batches import gather_transposed
    from wasap.model import stream_seed

    full = kernels.DROPOUT_RESOLUTION
    keep, scale = int(round(0.7 * full)), 1 / 0.7
    empty = np.empty(0, dtype=np.float32)
    last = len(model.layers) - 1
    run("gather", None, lambda: gather_transposed(X, rows, ws.x_t))
    a_prev = ws.x_t
    for l, layer in enumerate(model.layers):
        act, slope = model._codes[l]
        run("forward", l, lambda: kernels.forward_layer(
            layer.col_indptr, layer.col_rows, layer.col_perm, layer.data, layer.bias, a_prev, act, slope,
            ws.activations[l + 1], ws.derivs[l + 1], True, full if l == last else keep,
            1.0 if l == last else scale, stream_seed(step, l)))
        a_prev = ws.activations[l + 1]
    run("loss", None, lambda: model.loss_and_delta(a_prev, y[rows], ws))
    delta = ws.delta_out
    for l in range(last, -1, -1):
        layer = model.layers[l]
        below = ws.derivs[l]
        run("backward", l, lambda out=below: kernels.backward_layer(
            layer.indptr, layer.indices, layer.data, layer.velocity, ws.activations[l] if l > 0 else ws.x_t,
            delta, below, out, l > 0, kernels.MODE_UPDATE, empty, 0.0, 0.9, 2e-4, layer.bias,
            layer.bias_velocity, empty))
        delta = below


def _batch_rows(order, i):
    return order[(i % 468) * BATCH:(i % 468 + 1) * BATCH]


def per_layer(model, X, y, order, batches):
    """Microseconds per batch of each kernel call, in a real sequence of training steps (lr 0)."""
    import numpy as np

    ws = model.workspace(BATCH, training=True)
    n_layers = len(model.layers)
    for repeat in range(2):  # the first pass compiles and warms the caches
        seconds = dict(gather=0.0, loss=0.0, forward=np.zeros(n_layers), backward=np.zeros(n_layers))

        def run(part, l, call):
            t = time.perf_counter()
            call()
            if l is None:
                seconds[part] += time.perf_counter() - t
            else:
                seconds[part][l] += time.perf_counter() - t

        started = time.perf_counter()
        for i in range(batches):
            _training_step(model, ws, X, y, _batch_rows(order, i), i, run)
        total = time.perf_counter() - started
    us = 1e6 / batches
    accounted = seconds["gather"] + seconds["loss"] + seconds["forward"].sum() + seconds["backward"].sum()
    return dict(total=total * us, gather=seconds["gather"] * us, loss=seconds["loss"] * us,
                forward=list(seconds["forward"] * us), backward=list(seconds["backward"] * us),
                other=(total - accounted) * us)


def warm_repeat(model, X, y, order, batches):
    """Microseconds per batch of all kernels of a step, each as called and again at once.

    lr 0 leaves the weights as they are, so the second call of a kernel does the first one's
    work on data it has just touched; the backward pass's second call writes its delta into a
    scratch buffer (the first one's is the layer below's input).
    """
    from wasap.batches import aligned_empty

    ws = model.workspace(BATCH, training=True)
    scratch = [aligned_empty(buffer.shape) for buffer in ws.derivs[:-1]]
    for repeat in range(2):  # the first pass compiles and warms the caches
        seconds = dict(first=0.0, again=0.0)

        def run(part, l, call):
            if part in ("gather", "loss"):
                call()
                return
            for key, args in (("first", ()), ("again", (scratch[l],) if part == "backward" else ())):
                t = time.perf_counter()
                call(*args)
                seconds[key] += time.perf_counter() - t

        for i in range(batches):
            _training_step(model, ws, X, y, _batch_rows(order, i), i, run)
    return dict(in_sequence=1e6 * seconds["first"] / batches, again=1e6 * seconds["again"] / batches)


def two_workspaces(model, X, y, order, batches):
    """Microseconds per training step on one workspace, and on two used in turn; the second's bytes."""
    from wasap.model import Workspace

    pair = (model.workspace(BATCH, training=True), Workspace(model.sizes, BATCH, training=True))

    def run(part, l, call):
        call()

    result = dict(extra_bytes=sum(a.nbytes for a in [pair[1].x_t, *pair[1].activations[1:], *pair[1].derivs[1:],
                                                     pair[1].delta_out]))
    for key, spaces in (("one", pair[:1]), ("two", pair)):
        for repeat in range(2):  # the first pass warms the caches
            started = time.perf_counter()
            for i in range(batches):
                _training_step(model, spaces[i % len(spaces)], X, y, _batch_rows(order, i), i, run)
            result[key] = 1e6 * (time.perf_counter() - started) / batches
    return result


def launch_cost():
    """Microseconds for a parallel kernel that does nothing: what the threading layer costs a call."""
    import numpy as np
    from numba import njit, prange

    @njit(parallel=True)
    def nothing(a):
        for i in prange(a.shape[0]):
            a[i] += 1.0

    a = np.zeros(16, dtype=np.float32)
    for _ in range(100):
        nothing(a)
    times = []
    for _ in range(2000):
        t = time.perf_counter()
        nothing(a)
        times.append(time.perf_counter() - t)
    return 1e6 * float(np.median(times))


def cross_core_read():
    """Microseconds for each of two threads to read 256 KB the other thread has just written, and 256 KB
    it wrote itself (median of 300)."""
    import numba
    import numpy as np

    from wasap.batches import aligned_empty

    write, read = _cross_core_kernels()
    rows = 1000  # 512-byte rows, half written by each thread
    a = aligned_empty((rows, BATCH))
    sink = aligned_empty((2, BATCH))
    result = {}
    for remote in (False, True):
        times = []
        for i in range(320):
            write(a, np.float32(i))
            t = time.perf_counter()
            read(a, sink, remote)
            if i >= 20:
                times.append(time.perf_counter() - t)
        result["remote" if remote else "own"] = 1e6 * float(np.median(times))
    result["bytes"] = rows // 2 * BATCH * 4
    assert numba.get_num_threads() == 2
    return result


def _cross_core_kernels():
    from numba import njit, prange

    from wasap.intrinsics import vadd, vload, vsplat, vstore, vzeros128

    @njit(parallel=True)
    def write(a, value):
        n = a.shape[0]
        block = vsplat(vzeros128(), value)
        for t in prange(2):  # numba's static schedule: thread t gets half t, as the kernels' prange does
            for r in range(t * n // 2, (t + 1) * n // 2):
                vstore(a, r, 0, block)

    @njit(parallel=True)
    def read(a, sink, remote):
        n = a.shape[0]
        for t in prange(2):
            half = 1 - t if remote else t
            acc = vzeros128()
            for r in range(half * n // 2, (half + 1) * n // 2):
                acc = vadd(acc, vload(a, r, 0, acc))  # whole rows, as the kernels read them
            vstore(sink, t, 0, acc)

    return write, read


def cross_core_bytes(model):
    """Bytes of one training step that each of two threads reads from cache lines the other wrote.

    Layers are split over their neurons (forward: output neurons, backward: input neurons),
    and the batch gather over samples. Each thread reads every row of a layer's input in the
    forward pass and every row of its delta in the backward pass (with 20 or more connections a
    neuron, every row is used), half of them written by the other thread; the gather writes half of
    every input row; the forward pass reads the weights in column order, half of them updated
    by the other thread in the backward pass before.
    """
    row = BATCH * 4
    sizes = model.sizes
    total = 2 * sizes[0] * row // 2  # the input batch: forward of layer 1, backward of layer 1
    total += sum(n * row // 2 for n in sizes[1:-1])  # forward: hidden activations
    total += sum(n * row // 2 for n in sizes[1:])  # backward: deltas (the output's by the main thread)
    total += sum(layer.nnz * 4 // 2 for layer in model.layers)  # forward: weights updated by the other
    return total


def fresh_input(model, batches):
    """Layer 2's forward right after layer 1 wrote its input, and again at once (microseconds)."""
    import numpy as np

    from wasap import kernels

    ws = model.workspace(BATCH, training=True)
    ws.x_t[...] = np.random.default_rng(1).standard_normal(ws.x_t.shape)
    full = kernels.DROPOUT_RESOLUTION

    def forward(l, source, target):
        layer = model.layers[l]
        act, slope = model._codes[l]
        kernels.forward_layer(layer.col_indptr, layer.col_rows, layer.col_perm, layer.data, layer.bias, source,
                              act, slope, target, ws.derivs[l + 1], True, full, 1.0, 0)

    a1, a2 = ws.activations[1], ws.activations[2]
    first = again = 0.0
    for i in range(batches + 20):
        forward(0, ws.x_t, a1)
        t = time.perf_counter()
        forward(1, a1, a2)
        mid = time.perf_counter()
        forward(1, a1, a2)
        if i >= 20:
            first += mid - t
            again += time.perf_counter() - mid
    return dict(after_write=1e6 * first / batches, again=1e6 * again / batches)


def split_batch(model, X, y, order, batches):
    """A 128- and a 64-sample gradient step on one thread, and two 64-sample steps at once on two threads."""
    import numpy as np

    from wasap.batches import gather_transposed
    from wasap.threads import set_threads

    def steps(net, batch, offset, out):
        set_threads(1)  # per thread in numba
        grads = [np.zeros(layer.nnz, np.float32) for layer in net.layers]
        bias_grads = [np.zeros(layer.n_out, np.float32) for layer in net.layers]
        ws = net.workspace(batch, training=True)
        for i in range(batches + 3):
            if i == 3:
                started = time.perf_counter()
            rows = order[offset + (i % 200) * batch:offset + (i % 200 + 1) * batch]
            net.gradient_batch(gather_transposed(X, rows, ws.x_t), y[rows], grads, bias_grads, dropout=0.3,
                               dropout_seed=i)
        out.append(1e6 * (time.perf_counter() - started) / batches)

    one_128, one_64, two_64 = [], [], []
    steps(model, 128, 0, one_128)
    steps(model, 64, 0, one_64)
    threads = [threading.Thread(target=steps, args=(net, 64, offset, two_64))
               for net, offset in ((model, 0), (model.copy(), 30000))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return dict(one_thread_128=one_128[0], one_thread_64=one_64[0], two_threads_64_each=max(two_64))


def worker(threads, batches):
    from wasap.threads import SLOW_THREADING_LAYER, set_threads, threading_layer

    set_threads(threads)
    X, y, model, order = _setup()
    result = dict(threads=threads, layer=threading_layer(), launch=launch_cost(),
                  per_layer=per_layer(model, X, y, order, batches), fresh_input=fresh_input(model, batches),
                  warm_repeat=warm_repeat(model, X, y, order, batches),
                  two_workspaces=two_workspaces(model, X, y, order, batches))
    if threads == 2:
        result["cross_core"] = cross_core_read()
        result["cross_core_bytes"] = cross_core_bytes(model)
        if result["layer"] != SLOW_THREADING_LAYER:  # workqueue aborts on kernels from two threads
            set_threads(1)
            result["split_batch"] = split_batch(model, X, y, order, batches)
    return result


def _per_thread(results, key, describe):
    """Print ``describe(result[key])`` for each thread count's result, one line each."""
    for threads, result in results.items():
        print(f"{threads} thread(s): {describe(result[key])}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=400, help="batches per measurement [%(default)s]")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error("--batches must be at least 1")
    if args.worker:
        print(json.dumps(worker(args.worker, args.batches)))
        return
    results = {}
    for threads in (1, 2):
        env = dict(os.environ, **{name: str(threads) for name in THREAD_ENV})
        completed = subprocess.run([sys.executable, __file__, "--worker", str(threads), "--batches",
                                    str(args.batches)], env=env, capture_output=True, text=True, check=True)
        results[threads] = json.loads(completed.stdout.strip().splitlines()[-1])
    print(f"784-1000-1000-1000-10, epsilon 20, batch {BATCH}, microseconds per batch; "
          f"load average {os.getloadavg()[0]:.2f}; numba threading layer {results[1]['layer']}, an empty "
          f"parallel kernel {results[1]['launch']:.1f} on one thread, {results[2]['launch']:.1f} on two")
    _per_thread(results, "per_layer", lambda row: (
        f"total {row['total']:.0f}; gather {row['gather']:.0f}; forward "
        f"{' / '.join(f'{v:.0f}' for v in row['forward'])}; loss {row['loss']:.0f}; backward "
        f"{' / '.join(f'{v:.0f}' for v in row['backward'])}; other {row['other']:.0f}"))
    one, two = results[1]["per_layer"]["total"], results[2]["per_layer"]["total"]
    print(f"two threads vs one: {one / two:.2f}x")
    _per_thread(results, "fresh_input", lambda fresh: (
        f"layer 2's forward right after layer 1 wrote its input {fresh['after_write']:.0f}, "
        f"again at once {fresh['again']:.0f}"))
    _per_thread(results, "warm_repeat", lambda warm: (
        f"all kernels of a step {warm['in_sequence']:.0f}, each run again at once {warm['again']:.0f}"))
    warm1, warm2 = results[1]["warm_repeat"], results[2]["warm_repeat"]
    print(f"two threads vs one, kernels only: {warm1['in_sequence'] / warm2['in_sequence']:.2f}x as called, "
          f"{warm1['again'] / warm2['again']:.2f}x run again at once")
    _per_thread(results, "two_workspaces", lambda spaces: (
        f"a step on one set of batch buffers {spaces['one']:.0f}, on two used in turn "
        f"({spaces['extra_bytes'] / 2**20:.1f} MiB more) {spaces['two']:.0f}: "
        f"{100 * (spaces['two'] / spaces['one'] - 1):+.0f}%"))
    cross = results[2]["cross_core"]
    rate = cross["bytes"] / cross["remote"] / 1e3  # GB/s
    moved = results[2]["cross_core_bytes"]
    print(f"cross-core: 256 KB the other core just wrote read in {cross['remote']:.1f} us ({rate:.0f} GB/s), "
          f"256 KB of its own in {cross['own']:.1f} us ({cross['bytes'] / cross['own'] / 1e3:.0f} GB/s); a "
          f"step makes each thread read {moved / 2**20:.2f} MiB the other wrote: {moved / rate / 1e3:.0f} us "
          f"a batch at that rate")
    split = results[2].get("split_batch")
    if split is None:
        print("batch split between two threads: not measured (numba's workqueue layer allows kernels from one "
              "Python thread only)")
        return
    print(f"batch split between two threads: one thread, 128 samples {split['one_thread_128']:.0f}, 64 samples "
          f"{split['one_thread_64']:.0f}; two threads at once, 64 samples each {split['two_threads_64_each']:.0f} "
          f"-> {split['one_thread_128'] / split['two_threads_64_each']:.2f}x")


if __name__ == "__main__":
    main()
