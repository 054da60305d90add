"""Caption evaluation of a VLM (optionally with a LoRA adapter) on a caption dataset.

`evaluate_captions(model, processor, dataset)` generates one caption per image (greedy
or beam search), then `score_generated` scores them: pycocoevalcap's corpus and
per-image metrics, CLIPScore with a CLIP model, the mean of any TRL-contract reward
function, and per-slice numbers (attribute accuracy when the rows carry the embedded
task's `objects`, the demographic-word bias report otherwise). Everything lands in one
flat {name: value} dict with pycocoevalcap's names and namespaced extras
(`slices/...`, `bias/...`, `reward/<name>`, `CLIPScore`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mmft.data.collator import VLMCollator
from mmft.evaluation.metrics import available_metrics, score_captions, spice_unavailable_reason
from mmft.evaluation.slices import attribute_slices, bias_report
from mmft.rollout import decode_responses, generate, stop_token_ids

logger = logging.getLogger("mmft")


@dataclass
class EvalResult:
    """What one model produced and scored on a dataset.

    `metrics`: flat {name: float}. `samples` [N]: per sample `index` (dataset row),
    `image_id`, `references`, `caption` and `scores` ({name: float}). `notes`: what was
    skipped and why (e.g. SPICE without its models).
    """

    metrics: dict[str, float]
    samples: list[dict]
    notes: list[str] = field(default_factory=list)

    @property
    def captions(self) -> list[str]:
        return [s["caption"] for s in self.samples]


def _row(dataset, index: int) -> dict:
    try:
        return dataset[index]
    except Exception as err:  # an unreadable image surfaces only when the row is decoded
        raise ValueError(f"Sample {index}: could not read this row ({type(err).__name__}: {err}). "
                         "Load the data with on_error='skip' to leave bad samples out.") from err


def _check_columns(dataset) -> None:
    missing = {"image", "prompt", "references"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"The evaluation dataset lacks column(s) {sorted(missing)} (has {dataset.column_names}); "
                         "load it with mmft.data.loaders.load_data, which gives image, prompt and references.")


@torch.no_grad()
def generate_captions(
    model,
    processor,
    dataset,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    num_beams: int = 1,
    max_prompt_length: int | None = None,
    progress: bool = True,
    desc: str = "captioning",
) -> list[str]:
    """One deterministic caption per dataset row: greedy (`num_beams=1`) or beam search.

    `dataset` rows need `image` and `prompt`; returns the texts [N] with the stop
    token and special tokens removed.
    """
    from tqdm.auto import tqdm

    if batch_size < 1 or num_beams < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size, num_beams and max_new_tokens must be >= 1 "
                         f"(got {batch_size}, {num_beams}, {max_new_tokens}).")
    tokenizer = processor.tokenizer
    stop_ids = stop_token_ids(model.generation_config, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    collator = VLMCollator(processor, max_prompt_length)
    was_training = model.training
    model.eval()
    captions: list[str] = []
    n = len(dataset)
    with tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            indices = list(range(start, min(start + batch_size, n)))
            batch = collator([_row(dataset, i) for i in indices], indices)
            rollout = generate(model, batch, max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id,
                               do_sample=False, num_beams=num_beams)
            captions += decode_responses(tokenizer, rollout.response_ids, rollout.response_mask)
            bar.update(len(indices))
    model.train(was_training)
    return captions


def score_generated(
    captions: Sequence[str],
    dataset,
    *,
    metrics: Sequence[str] | None = None,
    clip_model: str | None = None,
    reward_funcs: Sequence[Callable] = (),
    tokenize: str = "ptb",
) -> EvalResult:
    """Score `captions` [N] against the rows of `dataset` (same order).

    metrics: pycocoevalcap names; default every one this machine can compute (SPICE
    is left out, with a note, when its Stanford CoreNLP models are not installed).
    clip_model: a CLIP or SigLIP checkpoint for CLIPScore (`reward_models.ClipScore`).
    reward_funcs: callables with TRL's reward contract, called once on the whole set with
    every dataset column; reported as `reward/<__name__>`.
    """
    _check_columns(dataset)
    if len(captions) != len(dataset):
        raise ValueError(f"{len(captions)} captions for a dataset of {len(dataset)} rows.")
    notes: list[str] = []
    if metrics is None:
        metrics = available_metrics()
        if "SPICE" not in metrics:
            notes.append(f"SPICE skipped: {spice_unavailable_reason()}")
    references = [list(r) for r in dataset["references"]]
    image_ids = dataset["image_id"] if "image_id" in dataset.column_names else [str(i) for i in range(len(dataset))]
    corpus, per_image = score_captions(captions, references, metrics, tokenize)
    out = dict(corpus)
    scorers = [(f"reward/{_name(f)}", f) for f in reward_funcs]
    if clip_model:
        from reward_models import ClipScore

        # CLIP-S with the paper's "A photo depicts" prefix and w = 2.5 (Hessel et al. 2021).
        scorers.insert(0, ("CLIPScore", ClipScore(clip_model, mode="clip_s", name="CLIPScore")))
    for key, func in scorers:
        values = _call_reward(func, captions, dataset)
        scored = [v for v in values if v is not None]
        out[key] = sum(scored) / len(scored) if scored else float("nan")
        for row, v in zip(per_image, values):
            row[key] = float("nan") if v is None else float(v)
    if "objects" in dataset.column_names:
        slices, attributes = attribute_slices(captions, dataset["objects"], per_image)
        out.update(slices)
        for row, attr in zip(per_image, attributes):
            row.update({f"attr/{k}": v for k, v in attr.items()})
    else:
        out.update(bias_report(captions, references))
    out["num_samples"] = float(len(captions))
    samples = [{"index": i, "image_id": str(image_ids[i]), "references": references[i], "caption": captions[i],
                "scores": per_image[i]} for i in range(len(captions))]
    return EvalResult(out, samples, notes)


def _name(func: Callable) -> str:
    return getattr(func, "__name__", type(func).__name__)


def _call_reward(func: Callable, captions: Sequence[str], dataset) -> list[float | None]:
    """Call a reward with TRL's contract: conversational completions (the prompts are
    conversational) and every dataset column by name. Checks length and finiteness."""
    name = _name(func)
    columns = {c: dataset[c] for c in dataset.column_names if c != "prompt"}
    completions = [[{"role": "assistant", "content": c}] for c in captions]
    values = list(func(prompts=dataset["prompt"], completions=completions, **columns))
    if len(values) != len(captions):
        raise ValueError(f"Reward {name!r} returned {len(values)} values for {len(captions)} captions.")
    for i, v in enumerate(values):
        if v is not None and not math.isfinite(float(v)):
            raise ValueError(f"Reward {name!r} returned {v} for sample {i} (caption {captions[i]!r}).")
    return values


def evaluate_captions(
    model,
    processor,
    dataset,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    num_beams: int = 1,
    metrics: Sequence[str] | None = None,
    clip_model: str | None = None,
    reward_funcs: Sequence[Callable] = (),
    progress: bool = True,
    desc: str = "captioning",
) -> EvalResult:
    """Generate a caption per row of `dataset` with `model` and score them (`score_generated`).

    The model is used as it is: wrap it in a PeftModel (or disable its adapter) first to
    evaluate with (or without) a LoRA adapter.
    """
    _check_columns(dataset)
    captions = generate_captions(model, processor, dataset, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                 num_beams=num_beams, progress=progress, desc=desc)
    return score_generated(captions, dataset, metrics=metrics, clip_model=clip_model, reward_funcs=reward_funcs)
