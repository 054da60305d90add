"""Trainer-level invariants of ppo_spec.md on a tiny LLaVA: accumulation equivalence,
what moves and what stays frozen, exact resume, stop tokens when pad == EOS, SCST."""

import os

import pytest
import torch
from peft import get_peft_model

from mmft import PPOConfig, PPOTrainer, SCSTConfig, SCSTTrainer
from mmft.data.synthetic import load_synthetic_captions
from mmft.models.roles import POLICY, REF, VALUE
from mmft.rl_trainer import default_lora_config
from mmft.rollout import truncate_at_stop


class WordCount:
    __name__ = "word_count"

    def __call__(self, completions, **kwargs):
        return [float(len(c[0]["content"].split())) for c in completions]


@pytest.fixture(scope="module")
def data():
    return load_synthetic_captions("train", 16)


def args(tmp_path, name="out", **kw):
    base = dict(output_dir=str(tmp_path / name), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                num_mini_batches=1, num_ppo_epochs=1, max_steps=1, max_new_tokens=6, eval_steps=0, save_steps=0,
                seed=11, max_grad_norm=0.0)
    base.update(kw)
    return PPOConfig(**base)


def trainable(trainer):
    return {k: v.clone() for k, v in trainer._trainable_state().items()}


def test_gradient_accumulation_equivalence(tiny_vlm_dir, data, tmp_path):
    """One step on a mini-batch of 8 equals 4 accumulated micro-batches of 2."""
    path = tiny_vlm_dir("llava")
    # Each trainer seeds at construction: build and train one after the other so both
    # draw the same samples.
    one = PPOTrainer(path, args=args(tmp_path, "a", per_device_train_batch_size=8, gradient_accumulation_steps=1),
                     reward_funcs=[WordCount()], train_dataset=data)
    start = trainable(one)
    one.train()
    acc = PPOTrainer(path, args=args(tmp_path, "b", per_device_train_batch_size=2, gradient_accumulation_steps=4),
                     reward_funcs=[WordCount()], train_dataset=data)
    acc.train()
    assert one.log_history[0]["objective/scores"] == acc.log_history[0]["objective/scores"]
    a, b = trainable(one), trainable(acc)
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    assert moved > 1e-4
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-6, (diff, moved)  # float32 sums in another order; the update itself is ~1e-3


def test_entropy_bonus_changes_the_policy_update_only(tiny_vlm_dir, data, tmp_path):
    """ent_coef > 0 adds the entropy bonus to the policy's gradient; with ent_coef = 0 the
    logged entropy carries no graph. Same samples in both runs (same seed), so the value
    adapter and head, which the bonus does not reach, move identically."""
    path = tiny_vlm_dir("llava")
    runs = {}
    for coef in (0.0, 0.5):
        trainer = PPOTrainer(path, args=args(tmp_path, f"ent{coef}", ent_coef=coef), reward_funcs=[WordCount()],
                             train_dataset=data)
        trainer.train()
        runs[coef] = (trainable(trainer), trainer.log_history[0])
    (plain, log0), (bonus, log1) = runs[0.0], runs[0.5]
    assert log0["objective/scores"] == log1["objective/scores"] and log0["policy/entropy"] == log1["policy/entropy"]
    policy_diff = max((plain[k] - bonus[k]).abs().max().item() for k in plain if f".{POLICY}." in k)
    value_diff = max((plain[k] - bonus[k]).abs().max().item() for k in plain if f".{POLICY}." not in k)
    assert policy_diff > 1e-5 and value_diff == 0.0, (policy_diff, value_diff)


def test_adapters_move_base_and_reference_stay(tiny_vlm_dir, data, tmp_path):
    """Starting from an SFT adapter: policy and value adapters (and the value head) move;
    the base weights and the frozen 'ref' adapter do not."""
    from mmft.models.loading import load_vlm

    base = load_vlm(tiny_vlm_dir("llava"))
    sft = get_peft_model(base, default_lora_config(r=4, alpha=8))
    with torch.no_grad():
        for name, p in sft.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn_like(p))
    sft.save_pretrained(tmp_path / "sft")
    trainer = PPOTrainer(tiny_vlm_dir("llava"), args=args(tmp_path, num_ppo_epochs=2),
                         reward_funcs=[WordCount()], train_dataset=data, sft_adapter=str(tmp_path / "sft"))
    before = {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()}
    trainer.train()
    after = trainer.unwrapped.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(f"lora_A.{POLICY}" in k or f"lora_B.{POLICY}" in k for k in changed)
    assert any(f"lora_B.{VALUE}" in k for k in changed)
    assert any(k.startswith("value_head") for k in changed)
    assert not any(f".{REF}." in k for k in changed), sorted(k for k in changed if f".{REF}." in k)[:3]
    assert not any("lora_" not in k and not k.startswith("value_head") for k in changed)
    # The frozen reference is the SFT adapter: at step 0 the policy equals it (KL 0).
    assert trainer.log_history[0]["objective/kl"] == 0.0


def test_resume_matches_uninterrupted_run(tiny_vlm_dir, data, tmp_path):
    path = tiny_vlm_dir("llava")
    # save_steps under 1 is a share of the run, as in TrainingArguments: every iteration here.
    full = PPOTrainer(path, args=args(tmp_path, "full", max_steps=2, save_steps=0.5),
                      reward_funcs=[WordCount()], train_dataset=data)
    full.train()
    assert sorted(p.name for p in (tmp_path / "full").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    ckpt = os.path.join(tmp_path, "full", "checkpoint-1")
    assert os.path.exists(os.path.join(ckpt, "adapter_model.safetensors"))
    assert os.path.exists(os.path.join(ckpt, "critic", "value_head.safetensors"))
    resumed = PPOTrainer(path, args=args(tmp_path, "resumed", max_steps=2), reward_funcs=[WordCount()],
                         train_dataset=data)
    resumed.train(resume_from_checkpoint=ckpt)
    a, b = trainable(full), trainable(resumed)
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    assert full.log_history[-1]["objective/scores"] == resumed.log_history[-1]["objective/scores"]


def test_step_intervals_read_like_training_arguments():
    from mmft.config import every_n_steps

    assert every_n_steps(50, 100) == 50 and every_n_steps(50.0, 10) == 50
    assert every_n_steps(0.25, 100) == 25 and every_n_steps(0.3, 7) == 3  # ceil(2.1)
    assert every_n_steps(0.001, 10) == 1  # a share never rounds to "never"
    assert every_n_steps(0, 100) == 0 and every_n_steps(None, 100) == 0


def test_final_adapter_loads_with_peft(tiny_vlm_dir, data, tmp_path):
    from peft import PeftModel

    from mmft.models.loading import load_vlm

    trainer = PPOTrainer(tiny_vlm_dir("llava"), args=args(tmp_path), reward_funcs=[WordCount()], train_dataset=data)
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    model = PeftModel.from_pretrained(load_vlm(tiny_vlm_dir("llava")), out)
    state = trainer._trainable_state()
    loaded = dict(model.named_parameters())
    for k, v in state.items():
        if f"lora_A.{POLICY}" in k:
            name = k.replace("policy.", "", 1).replace(f".{POLICY}.", ".default.")
            assert torch.equal(loaded[name].detach(), v)
    assert (out / "critic" / "adapter_model.safetensors").exists()


def test_masks_from_lengths_when_pad_equals_eos():
    eos = 7  # pad == eos
    seqs = torch.tensor([[3, 4, eos, eos, eos], [5, eos, eos, eos, eos], [1, 2, 3, 4, 5]])
    ids, mask, stopped = truncate_at_stop(seqs, [eos, 9], pad_id=eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert stopped.tolist() == [True, True, False]
    # The stop token is inside the mask: the model is trained on emitting it.
    assert ids[0, 2] == eos and mask[0, 2] == 1


def test_pad_equals_eos_model_learns_to_stop(tiny_vlm_dir, data):
    """With pad == EOS, SFT on targets whose masks come from lengths teaches the stop."""
    from mmft.data.collator import VLMCollator
    from mmft.demo import sft_caption_loop
    from mmft.models.loading import load_processor, load_vlm
    from mmft.rl_trainer import RLTrainer  # noqa: F401  (same collator/rollout path as the trainers)
    from mmft.rollout import generate, stop_token_ids

    path = tiny_vlm_dir("llava", pad_equals_eos=True)
    model, processor = load_vlm(path), load_processor(path)
    assert processor.tokenizer.pad_token_id == processor.tokenizer.eos_token_id
    short = data.map(lambda r: {"references": [" ".join(r["references"][0].split()[:3])] * 5})
    sft_caption_loop(model, processor, short, steps=40, batch_size=8, learning_rate=3e-3, seed=0)
    prompts = VLMCollator(processor)([short[i] for i in range(8)], list(range(8)))
    ro = generate(model, prompts, max_new_tokens=12, stop_ids=stop_token_ids(model.generation_config,
                                                                              processor.tokenizer),
                  pad_id=processor.tokenizer.pad_token_id, do_sample=False)
    assert ro.stopped.float().mean() >= 0.75
    assert (ro.lengths <= 6).float().mean() >= 0.75


def test_scst_mean_baseline_advantages_center_each_group(tiny_vlm_dir, data, tmp_path):
    cfg = SCSTConfig(output_dir=str(tmp_path / "scst"), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                     max_steps=1, max_new_tokens=6, eval_steps=0, save_steps=0, num_generations=4, baseline="mean",
                     seed=5)
    trainer = SCSTTrainer(tiny_vlm_dir("llava"), args=cfg, reward_funcs=[WordCount()], train_dataset=data)
    seen = {}
    original = trainer.optimize

    def spy(rollout, d, first=None):
        seen["adv"], seen["mask"] = d["advantages"].clone(), rollout.response_mask.clone()
        return original(rollout, d, first)

    trainer.optimize = spy
    trainer.train()
    per_seq = (seen["adv"] * seen["mask"]).sum(-1) / seen["mask"].sum(-1).clamp(min=1)
    # Leave-one-out: within each group of k, sum_i (s_i - mean_{j!=i} s_j) = 0.
    torch.testing.assert_close(per_seq.view(-1, 4).sum(-1), torch.zeros(2), atol=1e-5, rtol=0)
    assert trainer.log_history[0]["objective/baseline"] == pytest.approx(trainer.log_history[0]["objective/scores"])


def test_scst_greedy_baseline_runs_and_updates(tiny_vlm_dir, data, tmp_path):
    cfg = SCSTConfig(output_dir=str(tmp_path / "scst"), per_device_train_batch_size=4, gradient_accumulation_steps=1,
                     max_steps=1, max_new_tokens=6, eval_steps=0, save_steps=0, seed=5)
    trainer = SCSTTrainer(tiny_vlm_dir("llava"), args=cfg, reward_funcs=[WordCount()], train_dataset=data)
    start = trainable(trainer)
    trainer.train()
    end = trainable(trainer)
    assert "objective/baseline" in trainer.log_history[0]
    assert max((end[k] - start[k]).abs().max().item() for k in end) > 0
    assert not any("value" in k for k in end)  # no critic in SCST
