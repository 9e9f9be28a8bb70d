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
