"""The parallel trainer (WASAP-SGD) against the sequential trainer and dense numpy oracles.

- One synchronous worker reproduces :class:`wasap.train.SequentialTrainer` bit for bit: the server seeds
  its generator as the sequential trainer does and draws the worker's sample orders and the evolutions
  from it in the same order, the partition of worker 0 of 1 is the whole data set in order, and batch i
  drops out with ``stream_seed(seed, i * K + w)`` = ``stream_seed(seed, i)``.
- The server's masking of stale gradients, and the final averaging and pruning, against dense matrices.
- Shared memory hygiene: no segment with the run's prefix is left after a normal run, Ctrl-C, or a
  worker killed with SIGKILL (the run stops with a clear error naming the worker and keeps the model).
- Two asynchronous workers learn about as well as the sequential trainer.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from wasap import topology
from wasap.config import TrainConfig
from wasap.data import Dataset
from wasap.model import SparseLayer, SparseMLP
from wasap.optim import LayerRates
from wasap.parallel import fit_parallel
from wasap.parallel.messages import GradientPushed
from wasap.parallel.server import ParameterServer, apply_gradient, average_replicas
from wasap.parallel.shm import SharedBlocks, SharedMemoryFull, check_free_space, leftover_segments, run_prefix
from wasap.parallel.transport import LayerState
from wasap.train import fit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blobs(n=3000, n_features=20, n_classes=3, seed=0):
    """A small learnable problem: Gaussian blobs around random centres, 70/30 split."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, n_features)).astype(np.float32) * 1.5
    y = rng.integers(0, n_classes, n)
    X = (centres[y] + rng.standard_normal((n, n_features)).astype(np.float32)).astype(np.float32)
    cut = int(0.7 * n)
    return Dataset("blobs", X[:cut], y[:cut], X[cut:], y[cut:], np.arange(n_classes), "blobs")


def _dense(layer):
    out = np.zeros((layer.n_in, layer.n_out), dtype=np.float64)
    rows = np.repeat(np.arange(layer.n_in), np.diff(layer.indptr))
    out[rows, layer.indices] = layer.data
    return out


def _dense_of(indptr, indices, values, n_out):
    out = np.zeros((indptr.shape[0] - 1, n_out), dtype=np.float64)
    rows = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))
    out[rows, indices] = values
    return out


def _no_segments_of(pid):
    return leftover_segments(f"wasap_{pid}_")


# -- 1. one synchronous worker = the sequential trainer ------------------------------------------------------


@pytest.mark.parametrize("init,rates", [("he-uniform", {}), ("he-uniform-sparse", dict(lr_fan_in=6.0)),
                                        ("he-uniform", dict(output_lr=0.003, zero_output=True)),
                                        ("he-uniform", dict(augment="1x4x5"))])  # 20 features as images
def test_one_synchronous_worker_reproduces_the_sequential_trainer(init, rates):
    data = _blobs()
    config = TrainConfig(hidden=(48, 32), epsilon=4, epochs=4, batch_size=32, seed=7, threads=1, workers=1,
                         sync=True, warmup_epochs=0, importance_pruning=True, ip_start=2, ip_every=2, init=init,
                         **rates)
    sequential = SparseMLP.from_config(data.n_features, data.n_classes, config)
    parallel = sequential.copy()
    expected = fit(sequential, data, config, log=None, progress=False)
    got = fit_parallel(parallel, data, config, log=None)
    assert got["stopped"] == "completed"
    assert got["nnz_end"] == expected["nnz_end"] and got["nnz_end"] != got["nnz_start"]  # IP ran
    # Bit-for-bit equal today (the server's update kernel is written as the fused backward kernel
    # writes it); the tolerance leaves room for kernels that reorder a sum.
    for a, b in zip(sequential.layers, parallel.layers):
        np.testing.assert_array_equal(a.indptr, b.indptr)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_allclose(a.data, b.data, rtol=0, atol=1e-6)
        np.testing.assert_allclose(a.bias, b.bias, rtol=0, atol=1e-6)
    for e, g in zip(expected["history"], got["history"]):
        assert e["nnz"] == g["nnz"]
        assert abs(e["train_loss"] - g["train_loss"]) < 1e-5
        assert abs(e["test_accuracy"] - g["test_accuracy"]) < 1e-9
    assert {"workers", "sync", "phase2_start", "start_method"} <= set(got["parallel"])


def _sparse_blobs(n=2000, n_features=300, n_classes=3, seed=1):
    """A learnable sparse problem: 30 informative features at 20% nonzeros, the others at 2%."""
    import scipy.sparse

    rng = np.random.default_rng(seed)

    def block(width, density):
        return scipy.sparse.random(n, width, density=density, format="csr", dtype=np.float32, random_state=rng,
                                   data_rvs=lambda k: rng.uniform(0.5, 2.0, k))

    informative = block(30, 0.2)
    X = scipy.sparse.hstack([informative, block(n_features - 30, 0.02)], format="csr")
    y = np.asarray((informative @ rng.standard_normal((30, n_classes))).argmax(axis=1)).ravel()
    cut = int(0.7 * n)
    return Dataset("sparse blobs", X[:cut], y[:cut], X[cut:], y[cut:], np.arange(n_classes), "sparse blobs")


@pytest.mark.parametrize("sync", [True, False])
def test_workers_train_sparse_data_as_the_sequential_trainer_does(sync):
    """Sparse X over shared memory: each worker's rows a CSR matrix over the shared arrays.

    The sequential trainer defers the first layer's steps at gradient 0 (wasap.sparse_input.DeferredDecay)
    where the server steps every weight, so one synchronous worker equals it up to float32 rounding.
    """
    data = _sparse_blobs()
    assert data.is_sparse
    config = TrainConfig(hidden=(48, 32), epsilon=4, epochs=4 if sync else 10, batch_size=32, seed=7, threads=1,
                         workers=1 if sync else 2, sync=sync, warmup_epochs=0, importance_pruning=sync, ip_start=2,
                         ip_every=2, activation="relu", alpha=None, lr=0.05, dropout=0.0)
    sequential = SparseMLP.from_config(data.n_features, data.n_classes, config)
    parallel = sequential.copy()
    expected = fit(sequential, data, config.replace(workers=1), log=None, progress=False)
    got = fit_parallel(parallel, data, config, log=None)
    assert got["stopped"] == "completed"
    if sync:
        assert got["nnz_end"] == expected["nnz_end"] and got["nnz_end"] != got["nnz_start"]  # IP ran
        for a, b in zip(sequential.layers, parallel.layers):
            np.testing.assert_array_equal(a.indptr, b.indptr)
            np.testing.assert_array_equal(a.indices, b.indices)
            np.testing.assert_allclose(a.data, b.data, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(a.bias, b.bias, rtol=1e-4, atol=1e-5)
        for e, g in zip(expected["history"], got["history"]):
            assert abs(e["train_loss"] - g["train_loss"]) < 1e-4
    else:
        # Two asynchronous workers learn it about as well as one process does.
        assert expected["best_test_accuracy"] > 0.8, "the problem should be learnable"
        assert got["best_test_accuracy"] >= expected["best_test_accuracy"] - 0.06, (got["best_test_accuracy"],
                                                                                    expected["best_test_accuracy"])


def test_synchronous_runs_repeat_exactly_whatever_order_the_gradients_arrive_in():
    # Three workers: their gradients reach the server in an order that depends on timing. The average
    # sums them in worker order and the server draws each worker's next sample order in worker order,
    # so two runs of one seed give the same model bit for bit (the asynchronous variant does not).
    data = _blobs(n=1500)
    config = TrainConfig(hidden=(32, 16), epsilon=4, epochs=3, batch_size=16, seed=5, threads=1, workers=3,
                         sync=True)
    start = SparseMLP.from_config(data.n_features, data.n_classes, config)
    first, second = start.copy(), start.copy()
    fit_parallel(first, data, config, log=None)
    fit_parallel(second, data, config, log=None)
    for a, b in zip(first.layers, second.layers):
        for name in ("indptr", "indices", "data", "velocity", "bias", "bias_velocity"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert not np.array_equal(first.layers[0].data, start.layers[0].data)


# -- 2. a stale gradient updates exactly the surviving connections -----------------------------------------


class _LocalTransport:
    """The parts of a ServerTransport that ParameterServer uses, over private arrays (one process)."""

    def __init__(self, model, grads, bias_grads):
        self.n_layers = len(model.layers)
        self.sizes = model.sizes
        self.model = model
        self.versions = [0] * self.n_layers
        self.grads, self.bias_grads = grads, bias_grads

    @contextlib.contextmanager
    def lock(self, layer):
        yield

    def layer_state(self, l):
        layer = self.model.layers[l]
        return LayerState(version=self.versions[l], nnz=layer.nnz, indptr=layer.indptr, indices=layer.indices,
                          data=layer.data, velocity=layer.velocity, bias=layer.bias, bias_velocity=layer.bias_velocity)

    def gradient(self, worker, slot, l):
        return self.grads[l], self.bias_grads[l]

    def write_layer(self, l, version, indptr, indices, data, velocity):
        layer = self.model.layers[l]
        layer.set_structure(indptr.copy(), indices.copy(), data.copy(), velocity.copy())
        self.versions[l] = version


def test_gradient_from_an_older_topology_updates_exactly_the_surviving_connections():
    rng = np.random.default_rng(3)
    model = SparseMLP.random([30, 25, 4], epsilon=3, seed=1, warn=False)
    for layer in model.layers:
        layer.velocity[:] = rng.standard_normal(layer.nnz).astype(np.float32) * 0.01
    config = TrainConfig(hidden=(25,), epsilon=3, zeta=0.4, lr=0.1, momentum=0.9, weight_decay=0.01, seed=2)
    # Gradients computed on version 0, in version 0's nonzero order.
    grads = [rng.standard_normal(layer.nnz).astype(np.float32) for layer in model.layers]
    bias_grads = [rng.standard_normal(layer.n_out).astype(np.float32) for layer in model.layers]
    old = model.copy()
    transport = _LocalTransport(model, grads, bias_grads)
    server = ParameterServer(transport, config, n_workers=2, steps_per_epoch=10)
    server.end_of_epoch(1, old.copy())  # SET: version 1
    evolved = model.copy()
    assert server.versions == [1, 1]
    server.apply(GradientPushed(worker=0, slot=0, versions=(0, 0), loss=0.0, n_correct=0, n_samples=32,
                                applied=(False, False)))
    assert server.stats.stale == 1 and server.stats.dropped == 0
    lr, mu, wd = config.lr, config.momentum, config.weight_decay
    for l, (before, after) in enumerate(zip(evolved.layers, model.layers)):
        W, V = _dense(before), _dense_of(before.indptr, before.indices, before.velocity, before.n_out)
        G = _dense_of(old.layers[l].indptr, old.layers[l].indices, grads[l], before.n_out)
        old_mask = _dense_of(old.layers[l].indptr, old.layers[l].indices, np.ones(old.layers[l].nnz), before.n_out)
        new_mask = _dense(SparseLayer(before.n_in, before.n_out, before.indptr, before.indices,
                                      np.ones(before.nnz))) > 0
        both = (old_mask > 0) & new_mask
        assert both.sum() < new_mask.sum(), "the evolution should have replaced some connections"
        V_expected = np.where(both, mu * V - lr * (G + wd * W), V)
        W_expected = np.where(both, W + V_expected, W)
        np.testing.assert_array_equal(after.indices, before.indices)  # topology untouched by the update
        np.testing.assert_allclose(_dense(after), W_expected, atol=1e-6)
        np.testing.assert_allclose(_dense_of(after.indptr, after.indices, after.velocity, after.n_out), V_expected,
                                   atol=1e-6)
        # Biases: momentum SGD without decay.
        bv = mu * before.bias_velocity - lr * bias_grads[l]
        np.testing.assert_allclose(after.bias, before.bias + bv, atol=1e-6)


def test_apply_gradient_in_current_order_is_momentum_sgd():
    rng = np.random.default_rng(0)
    w, v, g = (rng.standard_normal(50).astype(np.float32) for _ in range(3))
    w0, v0 = w.astype(np.float64), v.astype(np.float64)
    apply_gradient(w, v, g, lr=0.05, momentum=0.9, weight_decay=0.01)
    v_expected = 0.9 * v0 - 0.05 * (g + 0.01 * w0)
    np.testing.assert_allclose(v, v_expected, atol=1e-6)
    np.testing.assert_allclose(w, w0 + v_expected, atol=1e-6)


# -- 3. averaging and pruning = dense numpy ---------------------------------------------------------------


def test_a_worker_applies_its_gradient_only_to_layers_whose_topology_is_unchanged():
    # Through the real shared-memory transport (no processes): the worker-side step is momentum SGD
    # written out in numpy on the served arrays; after the server serves a new version of a layer, that
    # layer is left alone (flag False, for the server to remap) while the others are still applied.
    import multiprocessing

    from wasap.parallel.shm_transport import SharedMemoryTransport, SharedMemoryWorkerTransport

    model = SparseMLP.random([6, 8, 3], epsilon=2, seed=3)
    X = np.zeros((4, 6), dtype=np.float32)
    y = np.zeros(4, dtype=np.int64)
    server = SharedMemoryTransport(model, X, y, n_workers=1, n_slots=2, partitions=[np.arange(4)], replicas=False,
                                   context=multiprocessing.get_context("spawn"))
    try:
        worker = SharedMemoryWorkerTransport(server.worker_handle(0))
        rng = np.random.default_rng(0)
        grads, bias_grads = worker.gradient_slot(1, model.nnz_per_layer())
        for g, bg in zip(grads, bias_grads):
            g[:] = rng.standard_normal(g.shape[0])
            bg[:] = rng.standard_normal(bg.shape[0])
        before = [{k: np.array(v) for k, v in server.layer_state(l)._asdict().items() if k != "version"}
                  for l in range(2)]
        lr, momentum, decay, lr_fan_in, output_ratio = 0.1, 0.9, 0.01, 2.0, 0.25
        rates = LayerRates(lr_fan_in=lr_fan_in, output_ratio=output_ratio)
        # Each layer's rate as the worker computes it from the layers it pulled.
        lrs = [rates.layer_lr(lr, l, model.sizes, layer.nnz) for l, layer in enumerate(model.layers)]
        assert worker.apply_gradient(1, [0, 0], lrs, momentum=momentum, weight_decay=decay) == (True, True)
        for l, layer in enumerate(model.layers):
            rate = lr * (output_ratio if l == 1 else min(1.0, lr_fan_in / (layer.nnz / layer.n_out)))
            velocity = momentum * before[l]["velocity"] - rate * (grads[l] + decay * before[l]["data"])
            bias_velocity = momentum * before[l]["bias_velocity"] - rate * bias_grads[l]
            state = server.layer_state(l)
            np.testing.assert_allclose(state.velocity, velocity, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(state.data, before[l]["data"] + velocity, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(state.bias, before[l]["bias"] + bias_velocity, rtol=1e-6, atol=1e-7)
        # The server serves version 1 of layer 0 (here the same arrays): a gradient of version 0 no longer
        # touches it.
        layer0 = server.layer_state(0)
        server.write_layer(0, 1, layer0.indptr.copy(), layer0.indices.copy(), layer0.data.copy(),
                           layer0.velocity.copy())
        frozen = np.array(server.layer_state(0).data)
        moving = np.array(server.layer_state(1).data)
        assert worker.apply_gradient(1, [0, 0], lrs, momentum=momentum, weight_decay=decay) == (False, True)
        np.testing.assert_array_equal(server.layer_state(0).data, frozen)
        assert not np.array_equal(server.layer_state(1).data, moving)
        worker.close()
    finally:
        server.close()


@pytest.mark.parametrize("target_fraction", [0.5, 1.0, 3.0])
def test_average_and_prune_to_target_matches_dense(target_fraction):
    rng = np.random.default_rng(5)
    n_in, n_out, K = 12, 9, 3
    replicas = []
    for k in range(K):
        layer = SparseLayer.random(n_in, n_out, 2.0, rng)
        layer.bias[:] = rng.standard_normal(n_out).astype(np.float32)
        replicas.append([layer])
    target = int(target_fraction * replicas[0][0].nnz)
    (averaged,) = average_replicas(replicas, [target])
    dense_mean = np.mean([_dense(r[0]) for r in replicas], axis=0)
    flat = dense_mean.ravel()
    nonzero = np.flatnonzero(flat)
    # The largest |mean| values; ties broken by the lower position (row-major key).
    order = sorted(nonzero, key=lambda key: (-abs(flat[key]), key))[:target]
    expected = np.zeros_like(flat)
    expected[order] = flat[order]
    assert averaged.nnz == min(target, nonzero.shape[0])
    np.testing.assert_allclose(_dense(averaged).ravel(), expected, atol=1e-6)
    np.testing.assert_allclose(averaged.bias, np.mean([r[0].bias for r in replicas], axis=0), atol=1e-6)
    assert (np.diff(topology.keys_from_csr(averaged.indptr, averaged.indices, n_out)) > 0).all()


# -- 4. shared memory hygiene ------------------------------------------------------------------------------


def test_shared_blocks_unlink_once_and_check_free_space():
    prefix = run_prefix()
    blocks = SharedBlocks.create(prefix, {"a": ((10,), np.float32), "b": ((3, 4), np.int64)})
    assert set(leftover_segments(prefix)) == {prefix + "a", prefix + "b"}
    blocks["a"][:] = 2.0
    attached = SharedBlocks.attach(prefix, blocks.specs)
    assert attached["a"].sum() == 20.0
    attached.close()
    assert leftover_segments(prefix)  # closing an attachment never unlinks
    blocks.close()
    blocks.close()
    assert leftover_segments(prefix) == []
    with pytest.raises(SharedMemoryFull, match="needs .* free"):
        check_free_space(1 << 60)


def test_normal_run_leaves_no_segment(tmp_path):
    data = _blobs(n=1500)
    config = TrainConfig(hidden=(32,), epsilon=4, epochs=2, batch_size=32, workers=2, seed=1, threads=1)
    model = SparseMLP.from_config(data.n_features, data.n_classes, config)
    summary = fit_parallel(model, data, config, out_dir=str(tmp_path / "run"), log=None)
    assert summary["stopped"] == "completed" and summary["epochs_completed"] == 2
    assert _no_segments_of(os.getpid()) == []
    for name in ("metrics.jsonl", "summary.json", "model.npz", "profile.json"):
        assert (tmp_path / "run" / name).exists()
    profile = json.loads((tmp_path / "run" / "profile.json").read_text())
    assert set(profile["time_breakdown"]) == {"worker 0", "worker 1"}
    assert SparseMLP.load(str(tmp_path / "run" / "model.npz")).nnz_per_layer() == model.nnz_per_layer()


def test_self_applied_steps_reported_in_groups_are_all_counted(tmp_path):
    # 1050 rows a partition, batch 16: the workers report their self-applied steps 4 at a time. Every
    # step must still count: the server's updates cover the epochs' samples, the layers it did not apply
    # itself were applied by the workers, and the run learns as well as the sequential trainer.
    data = _blobs(n=3000)
    config = TrainConfig(hidden=(32, 32), epsilon=4, epochs=3, batch_size=16, workers=2, seed=2, threads=1)
    sequential = SparseMLP.from_config(data.n_features, data.n_classes, config)
    parallel = sequential.copy()
    expected = fit(sequential, data, config.replace(workers=1), log=None, progress=False)
    summary = fit_parallel(parallel, data, config, out_dir=str(tmp_path / "run"), log=None)
    assert summary["stopped"] == "completed" and summary["epochs_completed"] == 3
    profile = json.loads((tmp_path / "run" / "profile.json").read_text())
    server = profile["server"]
    n_layers = len(config.hidden) + 1
    for w in range(2):  # each worker held the layers' locks to pull and to apply, for part of its time
        phase1 = profile["time_breakdown"][f"worker {w}"]["phase1"]
        assert 0 < phase1["lock_held"] < phase1["wall"]
        assert phase1["in_mpi"] == 0  # shared memory: no MPI call
    assert server["updates"] == server["gradients"] >= 3 * data.X_train.shape[0] // 16
    # Only steps in flight across one of the 2 evolutions (2 workers x 2 slots) can be stale.
    assert server["stale"] <= 2 * 2 * 2
    assert n_layers * (server["updates"] - server["stale"]) <= server["worker_applied_layers"]
    assert server["worker_applied_layers"] <= n_layers * server["updates"]
    assert summary["final_test_accuracy"] >= expected["final_test_accuracy"] - 0.03


_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from wasap.config import TrainConfig
    from wasap.data import Dataset
    from wasap.model import SparseMLP
    from wasap.parallel import fit_parallel

    if __name__ == "__main__":
        rng = np.random.default_rng(0)
        X = rng.standard_normal((4000, 30)).astype(np.float32)
        y = (X[:, 0] > 0).astype(np.int64)
        data = Dataset("toy", X[:3000], y[:3000], X[3000:], y[3000:], np.arange(2), "toy")
        config = TrainConfig(hidden=(64, 64), epsilon=5, epochs=10000, batch_size=16, workers=2, seed=0,
                             threads=1)
        model = SparseMLP.from_config(30, 2, config)
        summary = fit_parallel(model, data, config, out_dir=sys.argv[1], log=lambda line: print(line, flush=True))
        print("STOPPED", summary["stopped"], flush=True)
""")


def _start_script(tmp_path):
    script = tmp_path / "train_forever.py"
    script.write_text(_SCRIPT)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the training script did not get through an epoch:\n{process.communicate()[0]}")
        time.sleep(0.2)
    return process, out


def _worker_pids(pid):
    import psutil

    children = psutil.Process(pid).children()
    return [c.pid for c in children if "resource_tracker" not in " ".join(c.cmdline())]


def test_ctrl_c_keeps_the_model_and_leaves_no_segment(tmp_path):
    process, out = _start_script(tmp_path)
    assert _no_segments_of(process.pid)  # the run's blocks exist while it trains
    process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("the run did not stop within 60 s of Ctrl-C")
    assert process.returncode == 0, output
    assert "STOPPED interrupted" in output
    assert (out / "model.npz").exists() and (out / "profile.json").exists()
    assert json.loads((out / "summary.json").read_text())["stopped"] == "interrupted"
    assert _no_segments_of(process.pid) == []


def test_a_worker_killed_with_sigkill_stops_the_run_with_a_clear_error(tmp_path):
    process, out = _start_script(tmp_path)
    workers = _worker_pids(process.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("the run hung after a worker was killed")
    assert process.returncode != 0
    assert "WorkerFailed" in output and "exit code -9" in output and "SIGKILL" in output, output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "worker-failed" and "exit code -9" in summary["error"]
    assert (out / "model.npz").exists()
    assert _no_segments_of(process.pid) == []


# -- 5. two asynchronous workers learn like the sequential trainer ----------------------------------------------


def test_two_asynchronous_workers_reach_the_sequential_accuracy():
    data = _blobs(n=4000, n_features=20, n_classes=4, seed=2)
    config = TrainConfig(hidden=(64, 64), epsilon=5, epochs=5, batch_size=32, seed=3, threads=1)
    sequential = SparseMLP.from_config(data.n_features, data.n_classes, config)
    parallel = sequential.copy()
    expected = fit(sequential, data, config, log=None, progress=False)["final_test_accuracy"]
    got = fit_parallel(parallel, data, config.replace(workers=2), log=None)
    assert got["stopped"] == "completed"
    assert expected > 0.6, "the problem should be learnable"
    assert got["final_test_accuracy"] >= expected - 0.05, (got["final_test_accuracy"], expected)


def test_phase_two_averages_replicas_back_to_the_target_nnz():
    data = _blobs(n=3000, n_features=20, n_classes=3, seed=4)
    config = TrainConfig(hidden=(48, 48), epsilon=4, epochs=4, batch_size=32, seed=1, threads=1, workers=2,
                         phase2_start=3)
    model = SparseMLP.from_config(data.n_features, data.n_classes, config)
    start = model.nnz_per_layer()
    summary = fit_parallel(model, data, config, log=None)
    assert summary["stopped"] == "completed" and summary["epochs_completed"] == 4
    assert model.nnz_per_layer() == start  # SET keeps nnz; the average is pruned back to it
    assert summary["final_test_accuracy"] > 0.6
    assert summary["parallel"]["phase2_start"] == 3


def test_the_cpu_sampler_samples_processes_and_the_ones_that_report_their_own_use():
    from wasap.profiling import CpuSampler, build_profile, time_table_shape

    reports = iter([None, (50.0, 123_000_000)] + [(100.0, 125_000_000)] * 100)
    sampler = CpuSampler({"server": os.getpid()}, interval=0.05, phase=lambda: 1,
                         reported={"worker 0": lambda: next(reports)}).start()
    time.sleep(0.4)
    sampler.stop()
    profile = build_profile(sampler, np.zeros(time_table_shape(1)))
    local, remote = profile["samples"]["processes"]["server"], profile["samples"]["processes"]["worker 0"]
    assert len(remote["cpu_percent"]) == len(local["cpu_percent"]) == len(profile["samples"]["t"]) >= 3
    assert remote["pid"] is None and remote["cpu_percent"][:2] == [None, 50.0] and set(remote["uss"]) == {None}
    assert profile["summary"]["worker 0"]["peak_rss_bytes"] == 125_000_000
    assert 50.0 < profile["summary"]["worker 0"]["mean_cpu_percent_phase1"] <= 100.0
