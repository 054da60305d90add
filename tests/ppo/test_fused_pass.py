"""The two compute savers: `fuse_old_pass` (the first update's forward gives the old
log-probs and values) and `critic="policy"` (the value head on the policy's own hidden
states, one forward for logits and values). Both must leave the algorithm unchanged."""

import os

import pytest
import torch
from peft import get_peft_model

from mmft import PPOConfig, PPOTrainer, SCSTConfig, SCSTTrainer
from mmft.data.synthetic import load_synthetic_captions
from mmft.models.loading import load_vlm
from mmft.models.roles import POLICY, VALUE, ActorCritic
from mmft.rl_trainer import default_lora_config
from mmft.rollout import training_inputs
from mmft.testing import ARCHS
from tests.ppo.test_ppo_archs import WordCount, _dataset_for


@pytest.fixture(scope="module")
def data():
    return load_synthetic_captions("train", 16)


def config(cls, tmp_path, name, **kw):
    base = dict(output_dir=str(tmp_path / name), per_device_train_batch_size=8, gradient_accumulation_steps=1,
                num_mini_batches=1, max_steps=2, max_new_tokens=6, eval_steps=0, save_steps=0, seed=11,
                max_grad_norm=1.0, learning_rate=1e-3)
    base.update(kw)
    return cls(**base)


def state(trainer):
    return {k: v.clone() for k, v in trainer._trainable_state().items()}


def sampled_batch(trainer, n: int = 4):
    """A rollout of the first `n` training rows, its training-layout inputs, P and R."""
    idx = list(range(n))
    prompts, _ = trainer.collate(trainer.fetch_rows(trainer.train_dataset, idx), idx)
    rollout = trainer.rollout(prompts)
    inputs = training_inputs(rollout.prompts, rollout.response_ids, rollout.response_mask, trainer.model_type)
    return rollout, inputs, rollout.prompts.prompt_length, rollout.response_ids.shape[1]


def count_forwards(trainer) -> list[int]:
    """Counts the language model's forwards (every role's pass goes through it once)."""
    calls = [0]
    lm = trainer.unwrapped.policy.get_base_model().model.language_model
    lm.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("algorithm,critic", [("ppo", "shared"), ("ppo", "policy"), ("ppo", "separate"),
                                              ("ppo", "top_layer"), ("scst", None)])
def test_fused_old_pass_gives_the_same_training(algorithm, critic, tiny_vlm_dir, data, tmp_path):
    """With one micro-batch per rank, fusing the old-log-prob pass into the first update
    changes nothing but the forward count: same metrics, same adapters after two
    iterations of two epochs (the second epoch runs the ordinary path)."""
    path = tiny_vlm_dir("llava")
    runs = {}
    for fused in (False, True):
        if algorithm == "ppo":
            kw = {"top_layer": dict(critic="shared", critic_layers=1),
                  "shared": dict(critic="shared", critic_layers="all")}.get(critic, dict(critic=critic))
            cfg = config(PPOConfig, tmp_path, f"{fused}", num_ppo_epochs=2, fuse_old_pass=fused, **kw)
            trainer = PPOTrainer(path, args=cfg, reward_funcs=[WordCount()], train_dataset=data)
        else:
            cfg = config(SCSTConfig, tmp_path, f"{fused}", num_ppo_epochs=2, baseline="mean", num_generations=2,
                         kl_coef=0.05, fuse_old_pass=fused)
            trainer = SCSTTrainer(path, args=cfg, reward_funcs=[WordCount()], train_dataset=data)
        start = state(trainer)
        calls = count_forwards(trainer)
        trainer.train()
        runs[fused] = (trainer, start, state(trainer), calls[0])
    (plain, start, a, n_plain), (fused, _, b, n_fused) = runs[False], runs[True]
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-4  # it trained
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    for h_plain, h_fused in zip(plain.log_history, fused.log_history):
        for key in ("objective/scores", "objective/kl", "loss/policy", "loss/value", "policy/clipfrac",
                    "policy/approxkl", "val/explained_variance"):
            if key in h_plain:
                assert h_fused[key] == pytest.approx(h_plain[key], abs=1e-5, nan_ok=True), key
    # Generation runs the language model once per new token; the passes are what differ.
    # Passes of the policy base (the top-layer critic runs no full forward of its own).
    separate_passes = {"shared": 2, "separate": 1, "policy": 1, "top_layer": 1, None: 1}[critic]
    assert n_plain - n_fused == 2 * separate_passes


def test_no_fusion_with_several_micro_batches(tiny_vlm_dir, data, tmp_path):
    cfg = config(PPOConfig, tmp_path, "acc", per_device_train_batch_size=4, gradient_accumulation_steps=2,
                 max_steps=1)
    trainer = PPOTrainer(tiny_vlm_dir("llava"), args=cfg, reward_funcs=[WordCount()], train_dataset=data)
    idx = list(range(8))
    prompts, _ = trainer.collate(trainer.fetch_rows(data, idx), idx)
    _, first = trainer.old_pass(trainer.rollout(prompts), (POLICY, VALUE))
    assert first is None


@pytest.mark.parametrize("arch", list(ARCHS))
def test_policy_critic_values_come_with_the_logits(arch, tiny_vlm_dir, tmp_path):
    """critic="policy": one forward gives the same logits as the policy pass and the same
    values as the value head on the policy's last hidden state, on every zoo architecture
    (batches mixing one-image, two-image and text-only prompts)."""
    cfg = PPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_new_tokens=4, critic="policy")
    trainer = PPOTrainer(tiny_vlm_dir(arch), args=cfg, reward_funcs=[WordCount()], train_dataset=_dataset_for(arch))
    model = trainer.unwrapped
    assert VALUE not in model.policy.peft_config
    torch.manual_seed(0)
    torch.nn.init.normal_(model.value_head.summary.weight, std=0.5)
    rollout, inputs, P, R = sampled_batch(trainer)
    with torch.no_grad():
        both = model(inputs, P, R, 1.0, (POLICY, VALUE))
        logits = model(inputs, P, R, 1.0, (POLICY,))["logits"]
        values = model(inputs, P, R, 1.0, (VALUE,))["values"]
    mask = rollout.response_mask.bool()
    torch.testing.assert_close(both["logits"][mask], logits[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both["values"][mask], values[mask], atol=1e-5, rtol=1e-5)
    assert values[mask].abs().max() > 1e-3


def test_policy_critic_trains_saves_and_resumes(tiny_vlm_dir, data, tmp_path):
    path = tiny_vlm_dir("llava")
    full = PPOTrainer(path, args=config(PPOConfig, tmp_path, "full", critic="policy", save_steps=1),
                      reward_funcs=[WordCount()], train_dataset=data)
    start = state(full)
    full.train()
    end = state(full)
    changed = {k for k in end if not torch.equal(end[k], start[k])}
    assert any(k.startswith("value_head") for k in changed) and any(f"lora_A.{POLICY}" in k for k in changed)
    assert not any(f".{VALUE}." in k for k in end)  # no critic adapter
    assert full.log_history[-1]["val/explained_variance"] != 0.0
    ckpt = os.path.join(tmp_path, "full", "checkpoint-1")
    assert sorted(os.listdir(os.path.join(ckpt, "critic"))) == ["value_head.safetensors"]
    resumed = PPOTrainer(path, args=config(PPOConfig, tmp_path, "resumed", critic="policy"),
                         reward_funcs=[WordCount()], train_dataset=data)
    resumed.train(resume_from_checkpoint=ckpt)
    assert max((end[k] - v).abs().max().item() for k, v in state(resumed).items()) == 0.0


def test_policy_critic_config_errors():
    with pytest.raises(ValueError, match="critic must be"):
        PPOConfig(output_dir="unused", critic="value")
    with pytest.raises(ValueError, match="only used with critic='separate'"):
        PPOConfig(output_dir="unused", critic="policy", critic_model_name_or_path="x")


def test_policy_critic_refuses_a_model_without_one_head_call(tiny_vlm_dir):
    """An architecture whose LM head does not run once on the response positions gets an
    error naming the fix instead of values from the wrong positions."""
    peft_model = get_peft_model(load_vlm(tiny_vlm_dir("llava")), default_lora_config(), adapter_name=POLICY)
    roles = ActorCritic(peft_model, value_on_policy=True)
    ids = torch.tensor([[5, 6, 7, 8]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    head = peft_model.get_base_model().get_output_embeddings()
    head.register_forward_pre_hook(lambda m, args: (args[0][:, -1:],))  # a head that sees one position
    with pytest.raises(RuntimeError, match="critic='shared'"):
        roles(inputs, 2, 2, 1.0, (POLICY, VALUE))
