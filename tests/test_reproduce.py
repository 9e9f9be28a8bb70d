"""tools/reproduce.py end to end on Madelon (shipped): its runs, its results page, and a campaign that
continues where it stopped."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "reproduce.py"


def _reproduce(*args, cwd):
    result = subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True,
                            cwd=cwd, timeout=600, env={**os.environ, "WASAP_DATASETS": ""})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_quick_campaign_writes_each_runs_figures_and_goes_on_where_it_stopped(tmp_path):
    out = tmp_path / "runs"
    log = _reproduce("--quick", "--out", out, "--only", "^madelon_all-relu_no-ip_sequential$", cwd=tmp_path)
    assert "starting madelon_all-relu_no-ip_sequential seed 0" in log
    run = out / "madelon_all-relu_no-ip_sequential" / "seed0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"] == "completed" and summary["epochs_completed"] == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(record["gradient_flow"] > 0 for record in records)
    page = (out / "results.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| madelon | SET-MLP, sequential, All-ReLU"))
    assert f"| {100 * summary['best_test_accuracy']:.2f} (1) |" in row
    assert f"{sum(summary['nnz_start'])} -> {sum(summary['nnz_end'])}" in row
    assert "| 71.33 |" in row  # the paper's figure beside it
    # A finished run is kept as it is: a second campaign runs nothing.
    again = _reproduce("--quick", "--out", out, "--only", "^madelon_all-relu_no-ip_sequential$", cwd=tmp_path)
    assert "starting" not in again and "continuing" not in again
    assert json.loads((run / "summary.json").read_text())["started_at"] == summary["started_at"]


def test_a_campaign_stopped_mid_run_continues_that_run_from_its_checkpoint(tmp_path):
    out = tmp_path / "runs"
    args = [sys.executable, str(TOOL), "--out", str(out), "--epochs", "300", "--seeds", "1",
            "--only", "^madelon_relu_ip_sequential$", "--results", str(tmp_path / "results.md")]
    metrics = out / "madelon_relu_ip_sequential" / "seed0" / "metrics.jsonl"
    campaign = subprocess.Popen(args, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env={**os.environ, "WASAP_DATASETS": ""})
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert campaign.poll() is None and time.monotonic() < deadline, campaign.stdout.read()
        time.sleep(0.02)
    os.killpg(campaign.pid, signal.SIGINT)  # Ctrl-C in the campaign's terminal: the tool and its run
    campaign.communicate(timeout=120)
    stopped = json.loads((metrics.parent / "summary.json").read_text())
    assert stopped["stopped"] == "interrupted" and 3 <= stopped["epochs_completed"] < 300
    log = _reproduce("--out", out, "--epochs", "300", "--seeds", "1", "--only", "^madelon_relu_ip_sequential$",
                     "--results", tmp_path / "results.md", cwd=tmp_path)
    assert "continuing madelon_relu_ip_sequential seed 0" in log
    summary = json.loads((metrics.parent / "summary.json").read_text())
    assert summary["stopped"] == "completed" and summary["epochs_completed"] == 300
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == list(range(1, 301))
