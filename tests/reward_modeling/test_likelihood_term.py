"""The likelihood term: reward = head(last hidden) + w * mean log p(response | image, prompt)."""

import json

import pytest
import torch
from conftest import assert_reloads_and_mounts, preference_dataset, train_reward_model


def _mean_logp_by_full_forward(model, inputs, last_index, response_start) -> torch.Tensor:
    """Mean log-probability of each row's response tokens from the VLM's own logits."""
    with torch.no_grad():
        logits = model.backbone(**inputs, use_cache=False).logits.float()
    logps = logits[:, :-1].log_softmax(-1).gather(-1, inputs["input_ids"][:, 1:, None])[..., 0]
    out = []
    for row, (start, last) in enumerate(zip(response_start.tolist(), last_index.tolist())):
        out.append(logps[row, start - 1:last].mean())  # tokens start..last, each predicted from the one before
    return torch.stack(out)


def test_likelihood_term_scores_saves_reloads_and_mounts(tiny_vlm_dir, tmp_path):
    from safetensors.torch import load_file

    held_out = preference_dataset(4, offset=300)
    trainer = train_reward_model(tiny_vlm_dir("llava"), str(tmp_path / "rm"), preference_dataset(8), held_out,
                                 max_steps=2, likelihood_term=True, likelihood_init=0.7, num_heads=2)
    model = trainer.unwrapped.eval()
    scale = model.head.likelihood_scale.detach()
    assert scale.shape == (2,) and not torch.allclose(scale, torch.full((2,), 0.7))  # trained

    # The reward is exactly the linear heads plus the weight times the mean log-likelihood.
    trainer.encoder.share_prompts = False  # one sequence per caption, as the forward written out below
    batch = trainer.collate(held_out, list(range(4)))
    inputs, last, start = batch["inputs"], batch["last_index"], batch["response_start"]
    with torch.no_grad():
        got = model(inputs, last, start)
        hidden = model.head.score(
            torch.stack([h[i] for h, i in zip(model.backbone(**inputs, output_hidden_states=True,
                                                             use_cache=False).hidden_states[-1], last)]))
    ll = _mean_logp_by_full_forward(model, inputs, last, start)
    assert (ll < 0).all()
    assert torch.allclose(got, hidden + scale * ll[:, None], atol=1e-5)

    # Saved and reloaded (LearnedReward), and mounted on a policy's base: the same rewards.
    trainer.save_model()
    assert json.loads((tmp_path / "rm" / "reward_config.json").read_text())["likelihood"] is True
    assert "likelihood_scale" in load_file(str(tmp_path / "rm" / "reward_head.safetensors"))
    assert_reloads_and_mounts(trainer, held_out, tiny_vlm_dir("llava"), tmp_path)


def test_likelihood_term_needs_the_response_start(tiny_vlm_dir, tmp_path):
    trainer = train_reward_model(tiny_vlm_dir("llava"), str(tmp_path), preference_dataset(4), max_steps=1,
                                 likelihood_term=True)
    batch = trainer.collate(preference_dataset(2, offset=300), [0, 1])
    with pytest.raises(ValueError, match="response_start"):
        trainer.unwrapped(batch["inputs"], batch["last_index"])
