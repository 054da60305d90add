"""mmft: RLHF-style fine-tuning of vision-language models.

PPO with a critic that sees the image, SCST, caption-metric and learned rewards,
human preference collection, on transformers + TRL + peft + accelerate/DeepSpeed.
"""

__version__ = "0.1.0"

__all__ = ["PPOConfig", "PPOTrainer", "RLConfig", "SCSTConfig", "SCSTTrainer"]


def __getattr__(name):
    # Configs and trainers pull in torch/transformers/peft: import them on first use only,
    # so `mmft` subcommands that need none of it start fast.
    if name in ("PPOConfig", "RLConfig", "SCSTConfig"):
        from mmft.ppo import config

        return getattr(config, name)
    if name == "PPOTrainer":
        from mmft.ppo.trainer import PPOTrainer

        return PPOTrainer
    if name == "SCSTTrainer":
        from mmft.scst.trainer import SCSTTrainer

        return SCSTTrainer
    raise AttributeError(name)
