"""scripts/make_pairs.py writes a pairs file the labelling app accepts; the preference
demo (reduced) runs end to end through a real label server."""

import json
import logging
import math
import os
import runpy
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def net(caption, pair) -> float:
    """The demo oracle's `net_correct` score of a caption (a string or the export's assistant
    message list) for a pair's scene."""
    from reward_models import AttributeReward
    from reward_models._text import completion_to_text

    return AttributeReward(scoring="net_correct").score_one(
        completion_to_text(caption), pair.metadata["objects"], pair.metadata["num_objects"], pair.metadata["relation"])


def test_make_pairs_writes_a_valid_pairs_file(tiny_vlm_dir, tmp_path):
    from mmft.label.pairs import load_pairs

    make_pairs = runpy.run_path(str(ROOT / "scripts/make_pairs.py"), run_name="make_pairs")["make_pairs"]
    out = tmp_path / "pairs" / "pairs.jsonl"
    summary = make_pairs(out, model=tiny_vlm_dir("llava"), num_images=3, offset=5, samples_per_image=3,
                         pairs_per_image=2, max_new_tokens=6, batch_size=2, seed=0)
    pairs = load_pairs(out)  # the label server's own validation
    assert summary["pairs"] == len(pairs) == 6  # random tiny model: 3 distinct samples, 2 pairs each
    for pair in pairs:
        assert pair.caption_a != pair.caption_b
        assert pair.prompt == "Describe the image in one sentence."
        assert Image.open(pair.image).size == (64, 64) and pair.image.suffix == ".png"
        assert {"objects", "num_objects", "relation", "scene_id"} <= set(pair.metadata)
    assert {p.metadata["source_index"] for p in pairs} == {5, 6, 7}
    with pytest.raises(SystemExit, match="exists"):
        make_pairs(out, model=tiny_vlm_dir("llava"), num_images=1)


@pytest.mark.slow
def test_preference_demo_reduced(tmp_path, caplog):
    """The whole loop on a few dozen pairs, several per scene (builds the demo base model on first use)."""
    from mmft.label.pairs import load_pairs
    from mmft.reward_modeling.data import load_preferences
    from reward_models import AttributeReward

    out = tmp_path / "demo.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # --rm_save_steps 0.7: a checkpoint 70% of the way, before the last step however many pairs
    # the demo base's samples give (a fixed step count ended on a checkpoint with another base).
    subprocess.run([sys.executable, "scripts/preference_demo.py", "--json", str(out), "--num_pair_images", "16",
                    "--samples_per_image", "3", "--pairs_per_image", "3",
                    "--rm_epochs", "1", "--ppo_steps", "2", "--ppo_batch_size", "8", "--num_eval_scenes", "16",
                    "--num_unseen_scenes", "6", "--min_rm_accuracy", "0", "--rm_backbone_steps", "0",
                    "--rm_batch_size", "8", "--rm_save_steps", "0.7"], cwd=ROOT, env=env, check=True, timeout=1800)
    res = json.loads(out.read_text())
    assert 16 < res["pairs"] <= 48  # up to 3 distinct pairs of 3 samples per scene
    assert sum(res["labels"].values()) == res["pairs"]  # every pair labelled over HTTP
    assert res["train_pairs"] + res["held_out_pairs"] == res["labels"]["A"] + res["labels"]["B"]
    assert 0.0 <= res["rm_accuracy"] <= 1.0 and 0.0 <= res["rm_accuracy_shuffled_images"] <= 1.0
    assert sum(b["pairs"] for b in res["rm_accuracy_by_oracle_margin"].values()) == res["held_out_pairs"]
    assert res["rm_mounted"]  # the reward model shares the policy's base: PPO mounted it
    assert res["settings"]["rm_group_by_image"] is True  # batches of whole scenes, the default
    assert all(math.isfinite(res[k]) for k in ("oracle_before", "oracle_after"))
    # The oracle labels by net_correct (the default); OUT also scores the captions the old way.
    scores = res["oracle_scores_before_after"]
    assert res["oracle_scoring"] == "net_correct" and set(scores) == set(AttributeReward.SCORINGS)
    assert scores["net_correct"] == [res["oracle_before"], res["oracle_after"]]
    pairs = {p.pair_id: p for p in load_pairs(tmp_path / "demo_work" / "pairs" / "pairs.jsonl")}
    export = load_preferences(tmp_path / "demo_work" / "prefs")
    for row in export:  # every exported label is the net_correct oracle's choice
        assert net(row["chosen"], pairs[row["pair_id"]]) > net(row["rejected"], pairs[row["pair_id"]])
    assert res["labels"]["tie"] == sum(net(p.caption_a, p) == net(p.caption_b, p) for p in pairs.values())
    words = res["caption_words_before_after"]
    assert len(words) == 2 and all(0 <= w <= 32 for w in words)  # at most max_new_tokens words
    short = res["short_captions_before_after"]
    assert len(short) == 2 and all(0 <= n <= 16 for n in short)  # of the 16 eval scenes
    for n, side in zip(short, ("before", "after")):  # the 5 kept samples are among the counted captions
        assert sum(len(c[side].split()) <= 2 for c in res["sample_captions"]) <= n
    assert set(res["base_caption_loss"]) == {"matched_images", "shuffled_images"}
    # Unseen scenes: the ids after the demo base's 2,000 SFT scenes (its backbone here; the 16
    # pair scenes are among them); every pair of theirs is scored or counted as a tie.
    unseen = res["rm_accuracy_unseen_scenes"]
    unseen_pairs = load_pairs(tmp_path / "demo_work" / "unseen" / "pairs.jsonl")
    assert unseen["first_scene"] == 2000
    assert {p.metadata["scene_id"] for p in unseen_pairs} == set(range(2000, 2006))
    assert unseen["pairs"] + unseen["ties"] == len(unseen_pairs) and 0.0 <= unseen["accuracy"] <= 1.0

    # The PPO stage alone on the saved reward model (--reward_model), at another KL coefficient.
    again = tmp_path / "again.json"
    subprocess.run([sys.executable, "scripts/preference_demo.py", "--json", str(again), "--reward_model",
                    str(tmp_path / "demo_work" / "reward_model"), "--ppo_steps", "1", "--ppo_batch_size", "8",
                    "--ppo_kl_coef", "0.3", "--num_eval_scenes", "16"], cwd=ROOT, env=env, check=True, timeout=600)
    res2 = json.loads(again.read_text())
    assert res2["reward_model_reused"] == str(tmp_path / "demo_work" / "reward_model")
    assert res2["rm_accuracy"] == res["rm_accuracy"] and res2["rm_mounted"]  # read from the folder
    assert res2["oracle_before"] == res["oracle_before"]  # the same base's greedy captions
    assert res2["settings"]["ppo_kl_coef"] == 0.3 and "make_pairs_s" not in res2["timings_s"]
    assert sorted(p.name for p in (tmp_path / "again_work").iterdir()) == ["ppo", "settings.json"]  # no pairs etc.

    _resume_labelling_and_reward_model(tmp_path / "demo_work", out, res, env, caplog)


def _resume_labelling_and_reward_model(work, out, res, env, caplog):
    """--resume after a stop in the labelling (labels undone: the same labeler labels just
    those again over HTTP) and in the reward model's training (it goes on from its newest
    checkpoint to the same model as the run that never stopped); finished stages are not redone."""
    from mmft.label import storage
    from reward_models import AttributeReward

    demo = runpy.run_path(str(ROOT / "scripts" / "preference_demo.py"))
    conn = storage.connect(work / "labels.sqlite")
    undone = [storage.undo_last(conn, "oracle") for _ in range(5)]
    conn.close()
    assert all(undone)
    pairs = work / "pairs" / "pairs.jsonl"
    scenes = {r["pair_id"]: r for r in map(json.loads, pairs.read_text().splitlines())}
    oracle = AttributeReward(scoring="net_correct")
    caplog.set_level(logging.INFO)
    assert demo["label_with_oracle"](work, pairs, work / "labels.sqlite", scenes, oracle, log_every=2,
                                     batch=2) == res["labels"]
    # Progress from the server's answers: 5 undone, then 2 and 4 of them labelled again (batches of 2).
    total = res["pairs"]
    assert [r.getMessage().split(",")[0] for r in caplog.records if r.getMessage().startswith("Oracle labels")] == [
        f"Oracle labels: {total - 3}/{total} in the database", f"Oracle labels: {total - 1}/{total} in the database"]

    checkpoints = sorted((work / "reward_model").glob("checkpoint-*"))
    final_step = json.loads((work / "reward_model" / "log_history.json").read_text())[-1]["step"]
    assert len(checkpoints) == 1 and int(checkpoints[0].name.split("-")[1]) < final_step  # save_total_limit 1
    for stage in ("reward_model", "unseen_scenes"):
        (work / "stages" / f"{stage}.json").unlink()
    before = {p.name: p.stat().st_mtime for p in (work / "stages").iterdir()}
    args = json.loads(out.read_text())["command"].split()[2:]
    proc = subprocess.run([sys.executable, "scripts/preference_demo.py", *args, "--resume"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Resumed the reward model from {checkpoints[0]}" in proc.stderr
    resumed = json.loads(out.read_text())
    for key in ("rm_accuracy", "rm_margin", "rm_accuracy_by_oracle_margin", "labels", "train_pairs", "pairs"):
        assert resumed[key] == res[key], key
    assert resumed["timings_s"]["make_pairs_s"] == res["timings_s"]["make_pairs_s"]  # read back, not rerun
    assert {n: t for n, t in before.items()} == {p.name: p.stat().st_mtime for p in (work / "stages").iterdir()
                                                  if p.name in before}

    # Other settings, or a folder that holds no run, are refused before anything runs.
    proc = subprocess.run([sys.executable, "scripts/preference_demo.py", *args, "--resume", "--rm_epochs", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "rm_epochs: 1.0 then, 2.0 now" in proc.stderr
    proc = subprocess.run([sys.executable, "scripts/preference_demo.py", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "pass --resume" in proc.stderr


def test_oracle_export_labels_every_pair_in_process(tiny_vlm_dir, tmp_path):
    """scripts/oracle_export.py: the demo's pairs for other scenes (here 5 captions and up to 10
    pairs a scene instead of the demo's 4 and 6), every one labelled by the demo's oracle through
    the label store, the A/B labels exported as `mmft label export` writes them."""
    import sqlite3

    from mmft.label.pairs import load_pairs
    from mmft.reward_modeling.data import load_preferences

    oracle_export = runpy.run_path(str(ROOT / "scripts/oracle_export.py"), run_name="oracle_export")["main"]
    work = tmp_path / "extra"
    summary = oracle_export(["--work", str(work), "--first_scene", "7", "--num_scenes", "3",
                             "--model", tiny_vlm_dir("llava"), "--max_new_tokens", "6", "--batch_size", "4",
                             "--samples_per_image", "5", "--pairs_per_image", "10"])
    pairs = {p.pair_id: p for p in load_pairs(work / "pairs" / "pairs.jsonl")}
    per_scene = Counter(p.metadata["source_index"] for p in pairs.values())
    assert set(per_scene) == {7, 8, 9} and 6 < max(per_scene.values()) <= 10
    assert (summary["samples_per_image"], summary["pairs_per_image"]) == (5, 10)
    assert summary["pairs"] == len(pairs) > 3 and sum(summary["labels"].values()) == len(pairs)
    with sqlite3.connect(work / "labels.sqlite") as conn:  # one label per pair, the oracle's
        stored = dict(conn.execute("SELECT pair_id, choice FROM labels WHERE labeler = 'oracle'").fetchall())
    assert set(stored) == set(pairs)
    for pid, choice in stored.items():
        a, b = net(pairs[pid].caption_a, pairs[pid]), net(pairs[pid].caption_b, pairs[pid])
        assert choice == ("A" if a > b else "B" if b > a else "tie")
    export = load_preferences(work / "prefs")
    assert len(export) == summary["exported"] == summary["labels"]["A"] + summary["labels"]["B"]
    for row in export:
        assert net(row["chosen"], pairs[row["pair_id"]]) > net(row["rejected"], pairs[row["pair_id"]])
    assert json.loads((work / "summary.json").read_text()) == summary
    with pytest.raises(SystemExit, match="not empty"):
        oracle_export(["--work", str(work), "--first_scene", "0", "--num_scenes", "1"])
