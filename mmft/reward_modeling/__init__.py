"""Image-aware reward models trained on preference pairs (Bradley-Terry), ensembles with
uncertainty penalties, and mounting a reward model on PPO's shared base.

    RewardModelConfig, RewardModelTrainer   training (recipes/reward_model.py)
    RewardModel, load_reward_model          backbone + K heads; the saved folder
    mount_reward_adapter                    the "reward" adapter on an ActorCritic's base
    core                                    BT loss, ensemble reward, pair accuracy

Scoring with TRL's reward contract: `reward_models.LearnedReward(path)`.
"""

__all__ = ["RewardModel", "RewardModelConfig", "RewardModelTrainer", "load_reward_model", "mount_reward_adapter"]


def __getattr__(name):
    # Heavy imports (transformers, peft, accelerate) on first use only.
    if name == "RewardModelConfig":
        from mmft.reward_modeling.config import RewardModelConfig

        return RewardModelConfig
    if name == "RewardModelTrainer":
        from mmft.reward_modeling.trainer import RewardModelTrainer

        return RewardModelTrainer
    if name in ("RewardModel", "load_reward_model"):
        from mmft.reward_modeling import model

        return getattr(model, name)
    if name == "mount_reward_adapter":
        from mmft.reward_modeling.mount import mount_reward_adapter

        return mount_reward_adapter
    raise AttributeError(name)
