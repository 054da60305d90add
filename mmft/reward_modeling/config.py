"""RewardModelConfig: Bradley-Terry reward-model training settings on top of TrainingArguments."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from mmft.reward_modeling.model import check_pooling


@dataclass
class RewardModelConfig(TrainingArguments):
    """Training of an image-aware reward model from (image, prompt, chosen, rejected) pairs.

    One optimizer step sees `per_device_train_batch_size x gradient_accumulation_steps x
    world_size` pairs. `max_steps` > 0 fixes the number of optimizer steps; otherwise
    `num_train_epochs` passes over the training pairs are made.
    """

    # Defaults differ from TrainingArguments' (LoRA reward models; small preference sets).
    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW learning rate (LoRA and head)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training pairs (max_steps <= 0)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Pairs per micro-batch per device."})
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Pairs per evaluation batch."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps (a share of them if < 1)."})
    eval_steps: float | None = field(default=0, metadata={"help": "Evaluate every N optimizer steps (a share "
                                                                  "of them if < 1; 0: only at the end)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep every column (image, margin)."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Linear warmup: steps, or a share of them if < 1."})
    save_steps: float = field(default=0, metadata={"help": "Checkpoint every N optimizer steps (a share of them if "
                                                          "< 1; 0: none) to OUTPUT_DIR/checkpoint-N, which "
                                                          "train(resume_from_checkpoint=...) continues from and "
                                                          "LearnedReward loads; save_total_limit keeps the newest."})

    # The reward model
    num_heads: int = field(default=1, metadata={"help": "K scalar heads (an ensemble when K > 1): the reward is "
                                                        "mean - uncertainty_penalty * std over heads."})
    bootstrap: bool = field(default=True, metadata={"help": "With K > 1, each head trains on its own Poisson(1) "
                                                            "bootstrap resample of the pairs (ensemble diversity)."})
    uncertainty_penalty: float = field(default=0.0, metadata={"help": "lambda saved with the model: the default "
                                                                      "penalty LearnedReward applies to the std."})
    likelihood_term: bool = field(
        default=False, metadata={"help": "Each head adds a learned weight times the response's mean token "
                                         "log-likelihood given image and prompt under the backbone (its LM head, "
                                         "LoRA included): the VLM's own image-grounded judgement of the text as a "
                                         "prior that the pairs reweight and fine-tune. Worth it when the backbone "
                                         "captions well and pairs are few; costs the LM head over response "
                                         "tokens."})
    likelihood_init: float = field(default=1.0, metadata={"help": "Initial weight of the likelihood term."})
    pooling: str = field(
        default="last", metadata={"help": "What the heads read: 'last' (the hidden state of the response's EOS) "
                                          "or 'last+mean+sum' (also the mean and the sum of the response tokens' "
                                          "states, so each token can be scored where it stands; see RewardHead)."})
    center_rewards_coefficient: float | None = field(
        default=0.01, metadata={"help": "Weight of mean((r_c + r_r)^2), keeping rewards centred on 0 (None: off)."})
    max_completion_length: int | None = field(
        default=128, metadata={"help": "Response tokens kept (EOS included); longer responses are truncated."})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Longest prompt after image expansion; longer ones are an error."})
    eval_shuffled_images: bool = field(
        default=True, metadata={"help": "Also evaluate with the held-out images shuffled among the pairs "
                                        "(eval/accuracy_shuffled_images): near 0.5 when the model judges by the "
                                        "image, near eval/accuracy when it learned text-only preferences."})
    group_by_image: bool = field(
        default=False, metadata={"help": "Batch the pairs of one image and prompt together (images in a seeded random "
                                         "order each epoch). The collator scores each distinct caption of a batch "
                                         "once, so with the k captions x C(k, 2) pairs per image that make_pairs "
                                         "writes a step costs k instead of k(k-1) sequences per image; batches "
                                         "then hold fewer images."})
    share_prompts: bool = field(
        default=True, metadata={"help": "When a batch scores several captions of one image and prompt (group_by_image, "
                                        "or evaluation), run the prompt through the backbone once and the captions "
                                        "as its continuation (the same rewards and gradients; 1.5x faster "
                                        "steps with 8 captions an image on the preference demo's model, "
                                        "scripts/bench_reward_model.py). For "
                                        "model types in mmft.reward_modeling.model.SHARED_PROMPT_MODEL_TYPES; "
                                        "others score each caption with its prompt."})
    disable_dropout: bool = field(default=True, metadata={"help": "Turn dropout off (LoRA too) for deterministic "
                                                                  "rewards."})

    def __post_init__(self):
        super().__post_init__()
        check_pooling(self.pooling, "RewardModelConfig")
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {self.num_heads}.")
        if self.uncertainty_penalty < 0:
            raise ValueError(f"uncertainty_penalty must be >= 0, got {self.uncertainty_penalty}.")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("Set max_steps > 0 or num_train_epochs > 0.")
