"""Reward-model training on tiny VLMs: it learns, trains only LoRA and heads, sees the
image, saves a folder that `LearnedReward` reproduces exactly on every architecture."""

import json

import pytest
import torch
from conftest import preference_dataset, train_reward_model

from mmft.data.errors import DataError
from mmft.testing import ARCHS


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_learns_held_out_preferences_and_trains_only_lora_and_heads(tiny_vlm_dir, tmp_path):
    from mmft.reward_modeling import RewardModelConfig, RewardModelTrainer

    args = RewardModelConfig(output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=8,
                             learning_rate=3e-3, logging_steps=4, num_heads=2, seed=0)
    trainer = RewardModelTrainer(tiny_vlm_dir("llava"), args=args, train_dataset=preference_dataset(48, margin=True),
                                 eval_dataset=preference_dataset(16, offset=200))
    before = trainer.evaluate()
    start = _params(trainer.unwrapped)
    history = trainer.train()
    after = trainer.evaluate()
    assert before["eval/accuracy"] < 0.9
    assert after["eval/accuracy"] >= 0.9 and after["eval/margin"] > before["eval/margin"]
    assert {"eval/std", "eval/accuracy_head0", "eval/accuracy_head1"} <= set(after)
    # The preference ("noise" appended) is visible in the text alone: shuffling the images keeps it.
    assert after["eval/accuracy_shuffled_images"] >= 0.9
    assert history[-1]["eval/accuracy"] == after["eval/accuracy"]  # final eval logged
    end = _params(trainer.unwrapped)
    changed = {n for n in start if not torch.equal(start[n], end[n])}
    assert "head.score.weight" in changed
    assert any("lora_" in n for n in changed)
    assert all("lora_" in n or n.startswith("head.") for n in changed), sorted(changed)[:5]
    assert not any("vision_tower" in n and "lora_" in n for n in start)  # LoRA on the language side only
    trainer.save_model()
    info = json.loads((tmp_path / "reward_config.json").read_text())
    assert info["num_heads"] == 2 and info["metrics"]["eval/accuracy"] == after["eval/accuracy"]
    assert (tmp_path / "adapter_model.safetensors").exists() and (tmp_path / "reward_head.safetensors").exists()
    assert (tmp_path / "log_history.jsonl").read_text().count("\n") >= 3


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_architecture_trains_saves_and_reloads(arch, tiny_vlm_dir, tmp_path):
    """One step on each architecture of the zoo; `LearnedReward` on the saved folder gives
    the trainer's own rewards (same encoding, same weights) to 1e-5."""
    from reward_models.learned import LearnedReward

    held_out = preference_dataset(3, offset=300)
    trainer = train_reward_model(tiny_vlm_dir(arch), str(tmp_path), preference_dataset(4), held_out)
    expected = trainer.predict(held_out)
    reward = LearnedReward(tmp_path, batch_size=2)
    rows = held_out[:]
    got = reward.member_rewards(rows["prompt"], rows["rejected"], image=rows["image"])
    assert torch.allclose(got, expected["rejected"], atol=1e-5), (got, expected["rejected"])
    assert reward(prompts=rows["prompt"], completions=rows["chosen"], image=rows["image"]) == pytest.approx(
        expected["chosen"][:, 0].tolist(), abs=1e-5)


def test_reward_depends_on_the_image(trained_rm):
    """Same prompt and caption, different images: different rewards (the image reaches the score)."""
    from reward_models.learned import LearnedReward

    ds = preference_dataset(2, offset=400)
    reward = LearnedReward(trained_rm())
    caption = [{"role": "assistant", "content": ds[0]["chosen"][0]["content"]}]
    scores = reward(prompts=[ds[0]["prompt"]] * 2, completions=[caption, caption], image=[ds[0]["image"], ds[1]["image"]])
    assert abs(scores[0] - scores[1]) > 1e-4


def test_shuffled_image_accuracy_scores_each_pair_with_another_pairs_image(tiny_vlm_dir, tmp_path):
    from datasets import Dataset
    from PIL import Image

    from mmft.reward_modeling import core
    from mmft.reward_modeling.trainer import shuffled_images

    held_out = preference_dataset(6, offset=300)
    trainer = train_reward_model(tiny_vlm_dir("llava"), str(tmp_path), preference_dataset(4), held_out)
    image_from = shuffled_images(held_out, seed=0)
    assert sorted(image_from) == list(range(6)) and all(i != j for i, j in enumerate(image_from))
    # The same pairs with the images actually moved, scored by the plain path.
    moved = held_out.map(lambda row, i: {"image": held_out[image_from[i]]["image"]}, with_indices=True)
    pred = trainer.predict(moved)
    expected = core.pair_accuracy(pred["chosen"].mean(-1), pred["rejected"].mean(-1)).mean().item()
    metrics = trainer.evaluate(held_out)
    assert metrics["eval/accuracy_shuffled_images"] == expected
    assert trainer.predict(moved)["chosen"].ne(trainer.predict(held_out)["chosen"]).any()

    # `images` lists: rows swap only with rows holding as many images; a lone row keeps its own.
    img = Image.new("RGB", (8, 8))
    multi = Dataset.from_dict({"images": [[img], [img, img], [img], [img, img], [img, img, img]]})
    image_from = shuffled_images(multi, seed=1)
    assert {image_from[0], image_from[2]} == {2, 0} and {image_from[1], image_from[3]} == {3, 1}
    assert image_from[4] == 4
    assert shuffled_images(Dataset.from_dict({"images": [[img], [img, img]]}), seed=0) is None


def test_bad_datasets_are_named(tiny_vlm_dir, tmp_path):
    from mmft.reward_modeling import RewardModelConfig, RewardModelTrainer

    args = RewardModelConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2)
    with pytest.raises(DataError, match="needs columns 'prompt', 'chosen', 'rejected' and 'image'"):
        RewardModelTrainer(tiny_vlm_dir("llava"), args=args,
                           train_dataset=preference_dataset(2).remove_columns("rejected"))
    with pytest.raises(DataError, match="holds no pairs"):
        RewardModelTrainer(tiny_vlm_dir("llava"), args=args, train_dataset=preference_dataset(2).select([]))
    # A row whose prompt asks for two images but carries one: the error names the sample.
    trainer = RewardModelTrainer(tiny_vlm_dir("llava"), args=args, train_dataset=preference_dataset(2))
    with pytest.raises(DataError, match="Sample 1"):
        trainer.collate(_with_two_images_in_row_1(), [0, 1])


def _with_two_images_in_row_1():
    ds = preference_dataset(2)
    rows = [dict(ds[0]), dict(ds[1])]
    rows[1]["prompt"] = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                      {"type": "text", "text": "Describe."}]}]
    return rows


def test_collating_workers_give_the_same_training(tiny_vlm_dir, tmp_path):
    """dataloader_num_workers moves the collation (image decoding, processor) into forked
    workers; the batches, hence the training and the held-out rewards, are unchanged."""
    runs = {}
    for workers in (0, 2):
        trainer = train_reward_model(tiny_vlm_dir("llava"), str(tmp_path / f"w{workers}"), preference_dataset(24),
                                     eval_dataset=preference_dataset(10, offset=200), max_steps=4,
                                     per_device_eval_batch_size=4, dataloader_num_workers=workers,
                                     eval_shuffled_images=False)
        assert trainer.train_loader.num_workers == workers
        runs[workers] = (trainer.log_history, trainer.predict(trainer.eval_dataset))
    (history0, pred0), (history2, pred2) = runs[0], runs[2]
    assert [h["train/loss"] for h in history0 if "train/loss" in h] == \
        [h["train/loss"] for h in history2 if "train/loss" in h]
    assert torch.equal(pred0["chosen"], pred2["chosen"]) and torch.equal(pred0["rejected"], pred2["rejected"])
    assert pred2["index"].tolist() == list(range(10))


def test_evaluation_keeps_its_own_schedule(tiny_vlm_dir, tmp_path):
    """eval_steps that is not a multiple of logging_steps still evaluates every eval_steps
    (it used to evaluate only on logging steps: never, for most such pairs)."""
    trainer = train_reward_model(tiny_vlm_dir("llava"), str(tmp_path), preference_dataset(20),
                                 eval_dataset=preference_dataset(4, offset=200), max_steps=5, logging_steps=3,
                                 eval_steps=2, eval_shuffled_images=False)
    history = trainer.log_history
    train_steps = [h["step"] for h in history if "train/loss" in h]
    eval_steps = [h["step"] for h in history if "eval/accuracy" in h]
    assert train_steps == [3, 5]  # every logging_steps, and the last step
    assert eval_steps == [2, 4, 5]  # every eval_steps, and the final evaluation


def _trainable(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("group_by_image,gas", [(False, 1), (True, 2)])
def test_resume_matches_uninterrupted_run(group_by_image, gas, tiny_vlm_dir, tmp_path):
    """Checkpoints every 2 steps (the 2 newest kept); a new trainer resumed from step 4, which
    lies inside an epoch (and, with accumulation, in the second), ends with the same losses,
    logs and weights as the run that never stopped; the last checkpoint loads as a reward."""
    from mmft.reward_modeling import RewardModelConfig, RewardModelTrainer
    from reward_models.learned import LearnedReward

    # 20 pairs of 5 scenes x 4 pairs each when grouped (one image per scene), 5 batches of 4 an epoch.
    train = preference_dataset(20)
    if group_by_image:
        train = train.cast_column("image", train.features["image"]).map(
            lambda row, i: {"image": train[i - i % 4]["image"]}, with_indices=True)
    held_out = preference_dataset(4, offset=200)

    def trainer(out, **kw):
        args = RewardModelConfig(output_dir=str(tmp_path / out), max_steps=6, per_device_train_batch_size=4,
                                 gradient_accumulation_steps=gas, learning_rate=3e-3, logging_steps=3, seed=0,
                                 save_steps=2, save_total_limit=2, group_by_image=group_by_image,
                                 eval_shuffled_images=False, **kw)
        return RewardModelTrainer(tiny_vlm_dir("llava"), args=args, train_dataset=train, eval_dataset=held_out)

    full = trainer("full")
    full.train()
    assert sorted(p.name for p in (tmp_path / "full").glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    state = json.loads((tmp_path / "full" / "checkpoint-4" / "trainer_state.json").read_text())
    assert (state["epoch"], state["batches_in_epoch"]) == ((0, 4) if gas == 1 else (1, 2))

    resumed = trainer("resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    assert resumed.step == 6
    assert resumed.log_history == full.log_history
    a, b = _trainable(full), _trainable(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    # Resuming changed something: the weights at step 4 differ from those at step 6.
    at4 = torch.load(tmp_path / "full" / "checkpoint-4" / "trainable_state.pt")
    assert any(not torch.equal(at4[n], a[n]) for n in a)

    expected = full.predict(held_out)
    rows = held_out[:]
    got = LearnedReward(tmp_path / "full" / "checkpoint-6", batch_size=2).member_rewards(
        rows["prompt"], rows["chosen"], image=rows["image"])
    assert torch.allclose(got, expected["chosen"], atol=1e-5)


def test_resume_finds_the_latest_checkpoint_and_refuses_other_batching(tiny_vlm_dir, tmp_path):
    from mmft.reward_modeling import RewardModelConfig, RewardModelTrainer

    def trainer(batch, max_steps):
        args = RewardModelConfig(output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=batch,
                                 learning_rate=3e-3, logging_steps=1, seed=0, save_steps=1)
        return RewardModelTrainer(tiny_vlm_dir("llava"), args=args, train_dataset=preference_dataset(12))

    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        trainer(4, 2).train(resume_from_checkpoint=True)
    trainer(4, 2).train()
    (tmp_path / "checkpoint-9.tmp").mkdir()  # an interrupted save is not a checkpoint
    (tmp_path / "checkpoint-7").mkdir()  # nor is a folder without trainer_state.json
    again = trainer(4, 3)
    again.train(resume_from_checkpoint=True)  # from checkpoint-2: one more step
    assert [h["step"] for h in again.log_history if "train/loss" in h] == [1, 2, 3]
    with pytest.raises(FileNotFoundError, match="not a complete mmft checkpoint"):
        trainer(4, 3).train(resume_from_checkpoint=str(tmp_path / "checkpoint-7"))
    with pytest.raises(ValueError, match="per_device_train_batch_size 4 then, 3 now"):
        trainer(3, 3).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
