"""PPO math on hand-computed tensors (ppo_spec.md, "Tests that pin correctness")."""

import math

import pytest
import torch

from mmft.ppo import core


def test_gae_hand_computed_two_rows_with_padding():
    # Row 0: 3 valid tokens; row 1: 2 valid tokens then padding (whose junk must not leak).
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 99.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 77.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    adv, ret = core.gae(rewards * mask, values, mask, gamma, lam)
    # Row 0 by hand: deltas d2 = 1 - 0.3 = 0.7; d1 = 0 + .9*.3 - .2 = 0.07; d0 = 0 + .9*.2 - .1 = 0.08
    a2 = 0.7
    a1 = 0.07 + gamma * lam * a2
    a0 = 0.08 + gamma * lam * a1
    # Row 1: d1 = 2 - 0.5 = 1.5 (V past the end is 0); d0 = 0.5 + .9*.5 - .4 = 0.55
    b1 = 1.5
    b0 = 0.55 + gamma * lam * b1
    expected = torch.tensor([[a0, a1, a2], [b0, b1, 0.0]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, (expected + values * mask) * mask)


def test_gae_bootstrap_for_truncated_rows():
    rewards = torch.tensor([[0.0, 1.0]])
    values = torch.tensor([[0.5, 0.25]])
    mask = torch.ones(1, 2)
    adv, _ = core.gae(rewards, values, mask, 1.0, 1.0, bootstrap=torch.tensor([2.0]))
    # d1 = 1 + 2 - 0.25 = 2.75; d0 = 0 + 0.25 - 0.5 = -0.25; A0 = -0.25 + 2.75
    torch.testing.assert_close(adv, torch.tensor([[2.5, 2.75]]))


def test_whiten_uses_valid_tokens_only_and_zeroes_padding():
    x = torch.tensor([[1.0, 2.0, 1000.0], [3.0, 4.0, -1000.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    out = core.masked_whiten(x, mask)
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = (vals - vals.mean()) / vals.var(unbiased=True).sqrt()
    torch.testing.assert_close(out[:, :2].reshape(-1), expected, rtol=1e-5, atol=1e-5)
    assert out[:, 2].abs().sum() == 0


def test_whiten_across_ranks_through_all_reduce():
    # Two "ranks" simulated: all_reduce sums the other rank's statistics in.
    a = torch.tensor([[1.0, 2.0]])
    b = torch.tensor([[3.0, 4.0]])
    mask = torch.ones(1, 2)
    stats_b_sum = torch.stack([(b * mask).sum(), mask.sum()])

    def fake_reduce(t):
        if t.numel() == 2:
            return t + stats_b_sum
        mean = 2.5
        return t + ((b - mean) ** 2).sum().reshape(1)

    out = core.masked_whiten(a, mask, all_reduce=fake_reduce)
    full = core.masked_whiten(torch.cat([a, b]), torch.ones(2, 2))
    torch.testing.assert_close(out, full[:1])


def test_kl_estimators():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    torch.testing.assert_close(core.kl_estimate(logp, ref, "k1"), torch.tensor([[0.5, -1.0]]))
    k3 = core.kl_estimate(logp, ref, "k3")
    expected = [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]
    torch.testing.assert_close(k3, torch.tensor([expected]))
    assert (k3 >= 0).all()
    assert core.kl_estimate(logp, logp, "k3").abs().max() == 0
    with pytest.raises(ValueError, match="k1"):
        core.kl_estimate(logp, ref, "k2")


def test_per_token_rewards_put_score_on_last_valid_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    r = core.per_token_rewards(torch.tensor([1.0, 2.0]), kl, mask, beta=0.5)
    expected = torch.tensor([[-0.05, -0.1, -0.15 + 1.0], [-0.2, -0.25 + 2.0, 0.0]])
    torch.testing.assert_close(r, expected)


def test_policy_loss_hand_computed():
    logp = torch.log(torch.tensor([[0.5, 0.3]]))
    old = torch.log(torch.tensor([[0.25, 0.3]]))  # ratios 2.0 and 1.0
    adv = torch.tensor([[1.0, -2.0]])
    mask = torch.ones(1, 2)
    loss, stats = core.policy_loss(logp, old, adv, mask, cliprange=0.2)
    # token 0: max(-1*2, -1*1.2) = -1.2 (clipped); token 1: max(2*1, 2*1) = 2
    torch.testing.assert_close(loss, torch.tensor(0.4))
    torch.testing.assert_close(stats["clipfrac"], torch.tensor(0.5))
    torch.testing.assert_close(stats["approxkl"], torch.tensor(0.5 * (math.log(2.0) ** 2) / 2))


def test_value_loss_hand_computed():
    v = torch.tensor([[1.0, 0.0]])
    v_old = torch.tensor([[0.5, 0.0]])
    ret = torch.tensor([[2.0, 1.0]])
    mask = torch.ones(1, 2)
    loss, stats = core.value_loss(v, v_old, ret, mask, cliprange_value=0.2)
    # token 0: unclipped (1-2)^2 = 1; clipped V = 0.7 -> (0.7-2)^2 = 1.69 -> 1.69; token 1: 1 and 1
    torch.testing.assert_close(loss, torch.tensor(0.5 * (1.69 + 1.0) / 2))
    torch.testing.assert_close(stats["clipfrac"], torch.tensor(0.5))


def test_masked_positions_never_change_losses_or_metrics():
    torch.manual_seed(0)
    logp, old, adv, v, v_old, ret = (torch.randn(3, 5) for _ in range(6))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float)
    junk = torch.randn(3, 5) * 100 * (1 - mask)
    a = core.policy_loss(logp, old, adv, mask, 0.2)
    b = core.policy_loss(logp + junk, old - junk, adv + junk, mask, 0.2)
    torch.testing.assert_close(a[0], b[0])
    for k in a[1]:
        torch.testing.assert_close(a[1][k], b[1][k])
    c = core.value_loss(v, v_old, ret, mask, 0.2)
    d = core.value_loss(v + junk, v_old - junk, ret + junk, mask, 0.2)
    torch.testing.assert_close(c[0], d[0])
    torch.testing.assert_close(core.explained_variance(v, ret, mask), core.explained_variance(v + junk, ret, mask))
    rewards = core.per_token_rewards(torch.ones(3), logp, mask, 0.1)
    adv1, _ = core.gae(rewards, v, mask, 1.0, 0.95)
    adv2, _ = core.gae(rewards + junk, v + junk, mask, 1.0, 0.95)
    torch.testing.assert_close(adv1, adv2)


def test_explained_variance_hand_computed_and_undefined_for_constant_returns():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.float)
    ret = torch.tensor([[1.0, 2.0, 9.0], [3.0, 4.0, 5.0]])  # valid: 1 2 3 4 5, variance 2
    val = torch.tensor([[1.0, 1.0, -9.0], [3.0, 3.0, 6.0]])  # R - V valid: 0 1 0 1 -1, variance 0.56
    assert core.explained_variance(val, ret, mask).item() == pytest.approx(1 - 0.56 / 2)
    assert core.explained_variance(ret, ret, mask).item() == pytest.approx(1.0)
    # Every valid return equal (e.g. one score for all samples): undefined, not 1 or -1e8.
    flat = torch.tensor([[0.5, 0.5, 7.0], [0.5, 0.5, 0.5]])
    assert math.isnan(core.explained_variance(val, flat, mask).item())
    assert math.isnan(core.explained_variance(flat, flat, mask).item())


def test_adaptive_kl_controller_follows_ziegler():
    ctl = core.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=12.0, n_steps=100)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))
    ctl2 = core.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl2.update(current_kl=5.4, n_steps=100)  # error -0.1
    assert ctl2.value == pytest.approx(0.1 * (1 - 0.1 * 100 / 10000))
    state = ctl.state_dict()
    ctl3 = core.AdaptiveKLController(1.0, 6.0, 10000)
    ctl3.load_state_dict(state)
    assert ctl3.value == ctl.value
