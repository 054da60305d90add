"""scripts/rm_sweep.py: reward-model runs side by side, held-out accuracy after every epoch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import preference_dataset

ROOT = Path(__file__).resolve().parents[2]


def _sweep(tmp_path, *extra):
    prefs = tmp_path / "prefs"
    if not prefs.exists():
        preference_dataset(30).save_to_disk(str(prefs))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "scripts/rm_sweep.py", "--prefs", str(prefs), "--out", str(tmp_path / "runs"),
                           "--eval_fraction", "0.2", "--workers", "0", *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_runs_evaluate_every_epoch_and_report(tiny_vlm_dir, tmp_path):
    out = tmp_path / "sweep.json"
    proc = _sweep(tmp_path, "--backbone", tiny_vlm_dir("llava"), "--json", str(out),
                  "--run", "small:batch=8,epochs=2,lr=3e-3,dropout=0.1,wd=0.01,group=1", "--run", "cosine:batch=12,epochs=1,lr=3e-3,sched=cosine,r=4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = {r["name"]: r for r in json.loads(out.read_text())["runs"]}
    small, cosine = runs["small"], runs["cosine"]
    # 30 pairs, 6 held out (by image): 24 training pairs -> 3 steps of 8 per epoch, 2 of 12.
    assert small["train_pairs"] == 24 and small["held_out_pairs"] == 6
    assert [step for step, _ in small["held_out_accuracy_by_step"]] == [3, 6]
    assert [step for step, _ in cosine["held_out_accuracy_by_step"]] == [2]
    assert small["steps"] == 6 and cosine["steps"] == 2
    for run in (small, cosine):
        assert run["status"] == "done"
        assert run["held_out_accuracy_by_step"][-1][1] == run["final"]["eval/accuracy"]
    assert cosine["settings"] == {"batch": 12, "epochs": 1.0, "lr": 3e-3, "r": 4, "sched": "cosine", "heads": 1,
                                  "pooling": "last+mean+sum", "group": 0, "dropout": 0.0, "wd": 0.0}  # the demo's
    assert small["settings"]["group"] == 1  # batches of whole images
    # LoRA dropout on (one layer per adapted linear) and the decay reach the model and optimizer.
    assert small["dropout_rates"] == [0.1] and small["dropout_layers"] > 0 and small["weight_decay"] == 0.01
    assert cosine["dropout_rates"] == [] and cosine["weight_decay"] == 0.0
    table = proc.stdout.splitlines()
    assert table[0].startswith("run") and table[1].startswith("small") and table[2].startswith("cosine")


def test_deadline_keeps_what_finished_and_names_the_rest(tiny_vlm_dir, tmp_path):
    proc = _sweep(tmp_path, "--backbone", tiny_vlm_dir("llava"), "--json", str(tmp_path / "s.json"), "--deadline", "0",
                  "--run", "a:batch=8,epochs=1", "--run", "b:batch=8,epochs=1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = {r["name"]: r for r in json.loads((tmp_path / "s.json").read_text())["runs"]}
    assert runs["a"]["status"] == "stopped at the deadline" and "final" not in runs["a"]
    assert runs["b"]["status"] == "not started (deadline)"
    again = _sweep(tmp_path, "--backbone", tiny_vlm_dir("llava"), "--run", "a:batch=8")
    assert again.returncode != 0 and "exists and is not empty" in again.stderr  # histories would mix


@pytest.mark.parametrize("run, message", [
    ("bad name:batch=8", "start with a name"),
    ("x:batch=8,foo=1", "'foo=1' is not key=value"),
    ("x:batch=eight", "batch must be int"),
])
def test_bad_run_specs_are_named(tmp_path, run, message):
    proc = _sweep(tmp_path, "--backbone", "unused", "--run", run)
    assert proc.returncode != 0 and message in proc.stderr
