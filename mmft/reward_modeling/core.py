"""Reward-model math as tensor-in, tensor-out functions (imports only torch).

Bradley-Terry (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1): the probability that
the chosen response beats the rejected one is sigmoid(r_c - r_r), so the loss is
-log sigmoid(r_c - r_r - m) with an optional per-pair margin m (Llama 2, Touvron et
al. 2023, sec. 3.2.2: larger for clearer preferences).

Ensembles (Lakshminarayanan et al. 2017; for reward models Coste et al. 2024, "Reward
model ensembles help mitigate overoptimization"): K scalar heads score every input; the
reward given to RL is the members' mean minus lambda times their standard deviation
("uncertainty-weighted optimisation"), so inputs the members disagree on, typically
those far from the preference data, earn less.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of -log sigmoid(r_c - r_r - margin) over pairs and heads.

    Args:
        chosen: [B, K] rewards of the chosen responses (K heads; K = 1 for one model).
        rejected: [B, K] rewards of the rejected responses.
        margin: [B] optional margins (0 where absent).
        weights: [B, K] optional per-pair, per-head weights (bootstrap resampling of an
            ensemble: each head sees its own resample of the pairs).
    Returns:
        scalar loss; with weights, sum(w * loss) / sum(w) (0 when every weight is 0).
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin.to(diff.dtype).unsqueeze(-1)
    loss = -F.logsigmoid(diff)
    if weights is None:
        return loss.mean()
    weights = weights.to(loss.dtype)
    return (loss * weights).sum() / weights.sum().clamp(min=1.0)


def center_penalty(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """mean((r_c + r_r)^2): keeps rewards centred on zero (Eisenstein et al. 2023, as in
    TRL's RewardTrainer `center_rewards_coefficient`); BT alone fixes only differences."""
    return ((chosen + rejected) ** 2).mean()


def ensemble_reward(values: torch.Tensor, uncertainty_penalty: float = 0.0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uncertainty-penalised reward of K ensemble members.

    Args:
        values: [B, K] member rewards.
        uncertainty_penalty: lambda >= 0.
    Returns:
        (reward [B] = mean - lambda * std, mean [B], std [B]); std is the population
        standard deviation over members (0 for K = 1), so two members at -1 and +1 have
        std 1.
    """
    mean = values.mean(-1)
    std = values.std(-1, correction=0) if values.shape[-1] > 1 else torch.zeros_like(mean)
    return mean - uncertainty_penalty * std, mean, std


def pair_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair correctness [B]: 1 when r_c > r_r, 0.5 on a tie, else 0 (inputs [B])."""
    return (chosen > rejected).float() + 0.5 * (chosen == rejected).float()


def bootstrap_weights(num_pairs: int, num_heads: int, seed: int) -> torch.Tensor:
    """[N, K] Poisson(1) counts: each head trains on its own bootstrap resample of the
    pairs ("online bootstrap", Oza & Russell 2001), the diversity a shared-backbone
    ensemble otherwise lacks. One head gets weight 1 everywhere."""
    if num_heads == 1:
        return torch.ones(num_pairs, 1)
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.ones(num_pairs, num_heads), generator=g)
