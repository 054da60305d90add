"""Training curves from a run's `log_history.jsonl` (one JSON object per iteration).

The trainers (`mmft.rl_trainer`) append `{"iteration": i, metric: value, ...}` lines;
`plot_curves` draws reward, KL, value loss and eval CIDEr against the iteration, one
panel each, and marks panels whose metric the run never logged (SCST has no value
loss) instead of leaving them out, so every run's figure has the same layout.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

# (log key, panel title)
CURVES = (
    ("objective/scores", "reward (objective/scores)"),
    ("objective/kl", "KL to reference (objective/kl)"),
    ("loss/value", "value loss (loss/value)"),
    ("eval/CIDEr", "eval CIDEr-D (eval/CIDEr)"),
)


def read_log_history(log_path: str | os.PathLike) -> list[dict]:
    """The entries of a `log_history.jsonl`, checked: each line a JSON object with `iteration`."""
    path = Path(log_path)
    if path.is_dir():
        path = path / "log_history.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"No training log at {path}: trainers write log_history.jsonl into their "
                                "output directory; pass that directory (or the file) as --run-dir.")
    entries = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as err:
            raise ValueError(f"{path} line {lineno} is not valid JSON: {err}") from None
        if not isinstance(entry, dict) or "iteration" not in entry:
            raise ValueError(f"{path} line {lineno} must be a JSON object with an 'iteration' key, got {line[:80]!r}.")
        entries.append(entry)
    if not entries:
        raise ValueError(f"{path} holds no log entries.")
    return entries


def plot_curves(log_path: str | os.PathLike, out_png: str | os.PathLike, curves=CURVES) -> list[str]:
    """Draw the training curves of a run into `out_png`; returns the keys that had data.

    Raises ValueError when the log has none of the curve keys (nothing to draw).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    entries = read_log_history(log_path)
    found = []
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], curves):
        points = [(float(e["iteration"]), float(e[key])) for e in entries
                  if isinstance(e.get(key), (int, float)) and math.isfinite(float(e[key]))]
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        if points:
            found.append(key)
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3)
            ax.grid(alpha=0.3)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_xticks([])
            ax.set_yticks([])
    if not found:
        plt.close(fig)
        raise ValueError(f"{log_path} has none of the curve metrics {[k for k, _ in curves]}.")
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return found
