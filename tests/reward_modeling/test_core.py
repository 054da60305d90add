"""Reward-model math on hand-computed tensors."""

import math

import pytest
import torch

from mmft.reward_modeling import core


def test_bradley_terry_loss_hand_computed():
    chosen = torch.tensor([[2.0], [0.0]])
    rejected = torch.tensor([[1.0], [1.0]])
    # -log sigmoid(1) = log(1 + e^-1); -log sigmoid(-1) = log(1 + e)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    assert core.bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, abs=1e-6)


def test_margin_shifts_the_difference():
    chosen, rejected = torch.tensor([[2.0]]), torch.tensor([[1.0]])
    # margin 1: -log sigmoid(2 - 1 - 1) = log 2
    assert core.bradley_terry_loss(chosen, rejected, torch.tensor([1.0])).item() == pytest.approx(math.log(2))


def test_bootstrap_weights_select_pairs_per_head():
    chosen = torch.tensor([[3.0, 3.0], [0.0, 0.0]])
    rejected = torch.zeros(2, 2)
    weights = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # head 0 sees pair 0 once, head 1 sees pair 1 twice
    expected = (math.log(1 + math.exp(-3)) + 2 * math.log(2)) / 3
    assert core.bradley_terry_loss(chosen, rejected, weights=weights).item() == pytest.approx(expected, abs=1e-6)
    w = core.bootstrap_weights(1000, 3, seed=0)
    assert w.shape == (1000, 3) and (w >= 0).all() and abs(w.mean().item() - 1.0) < 0.1
    assert not torch.equal(w[:, 0], w[:, 1])
    assert torch.equal(core.bootstrap_weights(5, 1, seed=0), torch.ones(5, 1))


def test_ensemble_reward_mean_minus_lambda_std():
    values = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [2.0, 4.0]])
    reward, mean, std = core.ensemble_reward(values, uncertainty_penalty=0.5)
    assert mean.tolist() == [1.0, 0.0, 3.0]
    assert std.tolist() == [0.0, 1.0, 1.0]  # population std
    assert reward.tolist() == [1.0, -0.5, 2.5]
    reward1, _, std1 = core.ensemble_reward(torch.tensor([[0.3]]), 2.0)
    assert std1.item() == 0.0 and reward1.item() == pytest.approx(0.3)


def test_pair_accuracy_counts_ties_half():
    acc = core.pair_accuracy(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0]))
    assert acc.tolist() == [1.0, 0.0, 0.5]


def test_center_penalty():
    assert core.center_penalty(torch.tensor([[1.0], [0.0]]), torch.tensor([[1.0], [-1.0]])).item() == 2.5
