"""Draw a parallel run's profile.json as a PNG: CPU % over time per process, and where each worker's time went.

    python tools/plot_profile.py RUN_DIR/profile.json [-o profile.png]

Top panel: each process's CPU utilisation (100% = one core) sampled from the
main process, with phase two shaded. Bottom panel: per worker and phase, a
stacked bar of wall seconds spent computing, waiting for a lock, waiting for a
slot or work, moving data, and the rest. Needs matplotlib (``pip install
matplotlib`` or ``pip install wasap[plot]``).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from wasap.profiling import CATEGORIES  # noqa: E402

COLORS = {"compute": "#2a9d8f", "lock_wait": "#e76f51", "slot_wait": "#f4a261", "data": "#457b9d",
          "other": "#adb5bd"}


def plot(profile, path):
    """Write the figure of ``profile`` (a profile.json object) to ``path``."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("tools/plot_profile.py needs matplotlib: pip install matplotlib "
                         "(or pip install wasap[plot]); the profile itself is plain JSON.")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8), gridspec_kw=dict(height_ratios=[3, 2]))
    samples = profile.get("samples")
    if samples and samples["t"]:
        t = samples["t"]
        for name, series in samples["processes"].items():
            cpu = [float("nan") if c is None else c for c in series["cpu_percent"]]
            top.plot(t, cpu, label=name, linewidth=1.2)
        phases = samples.get("phase", [])
        if 2 in phases:
            start = t[phases.index(2)]
            top.axvspan(start, t[-1], color="0.9", zorder=0, label="phase two")
        top.set_xlabel("seconds since the workers started")
        top.set_ylabel("CPU % (100 = one core)")
        top.set_ylim(bottom=0)
        top.legend(loc="best", fontsize=8, ncol=2)
        top.set_title(f"CPU utilisation per process ({profile.get('workers', '?')} workers, "
                      f"{'synchronous' if profile.get('sync') else 'asynchronous'} phase one)")
    else:
        top.text(0.5, 0.5, "no CPU samples in this profile", ha="center", va="center")
    labels, lefts = [], {c: [] for c in CATEGORIES}
    for name, phases in profile.get("time_breakdown", {}).items():
        for phase, row in phases.items():
            if row["wall"] > 0:
                busy = row.get("busy_fraction")
                labels.append(f"{name} {phase}" + (f"\n{100 * busy:.0f}% computing" if busy is not None else ""))
                for c in CATEGORIES:
                    lefts[c].append(row[c])
    if labels:
        left = [0.0] * len(labels)
        for c in CATEGORIES:
            bottom.barh(labels, lefts[c], left=left, color=COLORS[c], label=c.replace("_", " "))
            left = [a + b for a, b in zip(left, lefts[c])]
        bottom.invert_yaxis()
        bottom.set_xlabel("wall seconds")
        bottom.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=8, ncol=len(CATEGORIES),
                      frameon=False)
        bottom.set_title("where each worker's time went")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_profile(path, error):
    """The profile.json object at ``path``; ``error(message)`` (it must not return) names what is wrong."""
    if not os.path.exists(path):
        folder = os.path.dirname(path) or "."
        if os.path.basename(path) == "profile.json" and os.path.exists(os.path.join(folder, "summary.json")):
            error(f"{folder} holds a run but no profile.json: profile.json is written by parallel runs "
                  "(python -m wasap.run --workers K, K > 1); a run in one process has no workers to profile.")
        error(f"no such file: {path}; give a parallel run's output folder or its profile.json.")
    try:
        with open(path) as stream:
            profile = json.load(stream)
    except (OSError, ValueError) as exc:
        error(f"cannot read {path} as a profile ({exc}); give a parallel run's profile.json.")
    if not isinstance(profile, dict):
        error(f"{path} is JSON but not a profile (an object with samples and time_breakdown); give a parallel "
              "run's profile.json.")
    return profile


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", help="a run's profile.json, or its output folder")
    parser.add_argument("-o", "--output", help="PNG to write (default: next to profile.json)")
    args = parser.parse_args(argv)
    if os.path.isdir(args.profile):
        args.profile = os.path.join(args.profile, "profile.json")
    profile = read_profile(args.profile, parser.error)
    output = args.output or os.path.splitext(args.profile)[0] + ".png"
    plot(profile, output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
