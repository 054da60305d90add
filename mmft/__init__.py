"""mmft: RLHF-style fine-tuning of vision-language models.

PPO with a critic that sees the image, SCST, caption-metric and learned rewards,
human preference collection, on transformers + TRL + peft + accelerate/DeepSpeed.
"""

from mmft.ppo.config import PPOConfig, RLConfig, SCSTConfig

__version__ = "0.1.0"

__all__ = ["PPOConfig", "PPOTrainer", "RLConfig", "SCSTConfig", "SCSTTrainer"]


def __getattr__(name):
    # Trainers pull in transformers/peft/accelerate: import them on first use only.
    if name == "PPOTrainer":
        from mmft.ppo.trainer import PPOTrainer

        return PPOTrainer
    if name == "SCSTTrainer":
        from mmft.scst.trainer import SCSTTrainer

        return SCSTTrainer
    raise AttributeError(name)
