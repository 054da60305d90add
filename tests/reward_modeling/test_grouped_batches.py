"""Pairs that share an image and prompt: the collator scores each distinct caption once
(the same rewards, loss and gradients as scoring it once per pair), `group_by_image`
batches such pairs together, and the held-out and shuffled-image paths agree with it."""

import pytest
import torch
from conftest import multi_caption_dataset, preference_dataset, train_reward_model

from mmft.data.errors import DataError
from mmft.reward_modeling import core
from mmft.reward_modeling.data import GroupedSampler, pair_keys
from mmft.testing.zoo import list_archs

ARCHS = list_archs()

def _trainer(model_dir: str, tmp_path, train, **kwargs):
    from mmft.reward_modeling import RewardModelConfig, RewardModelTrainer

    args = RewardModelConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, seed=0,
                             likelihood_term=True, pooling="last+mean+sum", **kwargs)
    return RewardModelTrainer(model_dir, args=args, train_dataset=train)


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_captions_are_scored_once_with_the_same_loss_and_gradients(arch, tiny_vlm_dir, tmp_path):
    """Per pair (24 sequences), each distinct caption once (12), and, where the model type
    allows it, each image's prompt once with its captions continuing from it (3 + 12):
    the same rewards, loss and gradients."""
    from mmft.reward_modeling.model import SHARED_PROMPT_MODEL_TYPES

    data = multi_caption_dataset(3)
    keys = pair_keys(data)
    assert len(set(keys)) == 3 and keys[0] == keys[3] != keys[4]  # one key per image (and prompt)
    trainer = _trainer(tiny_vlm_dir(arch), tmp_path, data)
    model = trainer.unwrapped
    for name, param in model.named_parameters():  # LoRA B starts at 0: make the adapter count
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05, generator=torch.Generator().manual_seed(0))
    shares = trainer.info.model_type in SHARED_PROMPT_MODEL_TYPES
    assert trainer.encoder.share_prompts == shares  # on by default where supported
    idx = list(range(12))
    variants = {"per_pair": (None, False), "captions": (keys, False)}
    if shares:
        variants["prompts"] = (keys, True)
    results = {}
    for name, (batch_keys, share) in variants.items():
        trainer.encoder.share_prompts = share
        batch = trainer.collate(data, idx, keys=batch_keys)
        model.zero_grad(set_to_none=True)
        rewards = model(batch["inputs"], batch["last_index"], batch["response_start"])
        chosen, rejected = rewards[batch["chosen_index"]], rewards[batch["rejected_index"]]
        core.bradley_terry_loss(chosen, rejected).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[name] = (batch["inputs"]["input_ids"].shape[0], chosen.detach(), rejected.detach(), grads)
    sizes = {name: r[0] for name, r in results.items()}
    assert sizes == {"per_pair": 24, "captions": 12, **({"prompts": 3} if shares else {})}  # 3 images x 4 captions
    _, c_pair, r_pair, g_pair = results["per_pair"]
    assert any("lora_" in n for n in g_pair)
    for name in variants:
        _, c, r, g = results[name]
        assert torch.allclose(c_pair, c, atol=1e-5) and torch.allclose(r_pair, r, atol=1e-5), name
        assert g_pair.keys() == g.keys(), name
        for n in g_pair:
            assert torch.allclose(g_pair[n], g[n], atol=1e-5, rtol=1e-4), (name, n)


def test_share_prompts_is_refused_for_models_that_need_one_sequence():
    from mmft.reward_modeling.model import RewardEncoder

    with pytest.raises(ValueError, match="qwen2_vl models score each response with its prompt"):
        RewardEncoder(None, "qwen2_vl", 0, share_prompts=True)


def test_grouped_sampler_keeps_groups_together_in_a_new_order_each_epoch():
    keys = [k for k in "aabbbcdddd"] + ["e"]
    sampler = GroupedSampler(keys, seed=3)
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(keys))) and len(sampler) == len(keys)
        runs = [keys[order[0]]]
        for i in order[1:]:
            if keys[i] != runs[-1]:
                runs.append(keys[i])
        assert sorted(runs) == sorted(set(keys))  # each group in one run
        orders.append(order)
    assert orders[0] != orders[1] and orders[0] == orders[2]
    assert list(GroupedSampler(keys, seed=3)) == orders[0]


def test_group_by_image_batches_whole_images_and_learns(tiny_vlm_dir, tmp_path):
    trainer = train_reward_model(tiny_vlm_dir("llava"), str(tmp_path), multi_caption_dataset(12),
                                 eval_dataset=preference_dataset(16, offset=200), max_steps=12,
                                 per_device_train_batch_size=8, group_by_image=True, eval_shuffled_images=False)
    assert trainer.info.metrics["eval/accuracy"] >= 0.9
    for batch in trainer.train_loader:
        # 8 pairs = two whole images (48 pairs, 4 per image): 8 captions to score, not 16,
        # after the 2 prompts (share_prompts, on by default for LLaVA).
        assert batch["inputs"]["response_ids"].shape[0] == 8 and batch["inputs"]["input_ids"].shape[0] == 2
        assert batch["inputs"]["prompt_index"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
        assert len(set(trainer.train_keys[i] for i in batch["index"].tolist())) == 2


def test_shuffled_images_with_shared_captions_match_the_moved_images(tiny_vlm_dir, tmp_path):
    from mmft.reward_modeling.trainer import shuffled_images

    held_out = multi_caption_dataset(3, offset=300)
    trainer = _trainer(tiny_vlm_dir("llava"), tmp_path, multi_caption_dataset(2), per_device_eval_batch_size=5)
    image_from = shuffled_images(held_out, seed=0)
    moved = held_out.map(lambda row, i: {"image": held_out[image_from[i]]["image"]}, with_indices=True)
    shuffled, plain = trainer.predict(held_out, image_from), trainer.predict(moved)
    assert torch.allclose(shuffled["chosen"], plain["chosen"], atol=1e-5)
    assert torch.allclose(shuffled["rejected"], plain["rejected"], atol=1e-5)
    assert not torch.allclose(shuffled["chosen"], trainer.predict(held_out)["chosen"], atol=1e-5)


def test_group_by_image_needs_identifiable_images(tiny_vlm_dir, tmp_path):
    from datasets import Dataset
    from PIL import Image

    row = preference_dataset(1)[0]
    data = Dataset.from_dict({"images": [[Image.new("RGB", (8, 8))], []], "prompt": [row["prompt"]] * 2,
                              "chosen": [row["chosen"]] * 2, "rejected": [row["rejected"]] * 2})
    assert pair_keys(data) is None
    with pytest.raises(DataError, match=r"group_by_image needs images .* row 1 has none \(1 of 2 rows\)"):
        _trainer(tiny_vlm_dir("llava"), tmp_path, data, group_by_image=True)


def test_ranks_get_different_whole_batches_of_the_grouped_order():
    """What accelerate does with the loader on 2 ranks (BatchSamplerShard): every rank
    draws the same seeded order and keeps every other batch, so the ranks' pairs are
    disjoint and together cover the epoch."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    keys = [i // 3 for i in range(24)]  # 8 images x 3 pairs
    shards = [list(BatchSamplerShard(BatchSampler(GroupedSampler(keys, seed=0), 6, False), num_processes=2,
                                     process_index=rank)) for rank in (0, 1)]
    rows = [[i for batch in shard for i in batch] for shard in shards]
    assert len(shards[0]) == len(shards[1]) == 2
    assert not set(rows[0]) & set(rows[1]) and sorted(rows[0] + rows[1]) == list(range(24))
    assert all(len({keys[i] for i in batch}) == 2 for shard in shards for batch in shard)  # whole images


def test_training_with_shared_prompts_matches_one_sequence_per_caption(tiny_vlm_dir, tmp_path):
    """share_prompts changes how a step is computed, not what it computes: the same losses
    and held-out rewards over several optimizer steps of whole-image batches."""
    runs = {}
    for share in (True, False):
        trainer = train_reward_model(tiny_vlm_dir("llava"), str(tmp_path / str(share)), multi_caption_dataset(6),
                                     eval_dataset=multi_caption_dataset(2, offset=100), max_steps=6,
                                     per_device_train_batch_size=8, group_by_image=True, share_prompts=share,
                                     eval_shuffled_images=False, logging_steps=1)
        assert trainer.encoder.share_prompts == share
        runs[share] = ([h["train/loss"] for h in trainer.log_history if "train/loss" in h],
                       trainer.predict(trainer.eval_dataset)["chosen"])
    (loss_shared, held_shared), (loss_plain, held_plain) = runs[True], runs[False]
    assert len(loss_shared) == 6 and max(abs(a - b) for a, b in zip(loss_shared, loss_plain)) < 1e-4
    assert torch.allclose(held_shared, held_plain, atol=1e-4)
