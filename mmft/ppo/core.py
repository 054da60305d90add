"""PPO math as pure tensor functions (ppo_spec.md, steps 6-8).

Shapes: B = rollout rows, T = response positions (padded). `mask` is a float or bool
tensor [B, T], 1 on valid response tokens (the stop token included) and 0 after.
Every reduction here is masked, so a padded position never changes a loss or metric.

This module imports only torch: no transformers, no accelerate. Cross-rank statistics
are injected through `all_reduce`, a callable that sums a tensor over ranks (identity
in a single process), so the algorithm never reads rank or world size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

AllReduce = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`x` with padded positions set to 0 (safe against inf/NaN there, unlike x * mask)."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is 1 (0 when nothing is valid)."""
    # torch.where, not x * mask: an inf or NaN on a padded position must not leak (inf * 0 = NaN).
    x = zero_padding(x, mask)
    mask = mask.bool().to(x.dtype)
    if dim is None:
        return x.sum() / mask.sum().clamp(min=1.0)
    return x.sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, all_reduce: AllReduce = _identity,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Whiten `x` [B, T] over valid positions of the whole batch (across ranks through
    `all_reduce`), then zero the padding. Uses the unbiased variance, as TRL did."""
    x = zero_padding(x, mask)
    mask = mask.bool().to(x.dtype)
    stats = all_reduce(torch.stack([x.sum(), mask.sum()]))
    mean = stats[0] / stats[1].clamp(min=1.0)
    sq = all_reduce(zero_padding((x - mean) ** 2, mask).sum().reshape(1))[0]
    n = stats[1]
    var = sq / (n - 1).clamp(min=1.0)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return zero_padding(out, mask)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(pi || ref) estimate [B, T] from sampled-token log-probs.

    k1 = logp - ref_logp (unbiased, can be negative); k3 = (r - 1) - log r with
    r = p_ref / p (Schulman's low-variance, non-negative estimator).
    """
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        log_ratio = ref_logp - logp
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"Unknown KL estimator {estimator!r}; use 'k1' or 'k3'.")


def last_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """Index [B] of the last valid position of each row (0 for an empty row)."""
    lengths = mask.long().sum(-1)
    return (lengths - 1).clamp(min=0)


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """r_t = -beta * KL_t on valid tokens, plus the sequence score on the last valid one.

    scores [B], kl [B, T], mask [B, T] -> rewards [B, T] (zero on padding).
    """
    mask = mask.to(kl.dtype)
    rewards = zero_padding(-beta * kl, mask)
    idx = last_valid_index(mask)
    has_tokens = (mask.sum(-1) > 0).to(kl.dtype)
    rewards[torch.arange(len(scores)), idx] += scores.to(kl.dtype) * has_tokens
    return rewards


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    bootstrap: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over valid tokens (Schulman et al. 2016).

    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}, with V past
    the last valid token equal to 0, or to `bootstrap` [B] for rows cut by the length
    limit (their episode did not end). Returns (advantages, returns) [B, T], where
    returns = A + V (before any whitening), both zero on padding.
    """
    mask = mask.to(values.dtype)
    B, T = rewards.shape
    values = zero_padding(values, mask)
    rewards = zero_padding(rewards, mask)
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    if bootstrap is not None:
        next_value = bootstrap.to(values.dtype)
    last_gae = torch.zeros_like(next_value)
    adv = torch.zeros_like(rewards)
    for t in reversed(range(T)):
        m = mask[:, t]
        # Past a row's last valid token the running quantities keep their end-of-episode
        # values (0 or the bootstrap), so padding never leaks into valid positions.
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * last_gae
        adv[:, t] = a * m
        last_gae = torch.where(m > 0, a, last_gae)
        next_value = torch.where(m > 0, values[:, t], next_value)
    returns = zero_padding(adv + values, mask)
    return adv, returns


def token_mean(x: torch.Tensor, mask: torch.Tensor, num_tokens: float | torch.Tensor | None) -> torch.Tensor:
    """Masked mean, or the masked sum over `num_tokens` when a micro-batch is one part of
    a larger mini-batch: summing the parts then gives the mini-batch's exact token mean
    (a mean of micro-batch means would weight short responses more)."""
    if num_tokens is None:
        return masked_mean(x, mask)
    return zero_padding(x, mask).sum() / num_tokens


def policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float,
    num_tokens: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: masked mean of max(-A rho, -A clip(rho, 1-eps, 1+eps)).

    Returns (loss, stats) with stats clipfrac and approxkl = 0.5 mean (logp - old_logp)^2.
    `num_tokens`: see `token_mean`.
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    per_token = torch.maximum(unclipped, clipped)
    loss = token_mean(per_token, mask, num_tokens)
    with torch.no_grad():
        stats = {
            "loss": masked_mean(per_token, mask),
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float,
    num_tokens: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """0.5 * masked mean of max((V - R)^2, (clip(V, V_old +- eps_v) - R)^2)."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    per_token = torch.maximum(unclipped, clipped)
    loss = 0.5 * token_mean(per_token, mask, num_tokens)
    with torch.no_grad():
        stats = {"loss": 0.5 * masked_mean(per_token, mask),
                 "clipfrac": masked_mean((clipped > unclipped).float(), mask)}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[R - V] / Var[R] over valid tokens (1 is a perfect critic, 0 no better than
    the mean return). NaN when the returns do not vary (Var[R] under 1e-12, e.g. every
    sample scored the same): the ratio is undefined there, and clamping the variance would
    log 1 or a huge negative number instead."""
    var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, mask)) ** 2, mask)
    ev = 1.0 - var_d / var_r.clamp(min=1e-12)
    return torch.where(var_r < 1e-12, torch.full_like(ev, float("nan")), ev)


class FixedKLController:
    """A constant KL coefficient beta."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveKLController:
    """Adaptive beta of Ziegler et al. 2019 (arXiv 1909.08593, section 2.2).

    e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n_steps / horizon).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]
