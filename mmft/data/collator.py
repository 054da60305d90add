"""One prompt collator for every architecture.

Rows carry a TRL conversational `prompt` and their images (`image`: one PIL image or
None; or `images`: a list). Each row goes through the model's own processor alone
(chat template, then image-token expansion), and the results are merged here: sequence
inputs left-padded, image tensors concatenated (or padded with all-zero images for
architectures that batch images per sample, which those models treat as padding). Doing
it per row is what lets one batch mix one-image, several-image and text-only prompts on
every architecture, without trusting each processor's own batching rules.

A prompt is never truncated after image expansion (that would cut image tokens out from
under their features): a prompt over `max_prompt_length` is an error naming the sample,
or, with `skip_long_prompts`, is dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from mmft.data.errors import DataError
from mmft.models.arch import SEQUENCE_KEYS


@dataclass
class PromptBatch:
    """Prompts ready for `generate` and for the training-layout forward.

    Rows stay encoded one by one and are merged on demand, always left-padded to the
    same `length`: any subset (a micro-batch of a shuffled mini-batch) then has exactly
    the layout the rollout had, row for row, so old and new log-probs line up.
    """

    encodings: list[dict[str, torch.Tensor]]
    indices: list[int]  # dataset index of each row kept
    pad_values: dict[str, int]
    length: int  # padded prompt length P
    skipped: list[int] = field(default_factory=list)  # dataset indices dropped as too long

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """Merged model inputs: input_ids [B, P], attention_mask [B, P], image tensors, ..."""
        return merge_encodings(self.encodings, self.pad_values, self.length)

    @property
    def prompt_length(self) -> int:
        return self.length

    def __len__(self) -> int:
        return len(self.encodings)

    def select(self, rows) -> PromptBatch:
        rows = [int(r) for r in rows]
        return PromptBatch([self.encodings[r] for r in rows], [self.indices[r] for r in rows],
                           self.pad_values, self.length)

    def repeat(self, k: int) -> PromptBatch:
        """Each row k times in a row (k samples per prompt)."""
        return self.select([r for r in range(len(self)) for _ in range(k)])


def as_conversation(prompt, num_images: int) -> list[dict]:
    """A TRL conversational prompt; a plain string becomes one user turn, with its images first."""
    if isinstance(prompt, str):
        content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": prompt}]
        return [{"role": "user", "content": content}]
    return prompt


def row_images(row: dict, index: int) -> list[Image.Image]:
    """The images of a row, from `images` (list) or `image` (one or None), checked."""
    if "images" in row and row["images"] is not None:
        images = list(row["images"])
    else:
        image = row.get("image")
        images = [] if image is None else [image]
    for image in images:
        if not isinstance(image, Image.Image):
            raise DataError(
                f"Sample {index}: expected a PIL image in the image column, got {type(image).__name__}. "
                "Cast the column with datasets.Image() or load the file with PIL."
            )
    return [im.convert("RGB") if im.mode != "RGB" else im for im in images]


def _count_image_parts(conversation: list[dict]) -> int:
    n = 0
    for message in conversation:
        if isinstance(message.get("content"), list):
            n += sum(1 for part in message["content"] if part.get("type") == "image")
    return n


class VLMCollator:
    """Turns dataset rows into a `PromptBatch` with the model's processor."""

    def __init__(self, processor, max_prompt_length: int | None = None, skip_long_prompts: bool = False):
        self.processor = processor
        self.max_prompt_length = max_prompt_length
        self.skip_long_prompts = skip_long_prompts
        tok = processor.tokenizer
        self.pad_values = {"input_ids": tok.pad_token_id, "attention_mask": 0, "token_type_ids": 0,
                           "mm_token_type_ids": 0}

    def encode_row(self, row: dict, index: int) -> dict[str, torch.Tensor]:
        images = row_images(row, index)
        if "prompt" not in row:
            raise DataError(f"Sample {index} has no 'prompt' column (columns: {sorted(row)}).")
        conversation = as_conversation(row["prompt"], len(images))
        if _count_image_parts(conversation) != len(images):
            raise DataError(
                f"Sample {index}: the prompt has {_count_image_parts(conversation)} image placeholder(s) "
                f"but the row carries {len(images)} image(s); they must match."
            )
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        try:
            encoded = self.processor(text=[text], images=[images] if images else None, return_tensors="pt")
        except Exception as err:  # processors raise many types; name the sample for the user
            raise DataError(f"Sample {index}: the processor could not encode this prompt: {err}") from err
        encoded.pop("labels", None)
        return dict(encoded)

    def __call__(self, rows: list[dict], indices: list[int] | None = None) -> PromptBatch:
        indices = list(range(len(rows))) if indices is None else list(indices)
        encoded, kept, skipped = [], [], []
        for row, index in zip(rows, indices):
            enc = self.encode_row(row, index)
            length = enc["input_ids"].shape[1]
            if self.max_prompt_length is not None and length > self.max_prompt_length:
                if not self.skip_long_prompts:
                    raise DataError(
                        f"Sample {index}: the prompt is {length} tokens after image expansion, over "
                        f"max_prompt_length={self.max_prompt_length}. Raise max_prompt_length, shrink the images "
                        "(e.g. max_pixels for Qwen-VL), or set skip_long_prompts=True to drop and count such samples."
                    )
                skipped.append(index)
                continue
            encoded.append(enc)
            kept.append(index)
        if not encoded:
            raise DataError(f"Every sample of this batch was skipped as too long: {skipped}.")
        length = max(e["input_ids"].shape[1] for e in encoded)
        return PromptBatch(encoded, kept, self.pad_values, length, skipped)


def merge_encodings(
    encoded: list[dict[str, torch.Tensor]], pad_values: dict[str, int], length: int | None = None
) -> dict[str, torch.Tensor]:
    """Left-pad sequence inputs to `length`; concatenate per-image tensors; pad
    per-sample image stacks."""
    out: dict[str, torch.Tensor] = {}
    length = length or max(e["input_ids"].shape[1] for e in encoded)
    for key in SEQUENCE_KEYS:
        if key in encoded[0]:
            out[key] = torch.cat([
                torch.nn.functional.pad(e[key], (length - e[key].shape[1], 0), value=pad_values[key])
                for e in encoded
            ])
    image_keys = {k for e in encoded for k in e if k not in SEQUENCE_KEYS}
    for key in sorted(image_keys):
        present = [e[key] for e in encoded if key in e]
        if key in ("pixel_values", "pixel_attention_mask") and present[0].dim() in (4, 5) and _per_sample(encoded):
            # Idefics3-style [1, n_images, ...] per sample: pad n_images with all-zero images,
            # which the model drops as padding; text-only rows get only padding images.
            n = max(t.shape[1] for t in present)
            shape = present[0].shape[2:]
            out[key] = torch.cat([
                _pad_images(e.get(key), n, shape, present[0].dtype) for e in encoded
            ])
        else:
            out[key] = torch.cat(present)
    return out


def _per_sample(encoded: list[dict]) -> bool:
    pv = next(e["pixel_values"] for e in encoded if "pixel_values" in e)
    return pv.dim() == 5


def _pad_images(t: torch.Tensor | None, n: int, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    if t is None:
        return torch.zeros((1, n, *shape), dtype=dtype)
    if t.shape[1] == n:
        return t
    return torch.cat([t, torch.zeros((1, n - t.shape[1], *shape), dtype=dtype)], dim=1)
