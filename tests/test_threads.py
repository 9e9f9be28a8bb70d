"""Thread control: numba's threading layer named in one warning, and thread counts kept as asked."""

import json
import os
import subprocess
import sys

import pytest

_THREAD_CHOICE = """
import json, warnings
from wasap import threads
from wasap.threads import default_threads
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    layer = threads.threading_layer()
    chosen = dict(default=default_threads(), none=threads.set_threads(None), two=threads.set_threads(2))
print(json.dumps(dict(layer=layer, chosen=chosen, warnings=[str(w.message) for w in caught])))
"""


@pytest.mark.parametrize("layer", ["workqueue", "default"])
def test_numbas_slow_workqueue_layer_is_named_in_one_warning_and_threads_stay_as_asked(layer):
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    env.pop("NUMBA_THREADING_LAYER", None)
    if layer == "workqueue":
        env["NUMBA_THREADING_LAYER"] = "workqueue"  # what numba takes without OpenMP or TBB
    done = subprocess.run([sys.executable, "-c", _THREAD_CHOICE], env=env, capture_output=True, text=True,
                          check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # Two threads are faster than one on workqueue too (it slows every kernel down): counts are kept.
    assert result["chosen"]["none"] == result["chosen"]["two"] == 2
    assert 1 <= result["chosen"]["default"] <= 2  # idle cores, by the load average
    if layer == "workqueue":
        assert result["layer"] == "workqueue"
        assert len(result["warnings"]) == 1
        assert "workqueue" in result["warnings"][0] and "libgomp1" in result["warnings"][0]
    else:
        if result["layer"] == "workqueue":
            pytest.skip("this numba has neither OpenMP nor TBB: the fast path cannot be tested here")
        assert result["warnings"] == []


def _govern(governor, seconds_per_sample, steps, batch=128):
    """Run ``steps`` simulated steps whose time at each count is ``seconds_per_sample(threads, step)``."""
    counts = []
    for step in range(steps):
        threads = governor.threads()
        counts.append(threads)
        governor.record(seconds_per_sample(threads, step) * batch, batch)
    return counts


def test_the_governor_keeps_the_faster_count_and_probes_the_other_ever_less_often():
    from wasap.threads import PROBE_EVERY_MAX, ThreadGovernor

    idle = ThreadGovernor(2, start=2)  # two threads 1.6x as fast as one
    counts = _govern(idle, lambda threads, step: 1.0 / (1.6 if threads == 2 else 1.0), 5000)
    assert idle.current == 2 and counts[-1] == 2
    assert counts.count(1) <= 2 * (5000 // PROBE_EVERY_MAX + 8)  # probes of 2 steps, ever rarer
    assert idle.summary() == {"threads_in_use": 2, "steps_at": {"1": counts.count(1), "2": counts.count(2)}}

    busy = ThreadGovernor(2, start=2)  # another process on the cores: two threads 4x slower than one
    counts = _govern(busy, lambda threads, step: 4.0 if threads == 2 else 1.0, 5000)
    assert busy.current == 1 and counts[:100].count(2) < 60  # it leaves two threads within the first epoch
    assert counts[100:].count(2) < 0.01 * 4900


def test_the_governor_follows_the_machine_when_it_changes():
    from wasap.threads import ThreadGovernor

    def machine(threads, step):  # busy for steps 2000-3999, idle before and after
        busy = 2000 <= step < 4000
        return (4.0 if busy else 1 / 1.6) if threads == 2 else 1.0

    governor = ThreadGovernor(2)
    counts = _govern(governor, machine, 6000)
    assert counts[1900:2000].count(2) > 90          # idle: two threads
    assert counts[3000:4000].count(1) > 950         # busy: one, found within the first thousand steps
    assert counts[5000:6000].count(2) > 950         # idle again: back to two
    # Noisy steps (a hiccup of 20x in one step of 50) do not make it move.
    steady = ThreadGovernor(2)
    counts = _govern(steady, lambda threads, step: (20.0 if step % 50 == 7 else 1.0) / (1.6 if threads == 2 else 1),
                     3000)
    assert counts[500:].count(2) > 0.97 * 2500


def test_a_governor_on_a_big_machine_climbs_by_halves_and_doubles():
    from wasap.threads import ThreadGovernor

    # 64 cores, of which about 16 are free: 16 threads are fastest, more or fewer are slower.
    best = 16
    governor = ThreadGovernor(64)
    _govern(governor, lambda threads, step: 1.0 / min(threads, best) * (1 + max(0, threads - best) / 8), 20000)
    assert governor.current == best
    one = ThreadGovernor(1)
    assert set(_govern(one, lambda threads, step: 1.0, 100)) == {1}
