"""Reward-head pooling: "last" reads the EOS token's hidden state; "last+mean+sum" also
reads the mean and the sum (over SUM_SCALE) of the response tokens' states."""

import json

import pytest
import torch
from conftest import assert_reloads_and_mounts, preference_dataset, train_reward_model

from reward_models.learned import LearnedReward


def _features_by_hand(model, inputs, last_index, response_start) -> torch.Tensor:
    """[last, mean, sum / SUM_SCALE] of each row's response states, row by row."""
    from mmft.reward_modeling.model import SUM_SCALE

    with torch.no_grad():
        hidden = model.backbone(**inputs, output_hidden_states=True, use_cache=False).hidden_states[-1]
    rows = []
    for row, (start, last) in enumerate(zip(response_start.tolist(), last_index.tolist())):
        response = hidden[row, start:last + 1]  # the caption's tokens and its EOS
        rows.append(torch.cat([hidden[row, last], response.mean(0), response.sum(0) / SUM_SCALE]))
    return torch.stack(rows)


def test_last_mean_sum_pooling_scores_saves_reloads_and_mounts(tiny_vlm_dir, tmp_path):
    held_out = preference_dataset(4, offset=300)
    trainer = train_reward_model(tiny_vlm_dir("llava"), str(tmp_path / "rm"), preference_dataset(8), held_out,
                                 max_steps=2, pooling="last+mean+sum", num_heads=2)
    model = trainer.unwrapped.eval()
    hidden_size = trainer.info.hidden_size
    assert model.head.score.weight.shape == (2, 3 * hidden_size)

    trainer.encoder.share_prompts = False  # one sequence per caption, as the forward written out below
    batch = trainer.collate(held_out, list(range(4)))
    inputs, last, start = batch["inputs"], batch["last_index"], batch["response_start"]
    # Responses differ in length here, so the mean and the sum are taken over different spans.
    assert len(set((last - start).tolist())) > 1
    with torch.no_grad():
        got = model(inputs, last, start)
        expected = model.head.score(_features_by_hand(model, inputs, last, start).float())
    assert torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="response_start"):
        model(inputs, last)

    # Saved and reloaded (LearnedReward), and mounted on a policy's base: the same rewards.
    trainer.save_model()
    assert json.loads((tmp_path / "rm" / "reward_config.json").read_text())["pooling"] == "last+mean+sum"
    assert_reloads_and_mounts(trainer, held_out, tiny_vlm_dir("llava"), tmp_path)


def test_saved_folders_without_pooling_read_the_last_token_and_unknown_ones_are_named(tiny_vlm_dir, tmp_path):
    held_out = preference_dataset(3, offset=300)
    trainer = train_reward_model(tiny_vlm_dir("llava"), str(tmp_path / "rm"), preference_dataset(4))
    scores = trainer.predict(held_out)
    config = tmp_path / "rm" / "reward_config.json"
    data = json.loads(config.read_text())
    assert data.pop("pooling") == "last"
    config.write_text(json.dumps(data))
    rows = held_out[:]
    assert torch.allclose(LearnedReward(tmp_path / "rm").member_rewards(rows["prompt"], rows["chosen"],
                                                                        image=rows["image"]),
                          scores["chosen"], atol=1e-5)

    # A pooling this version does not know: an error naming the file, not a shape mismatch.
    from mmft.reward_modeling.model import RewardModelError

    config.write_text(json.dumps({**data, "pooling": "max"}))
    with pytest.raises(RewardModelError, match=r"reward_config.json: pooling must be one of .*'max'"):
        LearnedReward(tmp_path / "rm")


def test_unknown_pooling_is_refused(tmp_path):
    from mmft.reward_modeling import RewardModelConfig

    with pytest.raises(ValueError, match="pooling must be one of"):
        RewardModelConfig(output_dir=str(tmp_path), pooling="max")
