"""Make PAIRS.jsonl for `mmft label serve`: sample captions from a model and pair them up.

For each image of a dataset, sample `--samples_per_image` (k >= 2) captions from the
model (a base VLM plus an optional LoRA adapter), drop duplicates, and write up to
`--pairs_per_image` pairs of distinct captions (caption order randomised, so "A" is not
always the first sample). Images are saved as PNG files in `images/` beside the jsonl,
which refers to them by relative path (the pairs file and its images move together).

    python scripts/make_pairs.py --output pairs/pairs.jsonl --num_images 200
    python scripts/make_pairs.py --model Qwen/Qwen2.5-VL-3B-Instruct --adapter outputs/sft \
        --dataset karpathy:data/coco/dataset_coco.json:data/coco --split val --num_images 500 \
        --samples_per_image 4 --pairs_per_image 2 --output coco_pairs/pairs.jsonl

Each line: pair_id, image, prompt, caption_a, caption_b, plus metadata: source index,
`scene_id`, `objects`, `num_objects` and `relation` when the dataset has them (the
embedded task, whose scripted oracle reads them), model, adapter and temperature.
Default model: the cached demo base model.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

META_COLUMNS = ("scene_id", "objects", "num_objects", "relation", "references")


def prompt_text(prompt) -> str:
    """The text a labeler reads: a string prompt, or the text parts of the user turn(s)."""
    if isinstance(prompt, str):
        return prompt
    texts = []
    for message in prompt:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        else:
            texts += [p.get("text") or "" for p in content if p.get("type") == "text"]
    return " ".join(t for t in texts if t)


def make_pairs(output: str | Path, *, model: str | None = None, adapter: str | None = None,
               dataset: str = "synthetic", split: str = "train", num_images: int = 100, offset: int = 0,
               samples_per_image: int = 2, pairs_per_image: int = 1, temperature: float = 1.0, top_p: float = 1.0,
               max_new_tokens: int = 32, batch_size: int = 32, seed: int = 0) -> dict:
    """Write the pairs file (and images/) and return a summary dict."""
    from mmft.data.collator import VLMCollator
    from mmft.data.loaders import load_data
    from mmft.demo import build_demo_base
    from mmft.models.loading import load_processor, load_vlm
    from mmft.rollout import decode_responses, generate, stop_token_ids

    if samples_per_image < 2:
        raise SystemExit("--samples_per_image must be >= 2 (a pair needs two captions).")
    output = Path(output)
    if output.exists():
        raise SystemExit(f"{output} exists; choose a new file (pair ids must stay unique per labelling database).")
    images_dir = output.parent / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    model_path = model or str(build_demo_base())
    processor = load_processor(model_path)
    vlm = load_vlm(model_path)
    if adapter:
        from peft import PeftModel

        vlm = PeftModel.from_pretrained(vlm, adapter)
    vlm.eval()
    tok = processor.tokenizer
    stop_ids = stop_token_ids(vlm.generation_config, tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else stop_ids[0]

    data = load_data(dataset, split, num_samples=offset + num_images)
    data = data.select(range(offset, min(offset + num_images, len(data))))
    collator = VLMCollator(processor)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    written = identical = 0
    with output.open("w", encoding="utf-8") as out:
        for start in range(0, len(data), batch_size):
            idx = list(range(start, min(start + batch_size, len(data))))
            rows = [data[i] for i in idx]
            # k samples of each prompt, in one generate call (rows repeated k times in a row).
            rollout = generate(vlm, collator(rows, idx).repeat(samples_per_image), max_new_tokens=max_new_tokens,
                               stop_ids=stop_ids, pad_id=pad_id, do_sample=True, temperature=temperature,
                               top_p=top_p)
            texts = decode_responses(tok, rollout.response_ids, rollout.response_mask)
            for j, (i, row) in enumerate(zip(idx, rows)):
                samples = list(dict.fromkeys(texts[j * samples_per_image:(j + 1) * samples_per_image]))
                candidates = [(a, b) for x, a in enumerate(samples) for b in samples[x + 1:]]
                if not candidates:
                    identical += 1
                    continue
                image_name = f"{split}-{offset + i:06d}.png"
                row["image"].convert("RGB").save(images_dir / image_name)
                for k, (a, b) in enumerate(rng.sample(candidates, min(pairs_per_image, len(candidates)))):
                    if rng.random() < 0.5:
                        a, b = b, a
                    record = {"pair_id": f"{split}-{offset + i:06d}-{k}", "image": f"images/{image_name}",
                              "prompt": prompt_text(row["prompt"]), "caption_a": a, "caption_b": b,
                              "source_index": offset + i, "model": model_path, "adapter": adapter,
                              "temperature": temperature}
                    record.update({c: row[c] for c in META_COLUMNS if c in row})
                    out.write(json.dumps(record) + "\n")
                    written += 1
    return {"pairs": written, "images_without_distinct_samples": identical, "output": str(output),
            "model": model_path}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="the PAIRS.jsonl to write (images/ goes beside it)")
    p.add_argument("--model", default=None, help="base VLM folder or Hub id (default: the demo base model)")
    p.add_argument("--adapter", default=None, help="optional LoRA adapter folder on top of --model")
    p.add_argument("--dataset", default="synthetic", help="data spec of mmft.data.loaders.load_data")
    p.add_argument("--split", default="train", help="dataset split")
    p.add_argument("--num_images", type=int, default=100, help="images to sample captions for")
    p.add_argument("--offset", type=int, default=0, help="skip this many images of the split first")
    p.add_argument("--samples_per_image", type=int, default=2, help="captions sampled per image (k >= 2)")
    p.add_argument("--pairs_per_image", type=int, default=1, help="pairs of distinct captions kept per image")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling threshold")
    p.add_argument("--max_new_tokens", type=int, default=32, help="longest caption in tokens")
    p.add_argument("--batch_size", type=int, default=32, help="images per generate call")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    summary = make_pairs(**vars(args))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
