"""A learned, image-aware reward: the score of an mmft reward model (recipes/reward_model.py).

`LearnedReward(path)` follows TRL's reward contract: called with `prompts`, `completions`
and every dataset column, it reads the images from the `images` (list per row) or
`image` column (or from image parts embedded in the prompt messages, as TRL's
GRPOTrainer passes them), scores each (image, prompt, completion) with the reward model
in batches, and returns one float per completion.

With an ensemble (K heads) the reward is mean - lambda * std over members
(`uncertainty_penalty`, default: the value saved with the model); the last batch's
member mean and std stay in `last_mean` / `last_std`, are passed to TRL's `log_metric`
as `<name>_std` when the trainer provides it, and `std_reward()` gives a companion
reward named `<name>_std` (weight it 0) that reports them in any trainer's per-reward
logs.

Mounted (`mount`, which mmft's PPO/SCST trainers call for `mount_reward_models=True`):
the reward model's adapter sits on the policy's base as a frozen adapter and this object
scores through it, loading no second model.

Picklable: the model loads lazily on the first call in whichever process calls it, and
`__getstate__` drops it, so the object can be sent to worker processes. The model
itself lives in `mmft.reward_modeling` (this module imports it only when scoring).
"""

from __future__ import annotations

import os
from typing import Any


class LearnedReward:
    """Reward = mean - lambda * std of an mmft reward model's heads on (image, prompt, completion).

    Args:
        path: folder written by `recipes/reward_model.py` / `RewardModelTrainer.save_model`.
        uncertainty_penalty: lambda; None uses the value saved with the model.
        batch_size: rows per forward pass.
        device: "cpu", "cuda", ...; default CUDA when available.
        dtype: dtype of the base model (e.g. "bfloat16"); default as saved.
        base_model: base VLM path, when it moved since training.
        name: the reward's `__name__` (logged as rewards/<name>).
    """

    def __init__(self, path: str | os.PathLike, uncertainty_penalty: float | None = None, batch_size: int = 16,
                 device: str | None = None, dtype: str | None = None, base_model: str | None = None,
                 name: str = "learned"):
        from mmft.reward_modeling.model import read_info

        self.path = str(path)
        info = read_info(self.path)  # fail now, in the main process, on a wrong path
        self.num_heads = info.num_heads
        self.uncertainty_penalty = info.uncertainty_penalty if uncertainty_penalty is None else float(
            uncertainty_penalty)
        if self.uncertainty_penalty < 0:
            raise ValueError(f"reward {name!r}: uncertainty_penalty must be >= 0, got {self.uncertainty_penalty}")
        self.batch_size = int(batch_size)
        self.device = device
        self.dtype = dtype
        self.base_model = base_model
        self.__name__ = name
        self.last_mean: list[float] | None = None
        self.last_std: list[float] | None = None
        self._model = None
        self._encoder = None
        self._mounted = None

    def mount(self, mounted) -> None:
        """Score through `mounted` (a `mmft.reward_modeling.mount.MountedReward`: this reward
        model's adapter on a policy's shared base) instead of loading the model."""
        self._mounted = mounted

    @property
    def is_mounted(self) -> bool:
        return self._mounted is not None

    def _load(self) -> None:
        import torch

        from mmft.reward_modeling.model import RewardEncoder, load_reward_model

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, processor, info = load_reward_model(self.path, base_model=self.base_model, dtype=self.dtype,
                                                   device=device)
        self._device = device
        self._encoder = RewardEncoder(processor, info.model_type, info.eos_token_id, info.max_completion_length)
        self._model = model

    def member_rewards(self, prompts, completions, image=None, images=None):
        """Rewards of every ensemble member: a float32 tensor [N, K]."""
        from mmft.reward_modeling.model import batch_images, score_rows

        if completions is None:
            raise TypeError(f"reward {self.__name__!r} was called without `completions`")
        if self._mounted is not None:
            return self._mounted.member_rewards(prompts, completions, image=image, images=images)
        if self._model is None:
            self._load()
        rows = batch_images(len(completions), image, images)
        return score_rows(self._model, self._encoder, prompts, completions, rows, self.batch_size, self._device,
                          self.__name__)

    def __call__(self, prompts=None, completions=None, completion_ids=None, image=None, images=None,
                 **kwargs: Any) -> list[float]:
        from mmft.reward_modeling.core import ensemble_reward

        values = self.member_rewards(prompts, completions, image=image, images=images)
        reward, mean, std = ensemble_reward(values, self.uncertainty_penalty)
        self.last_mean, self.last_std = mean.tolist(), std.tolist()
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and self.num_heads > 1:  # TRL's GRPO/RLOO pass this hook
            log_metric(f"{self.__name__}_std", float(std.mean()))
        return reward.tolist()

    def std_reward(self) -> LearnedRewardStd:
        """A companion reward named `<name>_std` returning the last call's member std.
        Put it after this reward in the same reward list, with weight 0."""
        return LearnedRewardStd(self)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_model"] = None  # reloaded lazily in the receiving process
        state["_encoder"] = None
        state["_mounted"] = None  # a live policy model stays in its process
        return state

    def __repr__(self) -> str:
        mounted = f", mounted as {self._mounted.adapter_name!r}" if self._mounted is not None else ""
        return (f"LearnedReward({self.path!r}, heads={self.num_heads}, "
                f"uncertainty_penalty={self.uncertainty_penalty}, name={self.__name__!r}{mounted})")


class LearnedRewardStd:
    """The ensemble std of the last batch its `LearnedReward` scored (for logging).

    It must be called after its parent on the same batch (reward lists are called in
    order); pickled in one list with its parent, it keeps pointing at the same object.
    """

    def __init__(self, parent: LearnedReward):
        self.parent = parent
        self.__name__ = f"{parent.__name__}_std"

    def __call__(self, prompts=None, completions=None, **kwargs: Any) -> list[float]:
        std = self.parent.last_std
        if std is None or completions is None or len(std) != len(completions):
            raise RuntimeError(
                f"reward {self.__name__!r} reports the std of reward {self.parent.__name__!r} on the same batch: "
                "list it right after that reward (weight 0)."
            )
        return list(std)
