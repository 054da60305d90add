"""Recipes run end to end as users run them (subprocesses, tiny models, a few steps)."""

import json
import os
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(script: str, args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "recipes", script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.parametrize("algorithm", ["ppo", "scst"])
def test_caption_ppo_recipe_with_yaml_and_overrides(algorithm, tiny_vlm_dir, tmp_path):
    out = tmp_path / algorithm
    reward_file = tmp_path / "my_reward.py"
    reward_file.write_text(
        "class Short:\n"
        "    __name__ = 'short'\n"
        "    def __call__(self, completions, **kwargs):\n"
        "        return [-len(c[0]['content'].split()) / 10 for c in completions]\n")
    proc = run("caption_ppo.py", ["--config", "recipes/configs/smoke.yaml", "--algorithm", algorithm,
                                  "--model_name_or_path", tiny_vlm_dir("llava"), "--output_dir", str(out),
                                  "--reward_funcs", "cider_d", f"{reward_file}:Short",
                                  "--reward_weights", "1.0", "0.5", "--report_to", "tensorboard"])
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results) == {"before", "after"}
    assert {"CIDEr", "Bleu_4"} <= set(results["after"]) and {"CIDEr", "Bleu_4"} <= set(results["before"])
    assert "before" in proc.stdout and "CIDEr" in proc.stdout  # the printed table
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert resolved["algorithm"]["algorithm"] == algorithm
    assert resolved["algorithm"]["max_steps"] == 2  # from the YAML
    assert [r["name"] for r in resolved["rewards"]] == ["cider_d", f"{reward_file}:Short"]  # CLI over YAML
    history = [json.loads(line) for line in (out / "log_history.jsonl").read_text().splitlines()]
    assert "rewards/cider_d" in history[-1] and "rewards/short" in history[-1]
    assert (out / "adapter_model.safetensors").exists() and (out / "checkpoint-2").exists()
    assert (out / "critic" / "value_head.safetensors").exists() == (algorithm == "ppo")
    events = [f for _, _, files in os.walk(out) for f in files if f.startswith("events.out.tfevents")]
    assert events, "TensorBoard logging wrote no event file"


def test_unknown_yaml_key_is_named(tiny_vlm_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_stepz: 3\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "recipes/caption_ppo.py", "--config", str(bad)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "max_stepz" in proc.stderr


def test_caption_sft_recipe_trains_a_lora_adapter(tiny_vlm_dir, tmp_path):
    out = tmp_path / "sft"
    run("caption_sft.py", ["--config", "recipes/configs/caption_sft.yaml", "--model_name_or_path",
                           tiny_vlm_dir("llava"), "--output_dir", str(out), "--max_steps", "2",
                           "--num_train_samples", "8", "--per_device_train_batch_size", "4"])
    from peft import PeftModel

    from mmft.models.loading import load_vlm

    model = PeftModel.from_pretrained(load_vlm(tiny_vlm_dir("llava")), out)
    assert any("lora_A" in n for n, _ in model.named_parameters())


@pytest.mark.slow
def test_demo_defaults_build_the_base_and_run(tmp_path):
    """The `make demo` path with fewer iterations: the demo base model builds (cached in
    MMFT_CACHE), its held-out CIDEr-D is printed before PPO, and PPO runs on it."""
    out = tmp_path / "demo"
    proc = run("caption_ppo.py", ["--output_dir", str(out), "--max_steps", "2", "--num_eval_samples", "50"],
               timeout=1500)
    results = json.loads((out / "eval_results.json").read_text())
    assert results["before"]["CIDEr"] > 0.2  # the SFT base captions held-out scenes reasonably
    assert "CIDEr" in proc.stdout


def test_demo_settings_per_algorithm_and_overrides():
    """No --config: PPO gets the demo's settings, SCST those plus its stable variant
    (leave-one-out baseline); the command line still wins over both."""
    sys.path.insert(0, os.path.join(ROOT, "recipes"))
    try:
        import caption_ppo
    finally:
        sys.path.pop(0)
    script, ppo, _ = caption_ppo.parse_args([])
    assert type(ppo).__name__ == "PPOConfig" and ppo.num_mini_batches == 4 and ppo.kl_coef == 0.05
    assert script.lora_targets == "language+projector"
    _, scst, _ = caption_ppo.parse_args(["--algorithm", "scst"])
    assert (scst.baseline, scst.num_generations, scst.kl_coef) == ("mean", 4, 0.0)
    assert scst.rollout_batch_size == ppo.rollout_batch_size  # the same samples per iteration
    _, greedy, _ = caption_ppo.parse_args(["--algorithm", "scst", "--baseline", "greedy", "--num_generations", "1"])
    assert (greedy.baseline, greedy.num_generations) == ("greedy", 1)
