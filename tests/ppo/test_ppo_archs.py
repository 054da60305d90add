"""PPO and SCST on tiny VLMs of every zoo architecture (ppo_spec.md invariants)."""


import pytest
import torch
from datasets import Dataset, Image

from mmft import PPOConfig, PPOTrainer
from mmft.data.synthetic import load_synthetic_captions
from mmft.models.roles import POLICY, REF
from mmft.rollout import training_inputs
from mmft.testing import ARCHS


class WordCount:
    """A picklable reward with TRL's contract: number of words in the completion."""

    __name__ = "word_count"

    def __call__(self, completions, **kwargs):
        return [float(len(c[0]["content"].split())) for c in completions]


def mixed_dataset(n: int = 6) -> Dataset:
    """Rows with one image, two images and none, in one dataset (one batch mixes them)."""
    base = load_synthetic_captions("train", n)
    rows = {"prompt": [], "images": [], "references": []}
    for i in range(n):
        row = base[i]
        kind = i % 3
        images = [row["image"]] * (1 if kind == 0 else 2 if kind == 1 else 0)
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": "Describe the image."}]
        rows["prompt"].append([{"role": "user", "content": content}])
        rows["images"].append(images)
        rows["references"].append(row["references"])
    return Dataset.from_dict(rows).cast_column("images", [Image()]) if False else Dataset.from_list(
        [{"prompt": p, "images": im, "references": r} for p, im, r in zip(rows["prompt"], rows["images"],
                                                                          rows["references"])])


def ppo_args(tmp_path, **kw):
    defaults = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                    num_mini_batches=1, num_ppo_epochs=1, max_steps=1, max_new_tokens=5, eval_steps=0,
                    save_steps=0, logging_steps=1, seed=3)
    defaults.update(kw)
    return PPOConfig(**defaults)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_ratio_is_one_before_first_update_and_kl_zero(arch, tiny_vlm_dir, tmp_path):
    """Same weights: new log-probs in a reshuffled micro-batch equal the old ones (< 1e-5),
    so clipfrac is 0 and approxkl ~ 0, and the reference equals the policy (KL = 0).
    Batches mix one-image, two-image and text-only prompts."""
    trainer = PPOTrainer(tiny_vlm_dir(arch), args=ppo_args(tmp_path), reward_funcs=[WordCount()],
                         train_dataset=_dataset_for(arch))
    idx = list(range(4))
    prompts, rows = trainer.collate(trainer.fetch_rows(trainer.train_dataset, idx), idx)
    rollout = trainer.rollout(prompts)
    old = trainer.forward_no_grad(rollout, (POLICY, REF))
    assert torch.equal(old["logprobs"], old["ref_logprobs"])  # KL exactly 0 at step 0
    rows_ = [3, 0, 2]  # a different grouping and order than the rollout's micro-batches
    inputs = training_inputs(rollout.prompts.select(rows_), rollout.response_ids[rows_],
                             rollout.response_mask[rows_], trainer.model_type)
    out = trainer.model(inputs, rollout.prompts.prompt_length, rollout.response_ids.shape[1], 1.0, (POLICY,))
    from trl.trainer.utils import selective_log_softmax

    new = selective_log_softmax(out["logits"], rollout.response_ids[rows_]).detach()
    mask = rollout.response_mask[rows_].bool()
    assert (new - old["logprobs"][rows_])[mask].abs().max() < 1e-5
    history = trainer.train()
    assert history[0]["objective/kl"] == 0.0
    assert history[0]["policy/clipfrac"] == 0.0
    assert history[0]["policy/approxkl"] < 1e-10


def _dataset_for(arch: str) -> Dataset:
    # PaliGemma's processor puts every image in front of the prompt and has no text-only
    # path; it gets one-image rows. Every other architecture gets the mixed batch.
    if arch == "paligemma":
        ds = load_synthetic_captions("train", 6)
        return ds.select_columns(["image", "prompt", "references"])
    return mixed_dataset()
