"""A reward model mounted on PPO's shared base as the frozen adapter "reward"."""

import pytest
import torch

from mmft.reward_modeling import mount_reward_adapter
from mmft.reward_modeling.model import RewardModelError
from reward_models.learned import LearnedReward


def _ppo_trainer(model_dir, tmp_path, reward_funcs):
    from mmft import PPOConfig, PPOTrainer
    from mmft.data.synthetic import load_synthetic_captions

    args = PPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                     num_ppo_epochs=1, max_steps=1, max_new_tokens=5, eval_steps=0, save_steps=0, logging_steps=1,
                     seed=0)
    return PPOTrainer(model_dir, args=args, reward_funcs=reward_funcs, train_dataset=load_synthetic_captions("train", 4))


class _Zero:
    __name__ = "zero"

    def __call__(self, completions, **kwargs):
        return [0.0] * len(completions)


def test_mounted_scores_equal_standalone_without_a_second_model(trained_rm, tiny_vlm_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from mmft.data.synthetic import load_synthetic_captions
    from mmft.rewards import RewardComposer

    rm_dir = trained_rm()
    trainer = _ppo_trainer(tiny_vlm_dir("llava"), tmp_path, [_Zero()])
    roles = trainer.unwrapped
    n_before = sum(p.numel() for p in roles.parameters())
    trainable_before = {n for n, p in roles.named_parameters() if p.requires_grad}

    def no_second_model(*args, **kwargs):
        raise AssertionError("mounting must not load a second model")

    import transformers

    monkeypatch.setattr("mmft.models.loading.load_vlm", no_second_model)
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", no_second_model)
    mounted = mount_reward_adapter(roles, rm_dir, name="learned")
    monkeypatch.undo()

    # Only the reward adapter joined the base (the head sits in the reward callable).
    adapter = load_file(f"{rm_dir}/adapter_model.safetensors")
    added = sum(p.numel() for p in roles.parameters()) - n_before
    assert added == sum(t.numel() for t in adapter.values())
    head = sum(p.numel() for p in mounted.head.parameters())
    assert head == roles.config.get_text_config().hidden_size + 1
    reward_params = [n for n, _ in roles.named_parameters() if ".reward." in n]
    assert reward_params and not any(p.requires_grad for n, p in roles.named_parameters() if ".reward." in n)

    rows = load_synthetic_captions("test", 5)[:]
    completions = [[{"role": "assistant", "content": refs[0]}] for refs in rows["references"]]
    standalone = LearnedReward(rm_dir)(prompts=rows["prompt"], completions=completions, image=rows["image"])
    shared = mounted(prompts=rows["prompt"], completions=completions, image=rows["image"])
    assert shared == pytest.approx(standalone, abs=1e-5)
    # Scoring restored the policy: same trainable set, policy adapter active.
    assert {n for n, p in roles.named_parameters() if p.requires_grad} == trainable_before
    assert roles.policy.active_adapter == "policy"

    # One PPO iteration scored by the mounted reward: policy moves, the reward adapter does not.
    trainer.rewards = RewardComposer([mounted])
    frozen = {n: p.detach().clone() for n, p in roles.named_parameters() if ".reward." in n}
    policy = {n: p.detach().clone() for n, p in roles.named_parameters() if ".policy." in n}
    history = trainer.train()
    assert "rewards/learned" in history[0]
    assert all(torch.equal(frozen[n], p) for n, p in roles.named_parameters() if n in frozen)
    assert any(not torch.equal(policy[n], p) for n, p in roles.named_parameters() if n in policy)


def test_mounting_on_another_base_is_refused(trained_rm, tiny_vlm_dir, tmp_path):
    trainer = _ppo_trainer(tiny_vlm_dir("llava", seed=1), tmp_path, [_Zero()])
    with pytest.raises(RewardModelError, match="cannot share the base"):
        mount_reward_adapter(trainer.unwrapped, trained_rm())
