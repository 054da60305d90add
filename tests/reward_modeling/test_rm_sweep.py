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
                                  "pooling": "last+mean+sum", "group": 1, "dropout": 0.0, "wd": 0.0, "seed": None,
                                  "frac": 1.0, "extra": 0}  # the demo's
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


def test_training_seed_fraction_extra_pairs_and_ensemble(tiny_vlm_dir, tmp_path):
    out = tmp_path / "sweep.json"
    preference_dataset(10, offset=30).save_to_disk(str(tmp_path / "extra"))  # 10 pairs of 10 other scenes
    proc = _sweep(tmp_path, "--backbone", tiny_vlm_dir("llava"), "--json", str(out),
                  "--train_extra", str(tmp_path / "extra"),
                  "--run", "s0:batch=8,epochs=1,lr=3e-3", "--run", "s1:batch=8,epochs=1,lr=3e-3,seed=1",
                  "--run", "half:batch=8,epochs=1,lr=3e-3,frac=0.5", "--run", "more:batch=8,epochs=1,lr=3e-3,extra=1",
                  "--ensemble", "three=s0+s1+half")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    runs = {r["name"]: r for r in result["runs"]}
    # One split (--seed 0) for all: 6 held-out pairs each; half trains on 12 of the 24 others,
    # more on the 24 and the extra export's 10 (5 steps of 8 where s0 takes 3, half 2).
    assert [runs[n]["held_out_pairs"] for n in ("s0", "s1", "half", "more")] == [6, 6, 6, 6]
    assert [runs[n]["train_pairs"] for n in ("s0", "s1", "half", "more")] == [24, 24, 12, 34]
    assert runs["more"]["steps"] == 5 and runs["s0"]["steps"] == 3
    assert [runs[n]["seed"] for n in ("s0", "s1", "half")] == [0, 1, 0]
    rewards = {n: json.loads((tmp_path / "runs" / n / "held_out_rewards.json").read_text()) for n in runs}
    assert rewards["s0"]["chosen"] != rewards["s1"]["chosen"]  # the training seed changes the model

    def accuracy(chosen, rejected):  # ties count 1/2
        return sum((c > r) + 0.5 * (c == r) for c, r in zip(chosen, rejected)) / len(chosen)

    for n, r in rewards.items():  # the saved rewards are the ones the final evaluation scored
        assert r["step"] == runs[n]["steps"]
        assert len(r["chosen"]) == len(r["rejected"]) == 6
        assert accuracy(r["chosen"], r["rejected"]) == pytest.approx(runs[n]["final"]["eval/accuracy"])
    mean = {k: [sum(v) / 3 for v in zip(*(rewards[n][k] for n in ("s0", "s1", "half")))] for k in ("chosen", "rejected")}
    three = result["ensembles"]["three"]
    assert three["status"] == "done" and three["members"] == ["s0", "s1", "half"] and three["pairs"] == 6
    assert three["steps"] == [3, 3, 2]
    assert three["accuracy"] == pytest.approx(accuracy(mean["chosen"], mean["rejected"]))
    assert "ensemble three: s0+s1+half: " in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--run", "bad name:batch=8"], "start with a name"),
    (["--run", "x:batch=8,foo=1"], "'foo=1' is not key=value"),
    (["--run", "x:batch=eight"], "batch must be int"),
    (["--run", "x:frac=0"], "frac must be in (0, 1]"),
    (["--run", "x:batch=8", "--ensemble", "e=x+nope"], "nope is not a --run name"),
    (["--run", "x:batch=8", "--ensemble", "e=x"], "at least two runs"),
])
def test_bad_run_specs_are_named(tmp_path, args, message):
    proc = _sweep(tmp_path, "--backbone", "unused", *args)
    assert proc.returncode != 0 and message in proc.stderr


def test_extra_pairs_must_come_with_an_export_of_other_images(tiny_vlm_dir, tmp_path):
    proc = _sweep(tmp_path, "--backbone", "unused", "--run", "x:extra=1")
    assert proc.returncode != 0 and "give the export to add with --train_extra" in proc.stderr
    # The held-out pairs' own images in the extra export: refused, naming the export.
    proc = _sweep(tmp_path, "--backbone", tiny_vlm_dir("llava"), "--train_extra", str(tmp_path / "prefs"),
                  "--run", "x:batch=8,extra=1")
    log = (tmp_path / "runs" / "x" / "log.txt").read_text()
    assert "of its images are among --prefs' held-out pairs" in log and str(tmp_path / "prefs") in log


def test_accuracy_by_oracle_gap_per_run_and_ensemble(tiny_vlm_dir, tmp_path):
    """--oracle_pairs: each run's and ensemble's held-out accuracy by the demo oracle's score gap,
    equal to a hand computation from the saved rewards and the pairs file."""
    import runpy

    from datasets import Dataset

    from mmft.data.synthetic import CAPTION_PROMPT, load_synthetic_captions
    from mmft.label.export import _features
    from reward_models import AttributeReward

    scenes = list(load_synthetic_captions("train", 30))
    rows = {k: [] for k in ("image", "prompt", "chosen", "rejected", "labeler", "time", "pair_id")}
    lines = []
    for i, scene in enumerate(scenes):  # rejected: another scene's caption, partly wrong for this one
        chosen, rejected = scene["references"][0], scenes[(i + 1) % 30]["references"][i % 5]
        for key, value in (("image", scene["image"]), ("prompt", [{"role": "user", "content": CAPTION_PROMPT}]),
                           ("chosen", [{"role": "assistant", "content": chosen}]),
                           ("rejected", [{"role": "assistant", "content": rejected}]), ("labeler", "oracle"),
                           ("time", "2026-11-28T12:00:00.000+00:00"), ("pair_id", f"g{i}")):
            rows[key].append(value)
        scene["image"].save(tmp_path / f"g{i}.png")
        lines.append(json.dumps({"pair_id": f"g{i}", "image": f"g{i}.png", "prompt": CAPTION_PROMPT,
                                 "caption_a": rejected, "caption_b": chosen,
                                 **{k: scene[k] for k in ("objects", "num_objects", "relation")}}))
    Dataset.from_dict(rows, features=_features()).save_to_disk(str(tmp_path / "prefs"))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "sweep.json"
    proc = _sweep(tmp_path, "--backbone", tiny_vlm_dir("llava"), "--json", str(out), "--oracle_pairs", str(pairs),
                  "--run", "a:batch=8,epochs=1,lr=3e-3", "--run", "b:batch=8,epochs=1,lr=3e-3,seed=1",
                  "--ensemble", "ab=a+b")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())

    oracle = AttributeReward(scoring="net_correct")
    by_id = {f"g{i}": scene for i, scene in enumerate(scenes)}
    lookup = {json.loads(line)["pair_id"]: json.loads(line) for line in lines}

    def gap(pid):
        s = by_id[pid]
        a, b = (oracle.score_one(lookup[pid][c], s["objects"], s["num_objects"], s["relation"])
                for c in ("caption_a", "caption_b"))
        return abs(a - b)

    def by_hand(ids, chosen, rejected):
        buckets = {}
        for pid, c, r in zip(ids, chosen, rejected):
            g = gap(pid)
            key = ("< 0.1" if g < 0.1 else "0.1-0.2" if g < 0.2 else "0.2-0.3" if g < 0.3 else "0.3-0.4" if g < 0.4
                   else "0.4-0.5" if g < 0.5 else ">= 0.5")
            buckets.setdefault(key, []).append((c > r) + 0.5 * (c == r))
        return {k: (pytest.approx(sum(v) / len(v)), len(v)) for k, v in buckets.items()}

    saved = {n: json.loads((tmp_path / "runs" / n / "held_out_rewards.json").read_text()) for n in ("a", "b")}
    for run in result["runs"]:
        r = saved[run["name"]]
        assert len(r["pair_id"]) == 6 and set(r["pair_id"]) <= set(lookup)
        got = run["held_out_accuracy_by_oracle_gap"]
        assert {k: (v["accuracy"], v["pairs"]) for k, v in got.items()} == by_hand(r["pair_id"], r["chosen"],
                                                                                   r["rejected"])
    assert len({round(gap(pid), 6) for pid in saved["a"]["pair_id"]}) > 1  # more than one gap among the six
    ab = result["ensembles"]["ab"]
    assert "rewards" not in ab  # the mean rewards are not written into the JSON
    mean = {k: [(x + y) / 2 for x, y in zip(saved["a"][k], saved["b"][k])] for k in ("chosen", "rejected")}
    assert {k: (v["accuracy"], v["pairs"]) for k, v in ab["accuracy_by_oracle_gap"].items()} == \
        by_hand(saved["a"]["pair_id"], mean["chosen"], mean["rejected"])
    assert "oracle gap" in proc.stdout

    # A pairs file without the held-out ids: a status in place of the figures. One without scenes: refused.
    sweep = runpy.run_path(str(ROOT / "scripts" / "rm_sweep.py"), run_name="rm_sweep")
    other = sweep["accuracy_by_gap"](saved["a"], {"x": lookup["g0"]}, "other.jsonl")
    assert other["status"].startswith("not computed: 6 held-out pair ids are not in other.jsonl")
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"pair_id": "g0", "image": "g0.png", "prompt": "p", "caption_a": "a",
                                "caption_b": "b"}) + "\n")
    with pytest.raises(SystemExit, match="bare.jsonl, line 1: no objects, num_objects, relation"):
        sweep["load_scenes"](str(bare))
    broken = tmp_path / "broken.jsonl"  # the pairs file checks of `mmft label serve`, naming file and line
    broken.write_text('{"pair_id": "g0",\n')
    with pytest.raises(SystemExit, match=r"--oracle_pairs: 1 problem\(s\) in .*broken.jsonl:\n.*broken.jsonl:1: "
                                         "invalid JSON"):
        sweep["load_scenes"](str(broken))
