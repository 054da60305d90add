"""Rollout: sample responses, cut them at the stop set, build masks from lengths.

Shared by PPO and SCST (ppo_spec.md, step 1). Masks are built from lengths, never from
`ids != pad_id`: with a tokenizer whose pad equals its EOS that test would hide the EOS
and the model would never learn to stop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmft.data.collator import PromptBatch
from mmft.models.arch import SEQUENCE_KEYS, response_token_type


@dataclass
class Rollout:
    """Sampled responses for a `PromptBatch` (rows aligned)."""

    prompts: PromptBatch
    response_ids: torch.Tensor  # [B, R], pad after the stop token
    response_mask: torch.Tensor  # [B, R] float, 1 up to and including the stop token
    stopped: torch.Tensor  # [B] bool, the response ends with a stop token

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1).long()


def stop_token_ids(generation_config, tokenizer) -> list[int]:
    """The model's stop set: generation_config's eos_token_id (int or list) plus the
    tokenizer's EOS."""
    ids = generation_config.eos_token_id
    ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("The model has no EOS token (generation_config.eos_token_id and tokenizer.eos_token_id "
                         "are both unset); set one so responses can stop.")
    return ids


def truncate_at_stop(
    sequences: torch.Tensor, stop_ids: list[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each row after its first stop token (which stays in the response).

    sequences [B, R] -> (ids [B, R] with pad after the cut, mask [B, R] float, stopped [B]).
    """
    is_stop = torch.isin(sequences, torch.tensor(stop_ids, device=sequences.device))
    R = sequences.shape[1]
    positions = torch.arange(R, device=sequences.device).expand_as(sequences)
    first_stop = torch.where(is_stop, positions, torch.full_like(positions, R)).min(-1).values
    stopped = first_stop < R
    lengths = torch.where(stopped, first_stop + 1, torch.full_like(first_stop, R))
    mask = (positions < lengths[:, None]).float()
    ids = torch.where(mask.bool(), sequences, torch.full_like(sequences, pad_id))
    return ids, mask, stopped


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompts: PromptBatch,
    *,
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_beams: int = 1,
    suppress_ids: list[int] | None = None,
) -> Rollout:
    """Sample (or decode greedily) one response per prompt row; `suppress_ids` are never
    generated (image placeholder tokens: see `mmft.models.arch.multimodal_token_ids`)."""
    from transformers import GenerationConfig

    inputs = {k: v.to(_device(model)) for k, v in prompts.inputs.items()}
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_k=top_k if do_sample and top_k > 0 else None,
        top_p=top_p if do_sample else None,
        num_beams=num_beams,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
        suppress_tokens=list(suppress_ids) if suppress_ids else None,
    )
    out = model.generate(**inputs, generation_config=config)
    sequences = out[:, prompts.prompt_length:]
    ids, mask, stopped = truncate_at_stop(sequences, stop_ids, pad_id)
    # Columns past the longest response are padding in every row (a stop id that is not the
    # tokenizer's EOS can leave some): drop them, so no pass of the iteration computes them.
    longest = max(int(mask.sum(-1).max()), 1)
    return Rollout(prompts, ids[:, :longest].cpu(), mask[:, :longest].cpu(), stopped.cpu())


def training_inputs(
    prompts: PromptBatch, response_ids: torch.Tensor, response_mask: torch.Tensor, model_type: str
) -> dict[str, torch.Tensor]:
    """Prompt + response in the training layout: [B, P + R], prompt left-padded,
    response right-padded, the attention mask from lengths."""
    inputs = prompts.inputs
    R = response_ids.shape[1]
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], response_ids], dim=1)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], response_mask.to(inputs["attention_mask"].dtype)], 1)
    for key, response in response_token_types(inputs, len(prompts), R, model_type).items():
        out[key] = torch.cat([inputs[key], response], 1)
    return out


def response_token_types(prompt_inputs: dict[str, torch.Tensor], rows: int, length: int, model_type: str
                         ) -> dict[str, torch.Tensor]:
    """The token-type inputs (SEQUENCE_KEYS other than ids and mask) of `rows` responses of
    `length` tokens that follow prompts with `prompt_inputs`, one [rows, length] each."""
    return {key: torch.full((rows, length), response_token_type(model_type, key), dtype=prompt_inputs[key].dtype)
            for key in SEQUENCE_KEYS if key in prompt_inputs and key not in ("input_ids", "attention_mask")}


def decode_responses(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """Response texts with the stop token stripped (ppo_spec.md, step 5)."""
    texts = []
    for ids, m in zip(response_ids, response_mask):
        n = int(m.sum())
        texts.append(tokenizer.decode(ids[:n].tolist(), skip_special_tokens=True).strip())
    return texts


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
