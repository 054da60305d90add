"""PPOConfig: the PPO/SCST hyperparameters of ppo_spec.md on top of TrainingArguments."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from transformers import TrainingArguments


def _world_size() -> int:
    # Known from the launcher's environment before any process group exists.
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class RLConfig(TrainingArguments):
    """Rollout, reward and optimisation settings shared by PPO and SCST.

    One iteration samples `rollout_batch_size = per_device_train_batch_size x
    gradient_accumulation_steps x world_size` responses, then runs `num_ppo_epochs`
    passes of `num_mini_batches` optimizer steps each. `max_steps` counts iterations.
    """

    # Defaults differ from TrainingArguments' (ppo_spec.md, "Defaults to start from").
    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW learning rate (LoRA: 1e-4 to 5e-4)."})
    adam_epsilon: float = field(default=1e-5, metadata={"help": "AdamW epsilon (1e-5 as in PPO practice)."})
    max_steps: int = field(default=100, metadata={"help": "Number of iterations (rollout + optimisation)."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N iterations (a share of them if < 1)."})
    save_steps: float = field(default=50, metadata={"help": "Checkpoint every N iterations (a share of them if < 1)."})
    eval_steps: float | None = field(default=25, metadata={"help": "Evaluate every N iterations (a share of them if < 1)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Micro-batch size per device."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Rewards read every dataset column."})

    # Rollout
    max_new_tokens: int = field(default=32, metadata={"help": "Longest response sampled."})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Longest prompt after image expansion; longer ones are an error (or skipped)."})
    skip_long_prompts: bool = field(
        default=False, metadata={"help": "Drop (and count) prompts over max_prompt_length instead of failing."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature; logits are divided by it in "
                                                              "every log-prob pass too."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0: off)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (1.0: off)."})
    gather_for_generation: bool = field(
        default=True, metadata={"help": "Under ZeRO-3, gather the weights to generate (fast); off for models that "
                                        "do not fit on one device."})

    # Rewards
    reward_weights: list[float] | None = field(default=None, metadata={"help": "One weight per reward function."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtract this from the score of responses without a stop token."})
    mount_reward_models: bool = field(
        default=False, metadata={"help": "Score every reward_models.LearnedReward among the rewards through the "
                                         "policy's base, its LoRA loaded there as one more frozen adapter, instead "
                                         "of loading a second copy of the base (memory: one adapter and a head). "
                                         "The reward model must have been trained on this base (an error names "
                                         "the reward otherwise); scores equal the standalone model's when the "
                                         "policy's base has the same dtype (not with load_in_4bit). Not with "
                                         "DeepSpeed ZeRO-3."})

    # KL control
    kl_coef: float = field(default=0.05, metadata={"help": "beta: KL penalty coefficient (initial, if adaptive)."})
    kl_estimator: str = field(default="k1", metadata={"help": "'k1' (logp - logp_ref) or 'k3'."})
    kl_target: float | None = field(
        default=None, metadata={"help": "Target KL per response for the adaptive controller (None: fixed beta)."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon of the adaptive KL controller (samples)."})

    # Optimisation
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    num_mini_batches: int = field(default=1, metadata={"help": "Optimizer steps per pass."})
    cliprange: float = field(default=0.2, metadata={"help": "PPO ratio clip epsilon."})
    ent_coef: float = field(default=0.0, metadata={"help": "Entropy bonus coefficient (exploration knob)."})
    whiten_advantages: bool = field(default=True, metadata={"help": "Whiten advantages over the rollout batch."})
    fuse_old_pass: bool = field(
        default=True, metadata={"help": "When each rank's rollout is one micro-batch (gradient_accumulation_steps "
                                        "1), the first update's forward, still at the old weights and in the "
                                        "training layout, also gives the old log-probs (and values): one no-grad "
                                        "forward fewer per iteration, same result. False: always a separate pass."})

    # Logging and evaluation
    num_sample_captions: int = field(default=3, metadata={"help": "Sample responses with rewards in each log."})
    eval_max_samples: int | None = field(default=None, metadata={"help": "Cap on eval rows (None: all)."})
    disable_dropout: bool = field(default=True, metadata={"help": "Turn dropout off everywhere (LoRA too)."})

    def __post_init__(self):
        super().__post_init__()
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}.")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (greedy rollouts give no exploration; use SCST's baseline).")
        self.world = _world_size()
        local = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if self.gradient_accumulation_steps % self.num_mini_batches:
            raise ValueError(
                f"The rollout batch (per_device_train_batch_size={self.per_device_train_batch_size} x "
                f"gradient_accumulation_steps={self.gradient_accumulation_steps} x world_size={self.world} = "
                f"{local * self.world}) must split into num_mini_batches={self.num_mini_batches} mini-batches of "
                f"whole micro-batches: make gradient_accumulation_steps a multiple of num_mini_batches."
            )
        self.local_rollout_batch_size = local
        self.rollout_batch_size = local * self.world
        self.local_mini_batch_size = local // self.num_mini_batches
        self.micro_batches_per_mini_batch = self.gradient_accumulation_steps // self.num_mini_batches


@dataclass
class PPOConfig(RLConfig):
    """PPO with a learned critic (ppo_spec.md)."""

    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip epsilon around the old values."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    # lam = 1 (veRL's default; the spec's starting point was TRL's 0.95): the reward of a caption
    # comes at its end, and with lam < 1 the early tokens' advantages lean on the critic's
    # bootstrapped values while it still explains little of the return. BENCHMARKS.md,
    # "GAE lambda": one-pass held-out CIDEr-D 0.730 against 0.677 with 0.95 (ten and six seeds).
    lam: float = field(default=1.0, metadata={"help": "GAE lambda (1: Monte-Carlo returns minus the critic's value)."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten per-token rewards (valid tokens only)."})
    bootstrap_truncated: bool = field(
        default=False, metadata={"help": "Bootstrap GAE from V for responses cut by max_new_tokens."})
    critic: str = field(default="shared", metadata={"help": "'shared': a second LoRA adapter on the policy's base; "
                                                            "'separate': its own backbone; 'policy': the value head "
                                                            "alone on the policy adapter's last hidden state (one "
                                                            "forward gives log-probs and values, about half the "
                                                            "training compute; the value loss also trains the "
                                                            "policy adapter, weighted by vf_coef)."})
    critic_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Backbone of a separate critic (default: the policy's base)."})
    critic_layers: str = field(  # or an int (Python, YAML); the command line gives "N"
        default="half", metadata={"help": "critic='shared' only: how many of the language model's top decoder layers "
                                          "the critic's adapter covers. The critic runs them on its own from the "
                                          "reference pass's input to the first of them (cached over the rollout); "
                                          "below them it is the frozen reference, so its forward and backward cost "
                                          "those layers instead of the whole model and vision tower. 'half' "
                                          "(default): the top half; N: the top N; 'all': the adapter on every layer, "
                                          "with its own forward over the whole model."})

    def __post_init__(self):
        super().__post_init__()
        if self.critic not in ("shared", "separate", "policy"):
            raise ValueError(f"critic must be 'shared', 'separate' or 'policy', got {self.critic!r}.")
        if self.critic_model_name_or_path and self.critic != "separate":
            raise ValueError(f"critic_model_name_or_path is only used with critic='separate' (critic={self.critic!r}).")
        layers = self.critic_layers
        if isinstance(layers, str) and layers.strip().isdigit():  # from the command line
            layers = self.critic_layers = int(layers)
        if not (layers in ("half", "all") or (type(layers) is int and layers >= 1)):
            raise ValueError(f"critic_layers must be 'half', 'all' or a number of layers >= 1, got {layers!r}.")
        if type(layers) is int and self.critic != "shared":
            raise ValueError(f"critic_layers={layers} needs critic='shared' (critic={self.critic!r}): the other "
                             "critics have no adapter of their own on the policy's base.")


@dataclass
class SCSTConfig(RLConfig):
    """Self-critical sequence training (Rennie et al. 2017; Luo 2020 for the k-sample baseline)."""

    num_ppo_epochs: int = field(default=1, metadata={"help": "Passes per rollout (1 = plain REINFORCE)."})
    whiten_advantages: bool = field(default=False, metadata={"help": "Whiten s - b over the batch (off in SCST)."})
    kl_coef: float = field(default=0.0, metadata={"help": "Optional KL penalty to the reference (0: off)."})
    baseline: str = field(default="greedy", metadata={"help": "'greedy' (SCST) or 'mean' (new self-critical: "
                                                              "mean score of the other k-1 samples)."})
    num_generations: int = field(default=1, metadata={"help": "Samples per prompt (k); 'mean' needs k >= 2."})

    def __post_init__(self):
        super().__post_init__()
        if self.baseline not in ("greedy", "mean"):
            raise ValueError(f"baseline must be 'greedy' or 'mean', got {self.baseline!r}.")
        if self.baseline == "mean" and self.num_generations < 2:
            raise ValueError("baseline='mean' needs num_generations >= 2 (the baseline is the other samples' mean).")
        if self.local_rollout_batch_size % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size x gradient_accumulation_steps = {self.local_rollout_batch_size} must "
                f"be a multiple of num_generations={self.num_generations} (k samples of each prompt per rank)."
            )
