"""PPO for VLMs with a critic that sees the image (ppo_spec.md, "One PPO iteration").

`step()` is the iteration as numbered in the spec; every piece of math is a pure
function of `mmft.ppo.core`, and everything shared with SCST (roles, rollout, scoring,
optimisation loop, checkpoints) is in `mmft.rl_trainer`.
"""

from __future__ import annotations

import time

import torch

from mmft.models.roles import POLICY, REF, VALUE
from mmft.ppo import core
from mmft.rl_trainer import RLTrainer, all_reduce_sum


class PPOTrainer(RLTrainer):
    """PPO with a learned critic: LoRA policy, reference and critic on one frozen base.

    Arguments mirror TRL's trainers: `model` (path or `PreTrainedModel`),
    `processing_class` (the processor), `args` (`PPOConfig`), `reward_funcs` (callables
    with TRL's reward contract; weights in `args.reward_weights`), `train_dataset`,
    `eval_dataset`, `peft_config` (LoRA for policy and critic adapters), `sft_adapter`
    (start from an SFT adapter, kept frozen as the reference).
    """

    with_critic = True
    algorithm = "ppo"

    def step(self) -> dict[str, float]:
        args = self.args
        t0 = time.time()
        # 1. Rollout: this rank's prompts, sampled responses cut at the stop set.
        indices = self.prompt_indices(self.iteration, args.local_rollout_batch_size)
        prompts, rows = self.collate(self.fetch_rows(self.train_dataset, indices), indices)
        rollout = self.rollout(prompts)
        t_gen = time.time() - t0
        # 5. Scores from the reward functions (first: they need the text only).
        scores, components, texts = self.score(rollout, rows)
        # 2-4. Old log-probs, reference log-probs and values, in the training layout (with one
        # micro-batch per rank, the first update's forward gives the old ones: `first`).
        data, first = self.old_pass(rollout, (POLICY, REF, VALUE))
        mask = rollout.response_mask
        # 6. Per-token rewards: -beta KL_t everywhere, the score on the last valid token.
        kl = core.kl_estimate(data["logprobs"], data["ref_logprobs"], args.kl_estimator) * mask
        rewards = core.per_token_rewards(scores, kl, mask, self.kl_ctl.value)
        if args.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False, all_reduce=all_reduce_sum)
        # 7. GAE over valid tokens; whiten advantages across ranks.
        bootstrap = None
        if args.bootstrap_truncated:
            last = core.last_valid_index(mask)
            last_value = data["values"][torch.arange(len(mask)), last]
            bootstrap = torch.where(rollout.stopped, torch.zeros_like(last_value), last_value)
        advantages, returns = core.gae(rewards, data["values"], mask, args.gamma, args.lam, bootstrap)
        if args.whiten_advantages:
            advantages = core.masked_whiten(advantages, mask, all_reduce=all_reduce_sum)
        data.update(advantages=advantages, returns=returns)
        # 8. Epochs x mini-batches x micro-batches, one optimizer step per mini-batch.
        stats = self.optimize(rollout, data, first)
        # 9. Metrics (masked; averaged over ranks).
        kl_sum = kl.sum(-1)
        metrics = {
            "objective/kl": kl_sum.mean().item(),
            "objective/scores": scores.mean().item(),
            "objective/rlhf_reward": (scores - self.kl_ctl.value * kl_sum).mean().item(),
            "objective/entropy": (-data["logprobs"] * mask).sum(-1).mean().item(),
            "val/mean": core.masked_mean(data["values"], mask).item(),
            "val/explained_variance": core.explained_variance(data["values"], returns, mask).item(),
            "response/length": mask.sum(-1).mean().item(),
            "response/stop_rate": rollout.stopped.float().mean().item(),
            **stats,
            **components,
        }
        elapsed = time.time() - t0
        metrics.update({"perf/samples_per_s": len(mask) / elapsed, "perf/tokens_per_s": mask.sum().item() / elapsed,
                        "perf/generation_share": t_gen / elapsed})
        metrics = self.reduce_mean(metrics)
        self.kl_ctl.update(metrics["objective/kl"], args.rollout_batch_size)
        self.log_samples(texts, scores, rows)
        return metrics
