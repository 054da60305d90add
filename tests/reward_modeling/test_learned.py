"""`reward_models.LearnedReward`: TRL's reward contract, pickling, image columns, the
uncertainty penalty, and use as the reward of mmft PPO and TRL's GRPOTrainer."""

import json
import pickle
import shutil

import pytest
import torch
from conftest import preference_dataset

from mmft.reward_modeling.model import RewardModelError
from reward_models.learned import LearnedReward


def _rows(n=4, offset=500):
    ds = preference_dataset(n, offset=offset)
    return ds[:]


def test_image_column_formats_and_batch_size_give_the_same_scores(trained_rm):
    rows = _rows()
    reward = LearnedReward(trained_rm(), batch_size=3)
    from_image = reward(prompts=rows["prompt"], completions=rows["chosen"], image=rows["image"])
    from_images = LearnedReward(trained_rm(), batch_size=1)(
        prompts=rows["prompt"], completions=rows["chosen"], images=[[im] for im in rows["image"]])
    # TRL's GRPOTrainer passes prompts with the image inside the message parts.
    embedded = [[{"role": "user", "content": [{"type": "image", "image": im},
                                              {"type": "text", "text": p[0]["content"]}]}]
                for p, im in zip(rows["prompt"], rows["image"])]
    from_parts = reward(prompts=embedded, completions=[c[0]["content"] for c in rows["chosen"]])
    assert from_images == pytest.approx(from_image, abs=1e-5)
    assert from_parts == pytest.approx(from_image, abs=1e-5)
    assert len(from_image) == 4 and all(isinstance(x, float) for x in from_image)
    # The trained preference holds on held-out scenes: the chosen caption scores higher.
    rejected = reward(prompts=rows["prompt"], completions=rows["rejected"], image=rows["image"])
    assert all(c > r for c, r in zip(from_image, rejected))


def test_pickles_without_the_model_and_reloads_lazily(trained_rm):
    rows = _rows(2)
    reward = LearnedReward(trained_rm(), name="rm")
    fresh = pickle.dumps(reward)
    scores = reward(prompts=rows["prompt"], completions=rows["chosen"], image=rows["image"])
    assert reward._model is not None
    loaded_blob = pickle.dumps(reward)
    assert len(loaded_blob) < 4096 and len(fresh) < 4096  # no weights travel
    clone = pickle.loads(loaded_blob)
    assert clone._model is None and clone.__name__ == "rm"
    assert clone(prompts=rows["prompt"], completions=rows["chosen"], image=rows["image"]) == pytest.approx(scores,
                                                                                                          abs=1e-6)


def test_errors_name_the_reward_and_the_sample(trained_rm, tmp_path):
    with pytest.raises(RewardModelError, match="reward_config.json is missing"):
        LearnedReward(tmp_path)
    rows = _rows(2)
    reward = LearnedReward(trained_rm(), name="rm")
    with pytest.raises(ValueError, match="reward 'rm': got 2 completions, 1 prompts"):
        reward(prompts=rows["prompt"][:1], completions=rows["chosen"], image=rows["image"])
    two_images = [[{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "x"}]}]]
    with pytest.raises(ValueError, match="reward 'rm': Sample 0"):
        reward(prompts=two_images, completions=["a red circle"], image=rows["image"][:1])


def _disagreeing_ensemble(rm_dir: str, out_dir) -> tuple[list, list]:
    """A 2-member reward model whose members agree exactly on input 0 and disagree on
    input 1: member 1 = member 0 + v with v orthogonal to input 0's hidden state and
    v . h1 = 2 (so the members differ by 2 on input 1: std 1)."""
    from safetensors.torch import load_file, save_file

    from mmft.models.arch import inner_model
    from mmft.reward_modeling.model import RewardEncoder, load_reward_model, pool_hidden

    model, processor, info = load_reward_model(rm_dir)
    rows = _rows(2, offset=600)
    encoder = RewardEncoder(processor, info.model_type, info.eos_token_id)
    texts = [c[0]["content"] for c in rows["chosen"]]
    inputs, last, _ = encoder(rows["prompt"], [[im] for im in rows["image"]], texts)
    with torch.no_grad():
        hidden = inner_model(model.backbone)(**inputs, use_cache=False).last_hidden_state
        h = pool_hidden(hidden, info.pooling, last, None).double()
    h0, h1 = h[0], h[1]
    v = h1 - (h1 @ h0) / (h0 @ h0) * h0
    v = v * (2.0 / (v @ h1))
    shutil.copytree(rm_dir, out_dir)
    head = load_file(f"{rm_dir}/reward_head.safetensors")
    w = head["score.weight"][0]
    save_file({"score.weight": torch.stack([w, (w.double() + v).float()]).contiguous(),
               "score.bias": head["score.bias"].repeat(2).contiguous()}, f"{out_dir}/reward_head.safetensors")
    cfg = json.loads(open(f"{out_dir}/reward_config.json").read())
    cfg["num_heads"] = 2
    open(f"{out_dir}/reward_config.json", "w").write(json.dumps(cfg))
    return rows, texts


def test_uncertainty_penalty_lowers_the_reward_where_members_disagree(trained_rm, tmp_path):
    rows, texts = _disagreeing_ensemble(trained_rm(), tmp_path / "ens")
    kwargs = dict(prompts=rows["prompt"], completions=texts, image=rows["image"])
    plain = LearnedReward(tmp_path / "ens", uncertainty_penalty=0.0)
    penalised = LearnedReward(tmp_path / "ens", uncertainty_penalty=0.5)
    r0, r1 = plain(**kwargs), penalised(**kwargs)
    assert penalised.last_std[0] == pytest.approx(0.0, abs=1e-4)  # members agree on input 0
    assert penalised.last_std[1] == pytest.approx(1.0, abs=1e-3)  # and differ by 2 on input 1
    assert r1[0] == pytest.approx(r0[0], abs=1e-4)  # no penalty where they agree
    assert r1[1] == pytest.approx(r0[1] - 0.5, abs=1e-3)  # mean - 0.5 * std where they disagree
    std = penalised.std_reward()
    assert std.__name__ == "learned_std" and std(**kwargs) == penalised.last_std
    clone_reward, clone_std = pickle.loads(pickle.dumps([penalised, std]))
    assert clone_std.parent is clone_reward  # one pickle keeps the pair linked
    with pytest.raises(RuntimeError, match="list it right after"):
        LearnedReward(tmp_path / "ens").std_reward()(completions=texts)


def test_one_ppo_iteration_with_the_learned_reward(trained_rm, tiny_vlm_dir, tmp_path):
    from mmft import PPOConfig, PPOTrainer
    from mmft.data.synthetic import load_synthetic_captions

    reward = LearnedReward(trained_rm(), name="learned")
    args = PPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                     num_ppo_epochs=1, max_steps=1, max_new_tokens=5, eval_steps=0, save_steps=0, logging_steps=1,
                     seed=0, reward_weights=[1.0, 0.0])
    trainer = PPOTrainer(tiny_vlm_dir("llava"), args=args, reward_funcs=[reward, reward.std_reward()],
                         train_dataset=load_synthetic_captions("train", 4))
    history = trainer.train()
    assert history[0]["rewards/learned"] == pytest.approx(history[0]["objective/scores"], abs=1e-5)
    assert history[0]["rewards/learned_std"] == 0.0  # one head: no disagreement
    assert reward._model is not None and len(reward.last_mean) == 4


def test_one_grpo_step_in_trl_with_the_learned_reward(trained_rm, tiny_vlm_dir, tmp_path):
    """TRL 1.16's GRPOTrainer runs VLMs: it inserts the `image` column into the prompt's
    user turn and passes prompts (image parts with the PIL image), completions and the
    `image` column to the reward. The logged reward equals a fresh LearnedReward's score
    on exactly what the reward was called with."""
    from trl import GRPOConfig, GRPOTrainer

    from mmft.data.synthetic import CAPTION_PROMPT, load_synthetic_captions

    ds = load_synthetic_captions("train", 4).select_columns(["image"])
    ds = ds.add_column("prompt", [[{"role": "user", "content": CAPTION_PROMPT}]] * 4)
    reward = LearnedReward(trained_rm())
    seen = []

    class Spy:
        __name__ = "spy"

        def __call__(self, prompts, completions, **kwargs):
            seen.append((prompts, completions, kwargs["image"]))
            return [0.0] * len(completions)

    args = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=6, logging_steps=1, report_to="none", use_cpu=True, save_strategy="no",
                      reward_weights=[1.0, 0.0, 0.0], seed=0)
    trainer = GRPOTrainer(model=tiny_vlm_dir("llava"), reward_funcs=[reward, reward.std_reward(), Spy()], args=args,
                          train_dataset=ds)
    trainer.train()
    logged = trainer.state.log_history[0]
    prompts, completions, images = seen[-1]
    assert any(p.get("type") == "image" for p in prompts[0][0]["content"])
    again = LearnedReward(trained_rm())(prompts=prompts, completions=completions, image=images)
    assert logged["rewards/learned/mean"] == pytest.approx(sum(again) / len(again), abs=1e-4)
    assert reward.last_mean == pytest.approx(again, abs=1e-5)
