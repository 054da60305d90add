"""recipes/reward_model.py and recipes/caption_dpo.py run end to end on an export-format
dataset saved to disk, as `mmft label export` writes it."""

import json
import runpy
from pathlib import Path

import pytest
from conftest import preference_dataset

ROOT = Path(__file__).resolve().parents[2]


def recipe_main(name: str):
    # recipes/ is not a package (its __init__ raises): load the script by path.
    return runpy.run_path(str(ROOT / "recipes" / f"{name}.py"), run_name="recipe")["main"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("prefs") / "export"
    preference_dataset(24).save_to_disk(str(path))
    return path


def test_reward_model_recipe_yaml_and_overrides(export_dir, tiny_vlm_dir, tmp_path):
    from reward_models.learned import LearnedReward

    out = tmp_path / "rm"
    results = recipe_main("reward_model")([
        "--config", str(ROOT / "recipes/configs/reward_model.yaml"), "--dataset", str(export_dir),
        "--model_name_or_path", tiny_vlm_dir("llava"), "--output_dir", str(out), "--max_steps", "3",
        "--per_device_train_batch_size", "4", "--eval_fraction", "0.25", "--num_heads", "2"])
    assert results["num_eval_pairs"] == 6 and results["num_train_pairs"] == 18
    assert {"eval/accuracy", "eval/margin", "eval/std"} <= set(results["after"])
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["after"]["eval/accuracy"] == results["after"]["eval/accuracy"]
    resolved = (out / "resolved_config.yaml").read_text()
    assert "num_heads: 2" in resolved and "max_completion_length: 64" in resolved  # CLI over YAML, YAML kept
    reward = LearnedReward(out)
    assert reward.num_heads == 2
    row = preference_dataset(1, offset=900)[0]
    assert len(reward(prompts=[row["prompt"]], completions=[row["chosen"]], image=[row["image"]])) == 1


def test_reward_model_recipe_rejects_unknown_yaml_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: x\nnot_a_setting: 1\n")
    with pytest.raises(SystemExit, match="not_a_setting"):
        recipe_main("reward_model")(["--config", str(bad)])


def test_dpo_recipe_two_steps_on_an_export(export_dir, tiny_vlm_dir, tmp_path):
    """TRL's DPOTrainer on the export format: 2 LoRA steps move the adapter (lora_B starts
    at zero), the saved adapter loads on the base, and held-out DPO metrics are written."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from mmft.models.loading import load_vlm

    out = tmp_path / "dpo"
    results = recipe_main("caption_dpo")([
        "--config", str(ROOT / "recipes/configs/dpo.yaml"), "--dataset", str(export_dir),
        "--model_name_or_path", tiny_vlm_dir("llava"), "--output_dir", str(out), "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--eval_fraction", "0.25"])
    assert results["num_train_pairs"] == 18
    assert "eval_rewards/accuracies" in results["eval"] and "eval_rewards/margins" in results["eval"]
    adapter = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)
    assert not any("vision_tower" in name for name in adapter)
    PeftModel.from_pretrained(load_vlm(tiny_vlm_dir("llava")), str(out))
    assert json.loads((out / "eval_results.json").read_text())["num_train_pairs"] == 18
