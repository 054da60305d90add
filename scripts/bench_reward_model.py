"""Reward-model training and scoring speed with and without shared prompts.

Every pair of k captions per scene (make_pairs --samples_per_image k --pairs_per_image
C(k, 2), as the preference demo labels them), batches of whole scenes (group_by_image),
on a model of the preference demo's reward-model size (tiny LLaVA, 192-wide, 4 layers,
64x64 images; random weights: speed does not depend on them). With `share_prompts` a
scene's prompt and image go through the backbone once and its captions continue from
them; without, each distinct caption is one sequence with its prompt. Both compute the
same rewards and gradients (tests/reward_modeling/test_grouped_batches.py).

    python scripts/bench_reward_model.py --json outputs/bench_reward_model.json
    python scripts/bench_reward_model.py --captions 4 --batch_size 64 --json OUT
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import save_result, table  # noqa: E402


def scene_pairs(num_scenes: int, captions: int, offset: int = 0):
    """Every pair of `captions` distinct captions per synthetic scene, in the export format:
    the scene's references, then shorter cuts of them for more than it has."""
    from datasets import Dataset

    from mmft.data.synthetic import CAPTION_PROMPT, load_synthetic_captions
    from mmft.label.export import _features

    rows = {k: [] for k in ("image", "prompt", "chosen", "rejected", "labeler", "time", "pair_id")}
    for scene in load_synthetic_captions("train", offset + num_scenes).select(range(offset, offset + num_scenes)):
        refs = scene["references"]
        texts = list(dict.fromkeys(refs + [" ".join(r.split()[: -2 - i]) for i, r in enumerate(refs)]))[:captions]
        if len(texts) < captions:
            raise SystemExit(f"scene {scene['scene_id']} gives {len(texts)} distinct captions; use --captions <= 8")
        for a, b in itertools.combinations(range(captions), 2):
            rows["image"].append(scene["image"])
            rows["prompt"].append([{"role": "user", "content": CAPTION_PROMPT}])
            rows["chosen"].append([{"role": "assistant", "content": texts[a]}])
            rows["rejected"].append([{"role": "assistant", "content": texts[b]}])
            rows["labeler"].append("bench")
            rows["time"].append("2026-11-28T00:00:00.000+00:00")
            rows["pair_id"].append(f"s{scene['scene_id']}-{a}-{b}")
    return Dataset.from_dict(rows, features=_features())


def measure(model_dir: Path, out: Path, train, held_out, share: bool, args) -> dict:
    from mmft.reward_modeling import RewardModelConfig, RewardModelTrainer
    from mmft.rl_trainer import default_lora_config

    config = RewardModelConfig(output_dir=str(out), max_steps=args.steps + args.warmup_steps, learning_rate=1e-3,
                               per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
                               logging_steps=1000, seed=0, max_completion_length=64, likelihood_term=True,
                               pooling="last+mean+sum", group_by_image=True, share_prompts=share,
                               eval_shuffled_images=False, report_to="none")
    trainer = RewardModelTrainer(str(model_dir), args=config, train_dataset=train,
                                 peft_config=default_lora_config("language", 32, 64))
    batch = next(iter(trainer.train_loader))
    responses = batch["inputs"].get("response_ids", batch["inputs"]["input_ids"])
    sequences = len(responses)
    tokens = int(batch["inputs"]["input_ids"].numel() + (responses.numel() if share else 0))
    # Warm-up steps (allocator, first-call costs), then the timed ones.
    trainer.total_steps = args.warmup_steps
    trainer.train()
    trainer.total_steps = args.warmup_steps + args.steps
    start = time.perf_counter()
    trainer.train()
    train_s = (time.perf_counter() - start) / args.steps
    start = time.perf_counter()
    trainer.predict(held_out)
    predict_s = time.perf_counter() - start
    return {"share_prompts": share, "s_per_step": train_s, "pairs_per_s": args.batch_size / train_s,
            "first_batch_captions": sequences, "first_batch_input_tokens": tokens,
            "predict_pairs_per_s": len(held_out) / predict_s, "encoder_shares": trainer.encoder.share_prompts}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--captions", type=int, default=8, help="captions per scene (every pair of them is a row)")
    p.add_argument("--batch_size", type=int, default=128, help="pairs a step (the demo's eight-caption setting)")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    p.add_argument("--warmup_steps", type=int, default=3)
    p.add_argument("--eval_scenes", type=int, default=40)
    args = p.parse_args(argv)
    from mmft.testing.zoo import make_tiny_vlm

    per_scene = args.captions * (args.captions - 1) // 2
    num_scenes = -(-(args.steps + args.warmup_steps + 1) * args.batch_size // per_scene)
    train, held_out = scene_pairs(num_scenes, args.captions), scene_pairs(args.eval_scenes, args.captions, 50_000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        make_tiny_vlm("llava", model_dir, text_hidden=192, text_layers=4)
        for share in (False, True):
            rows.append(measure(model_dir, Path(tmp) / f"rm-{share}", train, held_out, share, args))
    base = rows[0]
    print(table(["share_prompts", "s/step", "pairs/s", "x", "captions a step", "input tokens a step",
                 "scoring pairs/s", "x"],
                [[r["share_prompts"], r["s_per_step"], r["pairs_per_s"], r["pairs_per_s"] / base["pairs_per_s"],
                  r["first_batch_captions"], r["first_batch_input_tokens"], r["predict_pairs_per_s"],
                  r["predict_pairs_per_s"] / base["predict_pairs_per_s"]] for r in rows]))
    return save_result(args.json, {"captions": args.captions, "batch_size": args.batch_size, "steps": args.steps,
                                   "runs": rows, "torch_threads": torch.get_num_threads()},
                       "bench_reward_model.py", argv)


if __name__ == "__main__":
    main()
