"""Preference datasets in mmft.label's export format, built from the synthetic scenes."""

from __future__ import annotations

import pytest
import torch


def preference_dataset(n: int, offset: int = 0, margin: bool = False):
    """`n` pairs with exactly the columns and features of `mmft label export`: the chosen
    caption is a reference of the scene; the rejected one is the same reference with a
    trailing ", and some noise noise" that no reference has (a signal a few steps learn)."""
    from datasets import Dataset

    from mmft.data.synthetic import CAPTION_PROMPT, load_synthetic_captions
    from mmft.label.export import _features

    scenes = load_synthetic_captions("train", n + offset).select(range(offset, offset + n))
    rows = {k: [] for k in ("image", "prompt", "chosen", "rejected", "labeler", "time", "pair_id")}
    for i, row in enumerate(scenes):
        rows["image"].append(row["image"])
        rows["prompt"].append([{"role": "user", "content": CAPTION_PROMPT}])
        rows["chosen"].append([{"role": "assistant", "content": row["references"][0]}])
        rows["rejected"].append([{"role": "assistant", "content": row["references"][0] + " , and some noise noise"}])
        rows["labeler"].append("oracle")
        rows["time"].append("2026-11-26T12:00:00.000+00:00")
        rows["pair_id"].append(f"p{offset + i}")
    ds = Dataset.from_dict(rows, features=_features())
    if margin:
        ds = ds.add_column("margin", [0.5] * n)
    return ds


NOISE = " , and some noise noise"


def multi_caption_dataset(num_images: int, offset: int = 0):
    """Four pairs per image over four captions (two references, each also with the noise
    suffix), in the export format; the caption without the noise is always chosen."""
    from datasets import Dataset

    from mmft.data.synthetic import load_synthetic_captions

    base = preference_dataset(num_images, offset=offset)
    rows = {k: [] for k in base.column_names}
    scenes = load_synthetic_captions("train", num_images + offset)
    for i in range(num_images):
        row, refs = base[i], scenes[offset + i]["references"]
        for a, b in ((0, 0), (1, 1), (0, 1), (1, 0)):  # (clean reference a) over (reference b + noise)
            for k in base.column_names:
                rows[k].append(row[k])
            rows["chosen"][-1] = [{"role": "assistant", "content": refs[a]}]
            rows["rejected"][-1] = [{"role": "assistant", "content": refs[b] + NOISE}]
            rows["pair_id"][-1] = f"p{offset + i}-{a}{b}"
    return Dataset.from_dict(rows, features=base.features)


@pytest.fixture(scope="session")
def prefs():
    """Factory: prefs(n, offset=0, margin=False) -> preference Dataset."""
    return preference_dataset


@pytest.fixture(autouse=True)
def _few_threads():
    # Two cores shared with other jobs: one thread per test process keeps runs predictable.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def train_reward_model(model_dir: str, output_dir: str, train, eval_dataset=None, **kwargs):
    """Train and save a reward model; returns the trainer (kwargs override RewardModelConfig)."""
    from mmft.reward_modeling import RewardModelConfig, RewardModelTrainer

    settings = dict(output_dir=output_dir, max_steps=1, per_device_train_batch_size=4, learning_rate=3e-3,
                    logging_steps=1, seed=0)
    settings.update(kwargs)
    trainer = RewardModelTrainer(model_dir, args=RewardModelConfig(**settings), train_dataset=train,
                                 eval_dataset=eval_dataset)
    trainer.train()
    trainer.save_model()
    return trainer


def assert_reloads_and_mounts(trainer, held_out, model_dir: str, tmp_path) -> None:
    """The saved reward model (trainer.args.output_dir) gives the trainer's own rewards on
    `held_out` through LearnedReward and mounted on a PPO policy's base (`model_dir`)."""
    import torch

    from mmft import PPOConfig, PPOTrainer
    from mmft.data.synthetic import load_synthetic_captions
    from mmft.reward_modeling.mount import mount_reward_adapter
    from reward_models.learned import LearnedReward

    expected = trainer.predict(held_out)
    rows = held_out[:]
    reward = LearnedReward(trainer.args.output_dir, batch_size=3)
    assert torch.allclose(reward.member_rewards(rows["prompt"], rows["chosen"], image=rows["image"]),
                          expected["chosen"], atol=1e-5)
    ppo = PPOTrainer(model_dir, train_dataset=load_synthetic_captions("train", 4),
                     args=PPOConfig(output_dir=str(tmp_path / "ppo"), per_device_train_batch_size=2, max_steps=1,
                                    eval_steps=0, save_steps=0),
                     reward_funcs=[lambda completions, **kw: [0.0] * len(completions)])
    mounted = mount_reward_adapter(ppo.unwrapped, trainer.args.output_dir, batch_size=3)
    assert torch.allclose(mounted.member_rewards(rows["prompt"], rows["rejected"], image=rows["image"]),
                          expected["rejected"], atol=1e-5)


@pytest.fixture(scope="session")
def trained_rm(tiny_vlm_dir, tmp_path_factory):
    """Factory: trained_rm(num_heads=1) -> folder of a reward model on the tiny LLaVA that
    learned the conftest preference (12 steps; cached per session)."""
    built = {}

    def get(num_heads: int = 1) -> str:
        if num_heads not in built:
            out = tmp_path_factory.mktemp(f"rm-{num_heads}")
            train_reward_model(tiny_vlm_dir("llava"), str(out), preference_dataset(48), preference_dataset(16, 200),
                               max_steps=12, num_heads=num_heads, per_device_train_batch_size=8)
            built[num_heads] = str(out)
        return built[num_heads]

    return get
