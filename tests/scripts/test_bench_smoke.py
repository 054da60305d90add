"""Smoke test of the benchmark scripts: each runs end to end with --quick (a tiny random
VLM, a few steps, every measurement in one process) and writes the JSON keys that
BENCHMARKS.md quotes, with finite numbers. The figures themselves are not checked:
they come from `python scripts/bench_ppo.py --json OUT` and `scripts/bench_memory.py`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load(name: str):
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_bench_ppo_quick(tmp_path):
    out = tmp_path / "ppo.json"
    _load("bench_ppo").main(["--quick", "--skip-memory", "--quality-seeds", "2", "--json", str(out)])
    r = json.loads(out.read_text())
    for key in ("speed_ratio", "memory_ratio", "speed", "quality", "targets", "machine", "settings", "command"):
        assert key in r, key
    assert _finite(r["speed_ratio"]) and r["speed_ratio"] > 0
    assert _finite(r["memory_ratio"]) and r["memory_ratio"] > 0
    # The interleaved table times mmft PPO with each critic beside GRPO.
    assert set(r["speed_ratio_by_critic"]) == {"shared_half", "shared_all", "policy"}
    assert all(_finite(v) and v > 0 for v in r["speed_ratio_by_critic"].values())
    for system in ("mmft_ppo", "trl_grpo"):
        v = r["speed"]["systems"][system]
        assert _finite(v["samples_per_s"]) and v["samples_per_s"] > 0
        assert _finite(v["peak_rss_mib"]) and v["peak_rss_mib"] > 0
    for system in ("base", "mmft_ppo", "mmft_scst", "trl_grpo"):
        assert _finite(r["quality"][system]["CIDEr"]), system
        assert _finite(r["quality"][system]["Bleu_4"]), system
    for system in ("mmft_ppo", "mmft_scst", "trl_grpo"):  # two seeds each, the table's figure is their mean
        per_seed = r["quality"][system]["per_seed"]
        assert sorted(per_seed) == ["0", "1"], system
        assert r["quality"][system]["CIDEr"] == pytest.approx(sum(per_seed.values()) / 2), system
    assert r["quality_paired"]["seeds"] == [0, 1]
    assert set(r["targets"]) == {"speed_ratio>=0.9", "memory_ratio<=1.2", "cider_ppo>=grpo"}


def test_bench_ppo_quality_aggregate():
    """Seed means, their standard error and the paired PPO - GRPO tally, on hand-made figures."""
    def m(cider, bleu=0.2):
        return {"CIDEr": cider, "Bleu_4": bleu, "samples": 32, "epochs": 1, "train_s": 2.0, "examples": ["x"]}

    by_seed = {0: {"mmft_ppo": m(0.7), "trl_grpo": m(0.8)}, 1: {"mmft_ppo": m(0.9), "trl_grpo": m(0.8)},
               2: {"mmft_ppo": m(0.75, 0.5), "trl_grpo": m(0.75)}}
    quality, paired = _load("bench_ppo").aggregate_quality({"CIDEr": 0.5, "Bleu_4": 0.1}, by_seed)
    assert quality["base"] == {"CIDEr": 0.5, "Bleu_4": 0.1}
    assert quality["mmft_ppo"]["CIDEr"] == pytest.approx(0.7833333, abs=1e-6)
    assert quality["mmft_ppo"]["Bleu_4"] == pytest.approx(0.3)
    assert quality["mmft_ppo"]["CIDEr_se"] == pytest.approx(0.0600925, abs=1e-6)  # stdev 0.1041 / sqrt(3)
    assert quality["mmft_ppo"]["per_seed"] == {0: 0.7, 1: 0.9, 2: 0.75}
    assert paired["ppo_minus_grpo"] == pytest.approx(0.0, abs=1e-12)
    assert paired["se"] == pytest.approx(0.1 / 3 ** 0.5)  # diffs -0.1, +0.1, 0
    assert (paired["ppo_ahead"], paired["level"], paired["ppo_behind"]) == (1, 1, 1)
    # One seed: no spread, and no paired figure without GRPO.
    quality, paired = _load("bench_ppo").aggregate_quality(None, {3: {"mmft_ppo": m(0.7)}})
    assert quality["mmft_ppo"]["CIDEr_se"] == 0.0 and "base" not in quality and paired == {}


def test_bench_ppo_device_reaches_every_system(tmp_path):
    """`--device cuda` trains every system off the CPU; the default keeps all on it."""
    bench = _load("bench_ppo")
    for device, use_cpu in ((None, True), ("cpu", True), ("cuda", False)):
        s = dict(bench.FULL, **({"device": device} if device else {}))
        configs = [bench.mmft_config(kind, s, str(tmp_path / kind), 1, 1) for kind in ("mmft_ppo", "mmft_scst")]
        configs.append(bench.grpo_config(s, str(tmp_path / "grpo"), 1, 1))
        assert [c.use_cpu for c in configs] == [use_cpu] * 3, device


def test_bench_memory_quick(tmp_path, monkeypatch):
    import tempfile

    out = tmp_path / "mem.json"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    _load("bench_memory").main(["--quick", "--json", str(out)])
    assert not list(scratch.glob("mmft-bench-memory-*"))  # the models it built are removed
    r = json.loads(out.read_text())
    assert r["models"] and r["models"][0]["model"] == "tiny-llava"
    m = r["models"][0]
    v = m["variants"]["float32"]
    for key in ("sft", "ppo", "naive", "ppo_over_sft", "naive_over_sft"):
        assert _finite(v[key]) and v[key] > 0, key
    assert _finite(m["ppo_over_sft"]) and _finite(m["naive_over_sft"])
    assert m["parameters"] and m["parameters"] > 0
    assert r["all_finite"] is True


def test_bench_label_counts_every_label_it_sends(tmp_path):
    """scripts/bench_label.py against a real server: each batch size labels as its own
    labeler, and the database holds exactly what each sent (the script checks it, too)."""
    out = tmp_path / "label.json"
    _load("bench_label").main(["--num_pairs", "120", "--pairs_per_image", "6", "--batch_sizes", "1", "50",
                               "--one_by_one_labels", "30", "--json", str(out)])
    r = json.loads(out.read_text())
    runs = {run["batch_size"]: run for run in r["runs"]}
    assert runs[1]["labels"] == runs[1]["stored"] == 30 and runs[1]["requests"] == 60
    assert runs[50]["labels"] == runs[50]["stored"] == 120 and runs[50]["requests"] == 6  # 50 + 50 + 20
    assert all(_finite(run["labels_per_s"]) and run["labels_per_s"] > 0 for run in r["runs"])


def test_bench_reward_model_times_both_paths(tmp_path):
    """scripts/bench_reward_model.py: both paths train and score; with shared prompts a
    step's input holds each scene's prompt once (fewer tokens for the same captions)."""
    out = tmp_path / "rm.json"
    _load("bench_reward_model").main(["--captions", "4", "--batch_size", "12", "--steps", "2", "--warmup_steps", "1",
                                      "--eval_scenes", "2", "--json", str(out)])
    plain, shared = json.loads(out.read_text())["runs"]
    assert (plain["share_prompts"], shared["share_prompts"]) == (False, True) and shared["encoder_shares"]
    assert plain["first_batch_captions"] == shared["first_batch_captions"] == 8  # 2 scenes x 4 captions
    assert shared["first_batch_input_tokens"] < plain["first_batch_input_tokens"]
    assert all(_finite(r[k]) and r[k] > 0 for r in (plain, shared) for k in ("s_per_step", "predict_pairs_per_s"))
