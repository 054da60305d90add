"""`RLConfig.mount_reward_models`: PPO mounts a LearnedReward on the policy's base itself."""

import pytest
import torch

from mmft.reward_modeling.model import RewardModelError
from reward_models.learned import LearnedReward


def _ppo_trainer(model_dir, tmp_path, reward_funcs, **kwargs):
    from mmft import PPOConfig, PPOTrainer
    from mmft.data.synthetic import load_synthetic_captions

    args = PPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                     num_ppo_epochs=1, max_steps=1, max_new_tokens=5, eval_steps=0, save_steps=0, logging_steps=1,
                     seed=0, **kwargs)
    return PPOTrainer(model_dir, args=args, reward_funcs=reward_funcs, train_dataset=load_synthetic_captions("train", 4))


class RecordingReward(LearnedReward):
    """A LearnedReward that keeps what the trainer called it with and what it returned."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def __call__(self, **kwargs):
        out = super().__call__(**kwargs)
        self.calls.append((kwargs, out))
        return out


def test_trainer_mounts_learned_reward_same_scores_no_second_model(trained_rm, tiny_vlm_dir, tmp_path, monkeypatch):
    rm_dir = trained_rm(num_heads=2)
    reward = RecordingReward(rm_dir, name="learned", uncertainty_penalty=0.5)

    def no_second_model(*args, **kwargs):
        raise AssertionError("a mounted reward must not load its own model")

    monkeypatch.setattr("mmft.reward_modeling.model.load_reward_model", no_second_model)
    trainer = _ppo_trainer(tiny_vlm_dir("llava"), tmp_path, [reward, reward.std_reward()], reward_weights=[1.0, 0.0],
                           mount_reward_models=True)
    roles = trainer.unwrapped
    assert reward.is_mounted and "reward" in roles.policy.peft_config
    assert not any(p.requires_grad for n, p in roles.named_parameters() if ".reward." in n)
    # Mounted before the optimizer was built: none of its parameters are optimised.
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for n, p in roles.named_parameters() if ".reward." in n)

    frozen = {n: p.detach().clone() for n, p in roles.named_parameters() if ".reward." in n}
    policy = {n: p.detach().clone() for n, p in roles.named_parameters() if ".policy." in n}
    history = trainer.train()
    monkeypatch.undo()

    # PPO ran an iteration scored by the mounted reward: the policy moved, the reward adapter did not.
    assert "rewards/learned" in history[0] and "rewards/learned_std" in history[0]
    assert all(torch.equal(frozen[n], p) for n, p in roles.named_parameters() if n in frozen)
    assert any(not torch.equal(policy[n], p) for n, p in roles.named_parameters() if n in policy)
    assert roles.policy.active_adapter == "policy"

    # What the trainer scored, scored again by a standalone LearnedReward (its own model).
    assert reward.calls
    standalone = LearnedReward(rm_dir, uncertainty_penalty=0.5)
    for kwargs, mounted_scores in reward.calls:
        assert len(mounted_scores) == 4
        assert mounted_scores == pytest.approx(standalone(**kwargs), abs=1e-5)
        assert reward.last_std is not None
    assert standalone._model is not None and not standalone.is_mounted


def test_mounting_requested_on_another_base_names_the_reward(trained_rm, tiny_vlm_dir, tmp_path):
    other_base = tiny_vlm_dir("llava", seed=1)
    reward = LearnedReward(trained_rm(), name="caption_rm")
    with pytest.raises(RewardModelError, match=r"reward 'caption_rm'.*mount_reward_models=False"):
        _ppo_trainer(other_base, tmp_path / "a", [reward], mount_reward_models=True)
    # Off (the default), the same reward stays a separate model and the trainer builds.
    trainer = _ppo_trainer(other_base, tmp_path / "b", [reward])
    assert not reward.is_mounted and "reward" not in trainer.unwrapped.policy.peft_config


def test_learned_reward_from_a_recipe_rewards_section_is_mounted(trained_rm, tiny_vlm_dir, tmp_path):
    from mmft.rewards import load_rewards

    # What a recipe YAML's `rewards:` builds: a composer holding the registry's "learned" reward.
    composer = load_rewards([{"name": "learned", "weight": 1.0, "kwargs": {"path": trained_rm(), "name": "rm"}},
                             {"name": "length", "weight": 0.0, "kwargs": {"target": 12}}])
    trainer = _ppo_trainer(tiny_vlm_dir("llava"), tmp_path, composer, mount_reward_models=True)
    reward = composer.reward_funcs[0]
    assert trainer.rewards is composer and reward.is_mounted
    assert "mounted as 'reward'" in repr(reward) and "reward" in trainer.unwrapped.policy.peft_config
