from mmft.ppo.config import PPOConfig, RLConfig, SCSTConfig

__all__ = ["PPOConfig", "RLConfig", "SCSTConfig"]
