"""Self-critical sequence training on the same rollout and reward code as PPO.

Rennie et al. 2017: REINFORCE whose baseline is the score of the model's own greedy
caption for the same image; advantage = s(sample) - s(greedy), broadcast over the
sample's tokens (stop token included). `baseline="mean"` is the "new self-critical"
variant (Luo 2020): k samples per image, baseline = mean score of the other k-1. No
critic. With one pass per rollout the clipped-ratio loss is exactly REINFORCE (ratio 1).
"""

from __future__ import annotations

import time

import torch

from mmft.models.roles import POLICY, REF
from mmft.ppo import core
from mmft.rl_trainer import RLTrainer


class SCSTTrainer(RLTrainer):
    """SCST (greedy or leave-one-out baseline); same constructor as `PPOTrainer`."""

    with_critic = False
    algorithm = "scst"

    def step(self) -> dict[str, float]:
        args = self.args
        k = args.num_generations
        t0 = time.time()
        # 1. Rollout: k samples of each of this rank's prompts.
        indices = self.prompt_indices(self.iteration, args.local_rollout_batch_size // k)
        prompts, rows = self.collate(self.fetch_rows(self.train_dataset, indices), indices)
        rows_k = [r for r in rows for _ in range(k)]
        rollout = self.rollout(prompts.repeat(k))
        t_gen = time.time() - t0
        mask = rollout.response_mask
        # 2. Scores of the samples, and the baseline.
        scores, components, texts = self.score(rollout, rows_k)
        if args.baseline == "greedy":
            greedy = self.rollout(prompts, greedy=True)
            baseline_scores, _, _ = self.score(greedy, rows)
            baseline = baseline_scores.repeat_interleave(k)
        else:
            grouped = scores.view(-1, k)
            baseline = ((grouped.sum(-1, keepdim=True) - grouped) / (k - 1)).view(-1)
        # Old (and reference) log-probs in the training layout; `first`: see RLTrainer.old_pass.
        data, first = self.old_pass(rollout, (POLICY, REF) if args.kl_coef > 0 else (POLICY,))
        kl_sum = torch.zeros(len(mask))
        if args.kl_coef > 0:
            kl_sum = (core.kl_estimate(data["logprobs"], data["ref_logprobs"], args.kl_estimator) * mask).sum(-1)
        # 3. Advantage s - b (KL-penalised when beta > 0), broadcast over valid tokens.
        advantages = ((scores - self.kl_ctl.value * kl_sum - baseline)[:, None] * mask)
        if args.whiten_advantages:
            advantages = core.masked_whiten(advantages, mask)
        data["advantages"] = advantages
        # 4. Policy-gradient update(s).
        stats = self.optimize(rollout, data, first)
        elapsed = time.time() - t0
        metrics = {
            "objective/scores": scores.mean().item(),
            "objective/baseline": baseline.mean().item(),
            "objective/kl": kl_sum.mean().item(),
            "objective/rlhf_reward": (scores - self.kl_ctl.value * kl_sum).mean().item(),
            "response/length": mask.sum(-1).mean().item(),
            "response/stop_rate": rollout.stopped.float().mean().item(),
            "perf/samples_per_s": len(mask) / elapsed,
            "perf/tokens_per_s": mask.sum().item() / elapsed,
            "perf/generation_share": t_gen / elapsed,
            **stats,
            **components,
        }
        metrics = self.reduce_mean(metrics)
        self.kl_ctl.update(metrics["objective/kl"], args.rollout_batch_size)
        self.log_samples(texts, scores, rows_k)
        return metrics
