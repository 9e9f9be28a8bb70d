"""The examples, the Python blocks of the README and of the docs, and tools/plot_run.py, run as a user runs them."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _fashion_mnist_dir():
    """A folder with the Fashion-MNIST IDX files, or None."""
    candidates = [os.environ.get("WASAP_FASHION_MNIST"), ROOT.parent / "shared" / "datasets" / "fashion-mnist",
                  "/usr/share/datasets/fashion-mnist"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "train-labels-idx1-ubyte.gz").exists():
            return str(candidate)
    return None


def _run(args, cwd, **extra_env):
    """Run ``python ARGS`` in ``cwd`` as a user would (wasap importable, quick mode); return stdout."""
    env = dict(os.environ, WASAP_EXAMPLES_QUICK="1", **extra_env)
    # The checkout first, so that the tests exercise this tree even where wasap is not installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _number(pattern, text):
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the output:\n{text}"
    return float(match.group(1))


def test_pipeline_on_digits_reaches_90_percent(tmp_path):
    out = _run([EXAMPLES / "sklearn_pipeline_digits.py", "--quick"], tmp_path)
    assert _number(r"test accuracy: ([0-9.]+)", out) >= 0.9


def test_sparse_bag_of_words_learns_at_least_as_the_linear_model(tmp_path):
    out = _run([EXAMPLES / "sparse_bag_of_words.py", "--quick"], tmp_path)
    wasap = _number(r"wasap test accuracy: ([0-9.]+)", out)
    linear = _number(r"regression test accuracy: ([0-9.]+)", out)
    assert wasap >= 0.7 and wasap >= linear - 0.02, out
    assert "bytes as CSR" in out


def test_grid_search_on_madelon(tmp_path):
    out = _run([EXAMPLES / "grid_search_madelon.py", "--quick"], tmp_path)
    best = re.search(r"best params: (\{.*\})", out).group(1)
    assert "'epsilon'" in best and "'alpha'" in best
    assert 0.4 <= _number(r"best cross-validated accuracy: ([0-9.]+)", out) <= 1
    assert 0.4 <= _number(r"test accuracy of the best setting: ([0-9.]+)", out) <= 1


def test_paper_madelon_writes_a_run_and_plots_it(tmp_path):
    out = _run([EXAMPLES / "paper_madelon.py", "--quick", "--out", tmp_path / "run", "--plot", tmp_path / "run.png"],
               tmp_path)
    assert 0 <= _number(r"test accuracy: final ([0-9.]+)", out) <= 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs_completed"] == 20
    # Quick mode prunes from epoch 10: fewer weights at the end, which the per-layer export shows.
    assert sum(summary["nnz_end"]) < sum(summary["nnz_start"])
    assert f"nnz {summary['nnz_end'][0]}," in out
    if "plot: skipped" not in out:
        assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paper_fashion_mnist(tmp_path):
    data_dir = _fashion_mnist_dir()
    if data_dir is None:
        pytest.skip("Fashion-MNIST IDX files not found (set WASAP_FASHION_MNIST to their folder)")
    out = _run([EXAMPLES / "paper_fashion_mnist.py", "--quick", "--data-dir", data_dir, "--out", tmp_path / "run"],
               tmp_path)
    assert "first 6000 train / 2000 test samples" in out
    # Four epochs of a small network: well above chance (10%), far from the paper's 91%.
    assert _number(r"test accuracy: final ([0-9.]+)", out) > 0.4


def test_parallel_profile(tmp_path):
    out = _run([EXAMPLES / "parallel_profile.py", "--quick", "--out", tmp_path / "run"], tmp_path)
    if "not available" in out:
        return
    assert 0 <= _number(r"test accuracy: final ([0-9.]+)", out) <= 1
    assert "where the time went" in out
    profile = json.loads((tmp_path / "run" / "profile.json").read_text())
    assert profile


def _python_script(path, tmp_path):
    """The ```python blocks of a Markdown page, in order, as one script in ``tmp_path``."""
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), re.S)
    assert blocks, f"no Python blocks in {path}"
    script = tmp_path / (path.stem + ".py")
    script.write_text("\n".join(blocks))
    return script


def test_readme_python_blocks_run(tmp_path):
    out = _run([_python_script(ROOT / "README.md", tmp_path)], tmp_path)
    assert 0.5 <= _number(r"best test accuracy ([0-9.]+)", out) <= 1
    assert (tmp_path / "madelon-run" / "model.npz").exists()
    # The loaded model predicts raw rows as Madelon's own labels.
    predicted = re.search(r"^\[([-0-9 ]+)\]$", out, re.M)
    assert predicted and set(predicted.group(1).split()) <= {"-1", "1"}, out


def test_user_guide_python_blocks_run(tmp_path):
    out = _run([_python_script(ROOT / "docs" / "guide.md", tmp_path)], tmp_path)
    assert "SparseMLP(500-400-100-400-2, nnz=19800" in out
    assert _number(r"digits test accuracy: ([0-9.]+)", out) >= 0.9
    assert (tmp_path / "madelon-run" / "metrics.jsonl").exists()
    assert _number(r"best epoch \d+: ([0-9.]+)", out) > 0.5


def test_big_networks_python_block_runs(tmp_path):
    out = _run([_python_script(ROOT / "docs" / "big-networks.md", tmp_path)], tmp_path)
    # 500000 inputs an output neuron: lr 6e-5 * n, output lr 50 / n, as the page says.
    assert out.split() == ["tanh", "he-uniform-sparse", "30.0", "0.0001", "0.0"]


def test_parallel_python_block_runs(tmp_path):
    out = _run([_python_script(ROOT / "docs" / "parallel.md", tmp_path)], tmp_path)
    accuracy, workers = out.split()
    assert 0 <= float(accuracy) <= 1 and workers == "2"
    assert (tmp_path / "parallel-run" / "profile.json").exists()


def test_plot_run_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    records = [dict(epoch=e, train_loss=1 / e, train_accuracy=1 - 1 / (e + 1), test_loss=1.2 / e,
                    test_accuracy=0.9 - 1 / (e + 2), nnz=[100 - e, 50, 20]) for e in range(1, 6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    out = _run([ROOT / "tools" / "plot_run.py", run, "--out", tmp_path / "curves.png"], tmp_path)
    assert "wrote" in out
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_run_without_matplotlib_says_how_to_get_it(tmp_path):
    # sys.modules[name] = None makes "import name" fail, as when matplotlib is not installed.
    code = ("import runpy, sys; sys.modules['matplotlib'] = None; sys.argv = ['plot_run.py', '.']; "
            f"runpy.run_path({str(ROOT / 'tools' / 'plot_run.py')!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert "pip install 'wasap[plot]'" in result.stderr


def test_plot_run_explains_a_folder_without_metrics(tmp_path):
    pytest.importorskip("matplotlib")
    result = subprocess.run([sys.executable, ROOT / "tools" / "plot_run.py", tmp_path], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert "metrics.jsonl not found" in result.stderr
