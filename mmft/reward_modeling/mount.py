"""A learned reward mounted on PPO's shared base as one more frozen adapter.

ppo_spec.md ("Roles on one frozen base"): when the reward model was trained on the
policy's base, its LoRA adapter is loaded into the ActorCritic's peft model under the
name "reward" (frozen) and its heads sit beside it, so scoring costs one adapter and a
head, not a second copy of the base. Scoring switches to the "reward" adapter, runs the
reward model's own encoding (the layout it was trained in), and switches back to the
policy, which restores the trainable flags peft's `set_adapter` changes.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from mmft.models.roles import POLICY, ActorCritic
from mmft.reward_modeling.core import ensemble_reward
from mmft.reward_modeling.model import (
    RewardEncoder,
    RewardModelError,
    base_fingerprint,
    batch_images,
    load_head,
    read_info,
    same_base,
    score_inputs,
    score_rows,
)

REWARD = "reward"


class MountedReward:
    """TRL-contract reward scored through the ActorCritic's base with the "reward" adapter.

    Same scores as `reward_models.LearnedReward(path)` (same encoding, same weights);
    `last_mean` / `last_std` hold the last batch's ensemble statistics. It holds the live
    policy model, so it is for in-process use and does not pickle.
    """

    def __init__(self, actor_critic: ActorCritic, head: torch.nn.Module, encoder: RewardEncoder,
                 uncertainty_penalty: float, batch_size: int, name: str, adapter_name: str = REWARD):
        self.actor_critic = actor_critic
        self.adapter_name = adapter_name
        self.head = head
        self.encoder = encoder
        self.uncertainty_penalty = uncertainty_penalty
        self.batch_size = batch_size
        self.__name__ = name
        self.last_mean: list[float] | None = None
        self.last_std: list[float] | None = None

    def _forward(self, inputs: dict[str, torch.Tensor], last_index: torch.Tensor,
                 response_start: torch.Tensor | None = None) -> torch.Tensor:
        peft_model = self.actor_critic.policy
        was_training = peft_model.training
        # inference_mode: set_adapter would otherwise mark the reward adapter trainable.
        peft_model.set_adapter(self.adapter_name, inference_mode=True)
        peft_model.eval()
        try:
            return score_inputs(peft_model, self.head, inputs, last_index, response_start)
        finally:
            self.actor_critic.activate(POLICY)  # policy (and value) trainable again, "ref" frozen
            peft_model.set_requires_grad(self.adapter_name, requires_grad=False)
            peft_model.train(was_training)

    def member_rewards(self, prompts, completions, image=None, images=None) -> torch.Tensor:
        device = next(self.head.parameters()).device
        rows = batch_images(len(completions), image, images)
        return score_rows(self._forward, self.encoder, prompts, completions, rows, self.batch_size, device,
                          self.__name__)

    def __call__(self, prompts=None, completions=None, completion_ids=None, image=None, images=None,
                 **kwargs: Any) -> list[float]:
        if completions is None:
            raise TypeError(f"reward {self.__name__!r} was called without `completions`")
        values = self.member_rewards(prompts, completions, image=image, images=images)
        reward, mean, std = ensemble_reward(values, self.uncertainty_penalty)
        self.last_mean, self.last_std = mean.tolist(), std.tolist()
        return reward.tolist()

    def __getstate__(self):
        raise TypeError(f"reward {self.__name__!r} is mounted on a live policy model and cannot be pickled; "
                        "use reward_models.LearnedReward(path) where rewards run in other processes.")


def mount_reward_adapter(actor_critic: ActorCritic, rm_path: str | os.PathLike, uncertainty_penalty: float | None = None,
                         batch_size: int = 16, name: str = "learned", adapter_name: str = REWARD) -> MountedReward:
    """Load the reward model at `rm_path` into `actor_critic.policy` as the frozen adapter
    `adapter_name` ("reward") and return a reward callable that scores through the shared base.

    Call it on the unwrapped ActorCritic before `accelerator.prepare` (DDP registers
    parameters at wrap time; the reward adapter is frozen either way).

    Raises:
        RewardModelError: `rm_path` is not a reward model, or it was trained on another base
            (input embeddings differ), so its adapter would be meaningless on this one, or the
            policy model already holds an adapter of that name.
    """
    from mmft.models.loading import load_processor

    info = read_info(rm_path)
    peft_model = actor_critic.policy
    if adapter_name in peft_model.peft_config:
        raise RewardModelError(f"The policy model already holds an adapter named {adapter_name!r}; mount this "
                               "reward model under another adapter_name.")
    if peft_model.config.model_type != info.model_type or (
            info.base_fingerprint and not same_base(base_fingerprint(peft_model), info.base_fingerprint)):
        raise RewardModelError(
            f"{rm_path} was trained on base {info.base_model_name_or_path!r} ({info.model_type}), which is not the "
            f"policy's base ({peft_model.config.model_type}; input embeddings differ): it cannot share the base. "
            "Use reward_models.LearnedReward(path) as a separate reward model instead."
        )
    device = next(peft_model.parameters()).device
    peft_model.load_adapter(str(rm_path), adapter_name=adapter_name, is_trainable=False, torch_device=str(device))
    peft_model.set_requires_grad(adapter_name, requires_grad=False)
    actor_critic.activate(POLICY)
    actor_critic.__dict__.pop("_lora_layer_cache", None)  # new LoRA layers if the RM targets other modules
    head = load_head(rm_path, info).to(device)
    for p in head.parameters():
        p.requires_grad_(False)
    encoder = RewardEncoder(load_processor(rm_path), info.model_type, info.eos_token_id, info.max_completion_length)
    lam = info.uncertainty_penalty if uncertainty_penalty is None else float(uncertainty_penalty)
    return MountedReward(actor_critic, head, encoder, lam, batch_size, name, adapter_name)


def learned_rewards(reward_funcs) -> list:
    """The `reward_models.LearnedReward` objects among `reward_funcs` (a list or a
    `RewardComposer`, nested composers included), in order."""
    from mmft.rewards import RewardComposer
    from reward_models.learned import LearnedReward

    funcs = reward_funcs.reward_funcs if isinstance(reward_funcs, RewardComposer) else list(reward_funcs)
    found = []
    for func in funcs:
        if isinstance(func, LearnedReward):
            found.append(func)
        elif isinstance(func, RewardComposer):
            found += learned_rewards(func)
    return found


def mount_learned_rewards(actor_critic: ActorCritic, reward_funcs) -> list[str]:
    """Mount every `LearnedReward` among `reward_funcs` on `actor_critic`'s base (what
    `RLConfig.mount_reward_models` does at trainer construction).

    Each one's adapter joins the policy model as a frozen adapter ("reward", then
    "reward_1", ...), and the `LearnedReward` object itself then scores through it
    (`LearnedReward.mount`): same object, same name, same `std_reward()` companion, no
    second model loaded. Returns the adapter names, in order.

    Raises:
        RewardModelError: naming the reward, when one was trained on another base.
    """
    names = []
    for i, reward in enumerate(learned_rewards(reward_funcs)):
        adapter_name = REWARD if i == 0 else f"{REWARD}_{i}"
        try:
            mounted = mount_reward_adapter(actor_critic, reward.path, reward.uncertainty_penalty, reward.batch_size,
                                           reward.__name__, adapter_name)
        except RewardModelError as err:
            raise RewardModelError(
                f"reward {reward.__name__!r} ({reward!r}) cannot be mounted on the policy's base "
                f"(mount_reward_models=True): {err} In a trainer: mount_reward_models=False loads it as a separate "
                "model."
            ) from err
        reward.mount(mounted)
        names.append(adapter_name)
    return names
