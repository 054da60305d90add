"""An image-aware reward model: a VLM backbone (LoRA) plus K scalar heads.

The backbone is the `XModel` inside the checkpoint's `XForConditionalGeneration`
(`mmft.models.arch.inner_model`), not a sequence-classification class: Qwen-VL
checkpoints have none (ppo_spec.md, VLM traps). The heads read the last hidden state
at the last valid token of prompt + response, the response ending with EOS, in the
same left-padded-prompt / right-padded-response layout that PPO trains in
(`mmft.rollout.training_inputs`), so a reward model mounted on PPO's shared base sees
exactly what it was trained on.

Saved folder (`save_reward_model`):

    adapter_config.json, adapter_model.safetensors   the backbone's LoRA (peft)
    reward_head.safetensors                         head weight [K, H], bias [K]
    reward_config.json                              base model, K, EOS id, lambda, metrics
    processor files                                 the processor the model was trained with
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmft.data.collator import PromptBatch, VLMCollator
from mmft.data.errors import DataError
from mmft.models.arch import inner_model, output_embeddings, text_hidden_size
from mmft.rollout import response_token_types, training_inputs

# What the heads read, per `pooling`: the hidden state of the last valid token (EOS), the
# mean over the response tokens, and their sum over SUM_SCALE (a typical caption length,
# so the three start on one scale). Concatenated in this order.
POOLINGS = {"last": ("last",), "last+mean+sum": ("last", "mean", "sum")}
SUM_SCALE = 8.0
# Model types whose responses can be scored after one shared forward of their prompt (its
# keys and values repeated for each response; `shared_prompt_hidden`): the hidden states then
# equal those of prompt + response in one sequence, which
# tests/reward_modeling/test_grouped_batches.py checks for each. Qwen-VL's multimodal rotary positions continue from
# per-prompt offsets that the model keeps between calls, so those stay one sequence per response.
SHARED_PROMPT_MODEL_TYPES = frozenset({"llava", "idefics3", "paligemma", "gemma3"})
# The inputs that make a batch one of shared prompts (`RewardEncoder.pairs`): the captions
# [U, R] and each caption's prompt [U] among the prompts' rows.
SHARED_PROMPT_KEYS = ("response_ids", "response_mask", "prompt_index")


def check_pooling(pooling: str, where: str, error: type[ValueError] = ValueError) -> None:
    """Raise `error`, naming `where` (a class, a file), unless `pooling` is a key of POOLINGS."""
    if pooling not in POOLINGS:
        raise error(f"{where}: pooling must be one of {list(POOLINGS)}, got {pooling!r}.")

REWARD_CONFIG = "reward_config.json"
REWARD_HEAD = "reward_head.safetensors"
FORMAT = "mmft-reward-model/1"


class RewardModelError(ValueError):
    """A reward-model folder that cannot be used; names the folder and what is wrong."""


class RewardHead(nn.Module):
    """K scalar heads on pooled hidden states: [B, P*H] -> [B, K], kept in float32.

    `pooling` (a key of POOLINGS) says which P poolings of the backbone's last hidden
    states the heads read (`pool_hidden`). "last" reads the EOS token's state: the
    backbone has to gather everything the reward depends on into that one token.
    "last+mean+sum" adds the mean and the sum of the response tokens' states, so a head
    is also a sum or a mean of per-token scores: each token, which sees the image and the
    text before it, can be judged where it stands, as metrics that count correct and
    wrong claims (recall, precision) do. Measured on the preference demo: see
    docs/preference.md.

    Members start from different small random weights (std 0.02, as transformers
    initialises classification heads) so an ensemble's heads differ from step 0.

    With `likelihood=True` each head also holds a weight `likelihood_scale` [K] (initial
    value `likelihood_init`) on the response's mean token log-likelihood under the
    backbone (see `RewardModel`).
    """

    def __init__(self, hidden_size: int, num_heads: int = 1, seed: int = 0, likelihood: bool = False,
                 likelihood_init: float = 1.0, pooling: str = "last"):
        super().__init__()
        check_pooling(pooling, "RewardHead")
        self.pooling = pooling
        features = hidden_size * len(POOLINGS[pooling])
        self.score = nn.Linear(features, num_heads)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.score.weight.copy_(torch.randn(num_heads, features, generator=g) * 0.02)
            self.score.bias.zero_()
        self.likelihood_scale = nn.Parameter(torch.full((num_heads,), float(likelihood_init))) if likelihood else None

    @property
    def num_heads(self) -> int:
        return self.score.out_features

    @property
    def likelihood(self) -> bool:
        return self.likelihood_scale is not None

    def forward(self, hidden: torch.Tensor, log_likelihood: torch.Tensor | None = None) -> torch.Tensor:
        """pooled hidden states [B, P*H] (and, with a likelihood term, the mean
        log-likelihood [B]) -> [B, K]."""
        out = self.score(hidden.to(self.score.weight.dtype))
        if self.likelihood_scale is not None:
            out = out + self.likelihood_scale * log_likelihood.to(out.dtype).unsqueeze(-1)
        return out


def response_log_likelihood(backbone: nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor,
                            last_index: torch.Tensor, response_start: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Mean log p(response token | image, prompt, earlier tokens) [B] over each row's
    response (positions response_start..last_index, EOS included), from the backbone's LM
    head on `hidden` [B, T, H]. Rows go through the LM head `chunk` at a time (the
    logits are [rows, R, vocab])."""
    from trl.trainer.utils import selective_log_softmax

    start = int(response_start.min())
    if start < 1 or not bool((response_start == start).all()):
        raise ValueError("the likelihood term needs the training layout: every row's response starts at the "
                         "same position, after a non-empty prompt")
    try:
        lm_head = output_embeddings(backbone, "the likelihood term")
    except ValueError as err:
        raise RewardModelError(str(err)) from err
    ids = input_ids[:, start:].to(hidden.device)
    positions = torch.arange(start, input_ids.shape[1], device=hidden.device)
    mask = (positions.unsqueeze(0) <= last_index.to(hidden.device).unsqueeze(1)).float()
    logps = []
    for i in range(0, hidden.shape[0], chunk):
        logits = lm_head(hidden[i:i + chunk, start - 1:-1]).float()
        logps.append(selective_log_softmax(logits, ids[i:i + chunk]))
    return (torch.cat(logps) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def pool_hidden(hidden: torch.Tensor, pooling: str, last_index: torch.Tensor,
                response_start: torch.Tensor | None) -> torch.Tensor:
    """The features [B, P*H], in float32 as the heads are, that the heads read from the
    last hidden states [B, T, H] (see POOLINGS): each row's response is positions
    response_start..last_index, EOS included. Means and sums are taken in float32, so a
    bf16 backbone's states do not lose precision in the sum."""
    kinds = POOLINGS[pooling]
    last_index = last_index.to(hidden.device)
    features = {"last": hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index].float()}
    if kinds != ("last",):
        if response_start is None:
            raise ValueError(f"the {pooling!r} reward head pools the response tokens: pass response_start "
                             "(RewardEncoder gives it)")
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        mask = (positions >= response_start.to(hidden.device).unsqueeze(1)) & (positions <= last_index.unsqueeze(1))
        total = (hidden.float() * mask.unsqueeze(-1)).sum(1)
        features["mean"] = total / mask.sum(1, keepdim=True).clamp(min=1)
        features["sum"] = total / SUM_SCALE
    return torch.cat([features[kind] for kind in kinds], -1)


def shared_prompt_hidden(backbone: nn.Module, inputs: dict[str, torch.Tensor], model_type: str
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The last hidden states [U, P + R, H] and input ids [U, P + R] of U responses to
    fewer prompts, each prompt through the backbone once (image encoder included).

    `inputs`: the distinct prompts' model inputs [N, P, ...] (left-padded) plus
    `response_ids` and `response_mask` [U, R] and `prompt_index` [U], each response's prompt.
    The prompts' keys and values are repeated for their responses, which then run as a
    continuation, at the positions they have after the prompt in one sequence. Gradients
    flow into the prompts' forward (LoRA) through both. With k responses a prompt this
    costs P + kR tokens instead of k(P + R)."""
    inner = inner_model(backbone)
    prompt = {k: v for k, v in inputs.items() if k not in SHARED_PROMPT_KEYS}
    response_ids, response_mask, prompt_index = (inputs[k] for k in SHARED_PROMPT_KEYS)
    # transformers renamed past_key_values to cache during 5.x.
    name = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"
    first = inner(**prompt, use_cache=True)
    cache = getattr(first, name)
    cache.reorder_cache(prompt_index)
    mask = prompt["attention_mask"]
    continuation = {
        "input_ids": response_ids,
        "attention_mask": torch.cat([mask.index_select(0, prompt_index), response_mask.to(mask.dtype)], 1),
        name: cache,
        **response_token_types(prompt, *response_ids.shape, model_type),
    }
    rest = inner(**continuation, use_cache=True).last_hidden_state
    hidden = torch.cat([first.last_hidden_state.index_select(0, prompt_index), rest], 1)
    return hidden, torch.cat([prompt["input_ids"].index_select(0, prompt_index), response_ids], 1)


def score_inputs(backbone: nn.Module, head: RewardHead, inputs: dict[str, torch.Tensor], last_index: torch.Tensor,
                 response_start: torch.Tensor | None = None) -> torch.Tensor:
    """Rewards [B, K]: the heads on the pooled hidden states (`pool_hidden`; `last_index`
    [B]: each row's last valid token, `response_start` [B]: where its response begins),
    plus, with a likelihood head, its weight times the response's mean log-likelihood.
    When `inputs` hold SHARED_PROMPT_KEYS, they are shared prompts and their responses
    (`shared_prompt_hidden`)."""
    if "prompt_index" in inputs:
        hidden, input_ids = shared_prompt_hidden(backbone, inputs, backbone.config.model_type)
    else:
        hidden = inner_model(backbone)(**inputs, use_cache=False).last_hidden_state
        input_ids = inputs["input_ids"]
    features = pool_hidden(hidden, head.pooling, last_index, response_start)
    if not head.likelihood:
        return head(features)
    if response_start is None:
        raise ValueError("this reward model has a likelihood term: pass response_start (RewardEncoder gives it)")
    return head(features, response_log_likelihood(backbone, hidden, input_ids, last_index, response_start))


class RewardModel(nn.Module):
    """Backbone (a peft model) + `RewardHead`: one module, so accelerate/DDP wraps one engine.

    `forward(inputs, last_index, response_start)` -> rewards [B, K]: each head's linear
    score of the pooled hidden states (the EOS after the response, by default; see
    `RewardHead`), plus, when `likelihood=True`, a learned weight (initially `likelihood_init`) times the mean
    token log-likelihood of the response given image and prompt under the backbone (the
    VLM's own LM head, LoRA included). That term is the captioner's "how well does this
    text describe this image" (VisualGPTScore, Lin et al. 2023), an image-grounded prior
    that Bradley-Terry training then reweights and fine-tunes; a head on the last hidden
    state alone has to learn the grounding from the preference pairs.
    """

    def __init__(self, backbone: nn.Module, num_heads: int = 1, head: RewardHead | None = None, seed: int = 0,
                 likelihood: bool = False, likelihood_init: float = 1.0, pooling: str = "last"):
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else RewardHead(text_hidden_size(backbone.config), num_heads, seed,
                                                             likelihood, likelihood_init, pooling)

    @property
    def config(self):
        return self.backbone.config

    def forward(self, inputs: dict[str, torch.Tensor], last_index: torch.Tensor,
                response_start: torch.Tensor | None = None) -> torch.Tensor:
        return score_inputs(self.backbone, self.head, inputs, last_index, response_start).float()


# ---------------------------------------------------------------------------------- encoding
def message_text(content: Any) -> str:
    """Text of one message content: a string or a list of {"type": "text"} parts."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")


def completion_text(completion: Any, index: int) -> str:
    """A completion as text: a string, or assistant message(s) (TRL conversational)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)) and all(isinstance(m, dict) for m in completion):
        messages = [m for m in completion if m.get("role") == "assistant"] or list(completion)
        return "\n".join(message_text(m.get("content", "")) for m in messages)
    raise DataError(f"Sample {index}: a completion must be a string or a list of messages, "
                    f"got {type(completion).__name__}.")


def prompt_and_images(prompt: Any, images: list | None, index: int) -> tuple[list[dict], list]:
    """A conversation with one `{"type": "image"}` part per image, and those images.

    Accepts a plain string, TRL conversational messages with string content (mmft.label's
    export; the image placeholders go before the first user turn's text, as TRL's
    `prepare_multimodal_messages` does), or messages whose image parts already carry the
    image (`{"type": "image", "image": PIL}`, as TRL's GRPOTrainer passes prompts); those
    payloads are used when no image column is given.
    """
    images = list(images or [])
    if isinstance(prompt, str):
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
        return [{"role": "user", "content": content}], images
    if not isinstance(prompt, (list, tuple)) or not all(isinstance(m, dict) for m in prompt):
        raise DataError(f"Sample {index}: the prompt must be a string or a list of messages, "
                        f"got {type(prompt).__name__}.")
    embedded = []
    has_parts = False
    conversation = []
    for message in prompt:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image":
                    has_parts = True
                    if part.get("image") is not None:
                        embedded.append(part["image"])
                    parts.append({"type": "image"})
                elif part.get("type") == "text":
                    parts.append({"type": "text", "text": part.get("text") or ""})
            conversation.append({"role": message["role"], "content": parts})
        else:
            conversation.append({"role": message["role"], "content": content or ""})
    if not images and embedded:
        images = embedded
    if not has_parts and images:
        for message in conversation:
            if message["role"] == "user":
                text = message["content"]
                message["content"] = [{"type": "image"} for _ in images] + (
                    [{"type": "text", "text": text}] if isinstance(text, str) else list(text))
                break
        else:
            raise DataError(f"Sample {index}: the prompt has no user turn to attach its image(s) to.")
    return conversation, images


def row_images(row: dict, index: int) -> list:
    """The images of a dataset row: the `images` list or the single `image` (may be None)."""
    if row.get("images") is not None:
        return list(row["images"])
    if row.get("image") is not None:
        return [row["image"]]
    return []


def response_positions(prompt_length: int, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(last_index [B], response_start [B]) of responses after prompts padded to `prompt_length`."""
    last_index = prompt_length + response_mask.sum(-1).long() - 1
    return last_index, torch.full_like(last_index, prompt_length)


class RewardEncoder:
    """Turns (prompt, images, response text) rows into reward-model inputs.

    `__call__` returns the training-layout inputs (prompt left-padded to P, response
    token ids + EOS right-padded to R, masks from lengths) and `last_index` [B] =
    P + response length - 1, the position whose hidden state is scored.
    """

    def __init__(self, processor, model_type: str, eos_token_id: int, max_completion_length: int | None = None,
                 max_prompt_length: int | None = None, share_prompts: bool = False):
        if share_prompts and model_type not in SHARED_PROMPT_MODEL_TYPES:
            raise ValueError(f"share_prompts: {model_type} models score each response with its prompt "
                             f"(supported: {', '.join(sorted(SHARED_PROMPT_MODEL_TYPES))}).")
        self.share_prompts = share_prompts
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.model_type = model_type
        self.eos_token_id = int(eos_token_id)
        self.max_completion_length = max_completion_length
        self.collator = VLMCollator(processor, max_prompt_length=max_prompt_length)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_token_id

    def prompts(self, prompts: list, images: list[list], indices: list[int]) -> PromptBatch:
        rows = []
        for prompt, imgs, index in zip(prompts, images, indices):
            conversation, imgs = prompt_and_images(prompt, imgs, index)
            rows.append({"prompt": conversation, "images": imgs})
        return self.collator(rows, indices)

    def responses(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Response ids [B, R] (text + EOS, truncated to max_completion_length) and mask [B, R]."""
        seqs = []
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos_token_id]
            if self.max_completion_length is not None:
                ids = ids[: self.max_completion_length]
            seqs.append(ids)
        R = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), R), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), R))
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1.0
        return ids, mask

    def layout(self, prompts: PromptBatch, texts: list[str]
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """(inputs, last_index [B], response_start [B])."""
        ids, mask = self.responses(texts)
        return (training_inputs(prompts, ids, mask, self.model_type),) + response_positions(prompts.prompt_length, mask)

    def __call__(self, prompts: list, images: list[list], texts: list[str], indices: list[int] | None = None
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        indices = list(range(len(texts))) if indices is None else list(indices)
        return self.layout(self.prompts(prompts, images, indices), texts)

    def pairs(self, rows: list[dict], indices: list[int], keys: list | None = None) -> dict[str, Any]:
        """A preference batch of B pairs as U <= 2B distinct sequences.

        `keys[i]` names row i's image(s) and prompt (`data.pair_keys`): rows with equal keys
        share one prompt encoding, and a caption they share is one sequence, whose reward
        feeds every pair it is in (the same loss and gradients as scoring it once per
        pair). Without keys every row is its own prompt. Returns the inputs [U, ...],
        `chosen_index` and `rejected_index` [B] (each pair's rows among the U), `margin`
        and `index` [B]. With `share_prompts`, when the batch's U captions have fewer
        prompts, the inputs are those prompts plus SHARED_PROMPT_KEYS: the captions and
        `prompt_index` [U], each caption's prompt (`shared_prompt_hidden`)."""
        for row, index in zip(rows, indices):
            for column in ("prompt", "chosen", "rejected"):
                if column not in row:
                    raise DataError(f"Sample {index}: a preference row needs 'prompt', 'chosen' and 'rejected' "
                                    f"(and 'image' or 'images'); it has {sorted(row)}.")
        keys = list(range(len(rows))) if keys is None else keys
        prompt_of: dict = {}  # key -> its prompt among the distinct ones
        first_rows: list[int] = []
        sequence_of: dict = {}  # (key, text) -> its sequence among the U
        sequence_prompts: list[int] = []
        texts: list[str] = []
        positions: dict[str, list[int]] = {"chosen": [], "rejected": []}
        for r, (row, index, key) in enumerate(zip(rows, indices, keys)):
            if key not in prompt_of:
                prompt_of[key] = len(first_rows)
                first_rows.append(r)
            for column in ("chosen", "rejected"):
                text = completion_text(row[column], index)
                if (key, text) not in sequence_of:
                    sequence_of[key, text] = len(texts)
                    sequence_prompts.append(prompt_of[key])
                    texts.append(text)
                positions[column].append(sequence_of[key, text])
        prompts = self.prompts([rows[r]["prompt"] for r in first_rows],
                               [row_images(rows[r], indices[r]) for r in first_rows], [indices[r] for r in first_rows])
        if self.share_prompts and len(first_rows) < len(texts):
            # Each distinct prompt once; its responses continue from it (shared_prompt_hidden).
            ids, mask = self.responses(texts)
            inputs = {**prompts.inputs, "response_ids": ids, "response_mask": mask,
                      "prompt_index": torch.tensor(sequence_prompts, dtype=torch.long)}
            last_index, response_start = response_positions(prompts.prompt_length, mask)
        else:
            inputs, last_index, response_start = self.layout(prompts.select(sequence_prompts), texts)
        margin = torch.tensor([float(r.get("margin") or 0.0) for r in rows])
        return {"inputs": inputs, "last_index": last_index, "response_start": response_start, "margin": margin,
                "chosen_index": torch.tensor(positions["chosen"], dtype=torch.long),
                "rejected_index": torch.tensor(positions["rejected"], dtype=torch.long),
                "index": torch.tensor(indices, dtype=torch.long)}


def batch_images(n: int, image=None, images=None) -> list[list]:
    """Per-row image lists from TRL's reward keyword arguments (`images` wins over `image`)."""
    if images is not None:
        return [list(x) if x is not None else [] for x in images]
    if image is not None:
        return [[x] if x is not None else [] for x in image]
    return [[] for _ in range(n)]


@torch.no_grad()
def score_rows(forward, encoder: RewardEncoder, prompts: list, completions: list, images: list[list],
               batch_size: int, device, name: str) -> torch.Tensor:
    """Member rewards [N, K] of N (prompt, images, completion) rows, `batch_size` rows per
    forward. `forward(inputs, last_index, response_start) -> [B, K]`; `name` goes into error
    messages."""
    n = len(completions)
    if prompts is None or len(prompts) != n or len(images) != n:
        raise ValueError(f"reward {name!r}: got {n} completions, "
                         f"{'no' if prompts is None else len(prompts)} prompts and {len(images)} image rows; "
                         "it needs one prompt (and the `image` or `images` column) per completion.")
    out = []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        try:
            texts = [completion_text(completions[i], i) for i in idx]
            inputs, last_index, response_start = encoder([prompts[i] for i in idx], [images[i] for i in idx], texts,
                                                         idx)
        except DataError as err:
            raise DataError(f"reward {name!r}: {err}") from err
        inputs = {k: v.to(device) for k, v in inputs.items()}
        out.append(forward(inputs, last_index.to(device), response_start.to(device)).float().cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------------- save / load
@dataclass
class RewardModelInfo:
    """What `reward_config.json` records (enough to rebuild and to check a shared base)."""

    base_model_name_or_path: str
    model_type: str
    hidden_size: int
    num_heads: int
    eos_token_id: int
    max_completion_length: int | None = None
    uncertainty_penalty: float = 0.0
    likelihood: bool = False  # the heads add a weight times the response's mean log-likelihood
    pooling: str = "last"  # what the heads read (POOLINGS); folders saved before it existed read "last"
    base_fingerprint: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    format: str = FORMAT


def base_fingerprint(model: nn.Module) -> list[float]:
    """Cheap identity of a base model: shape and float64 sums of its input embeddings.

    LoRA never touches them, so the base under a trained reward adapter still matches.
    Used to refuse mounting a reward adapter on a different base (its scores would be
    meaningless), without hashing gigabytes of weights.
    """
    w = model.get_input_embeddings().weight.detach()
    w64 = w.double()
    return [float(w.shape[0]), float(w.shape[1]), float(w64.sum()), float(w64.abs().sum())]


def same_base(a: list[float], b: list[float], rtol: float = 1e-4) -> bool:
    if len(a) != len(b) or a[:2] != b[:2]:
        return False
    return all(abs(x - y) <= rtol * max(1.0, abs(x), abs(y)) for x, y in zip(a[2:], b[2:]))


def save_reward_model(model: RewardModel, processor, info: RewardModelInfo, output_dir: str | os.PathLike) -> None:
    """Write the adapter, head, config and processor to `output_dir` (see module docstring)."""
    from safetensors.torch import save_file

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.backbone.save_pretrained(out)  # adapter "default": written at the folder's root
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, str(out / REWARD_HEAD))
    (out / REWARD_CONFIG).write_text(json.dumps(asdict(info), indent=1))
    processor.save_pretrained(out)


def read_info(path: str | os.PathLike) -> RewardModelInfo:
    cfg = Path(path) / REWARD_CONFIG
    if not cfg.is_file():
        raise RewardModelError(f"{path} is not an mmft reward model: {REWARD_CONFIG} is missing. Train one with "
                               "recipes/reward_model.py (or RewardModelTrainer.save_model).")
    data = json.loads(cfg.read_text())
    if data.get("format") != FORMAT:
        raise RewardModelError(f"{cfg}: format {data.get('format')!r}, expected {FORMAT!r}.")
    info = RewardModelInfo(**data)
    check_pooling(info.pooling, str(cfg), RewardModelError)
    return info


def load_head(path: str | os.PathLike, info: RewardModelInfo) -> RewardHead:
    from safetensors.torch import load_file

    head = RewardHead(info.hidden_size, info.num_heads, likelihood=info.likelihood, pooling=info.pooling)
    state = load_file(str(Path(path) / REWARD_HEAD))
    head.load_state_dict(state)
    return head


def load_reward_model(path: str | os.PathLike, base_model: str | None = None, dtype=None, device=None
                      ) -> tuple[RewardModel, Any, RewardModelInfo]:
    """(RewardModel in eval mode, frozen; processor; info) from a saved folder.

    `base_model` overrides the recorded base path (when the base moved).
    """
    from peft import PeftModel

    from mmft.models.loading import load_processor, load_vlm

    info = read_info(path)
    base_path = base_model or info.base_model_name_or_path
    try:
        base = load_vlm(base_path, dtype=dtype)
    except (OSError, ValueError) as err:
        raise RewardModelError(f"{path}: cannot load its base model {base_path!r} ({err}); pass base_model= "
                               "to point at the base it was trained on.") from err
    if info.base_fingerprint and not same_base(base_fingerprint(base), info.base_fingerprint):
        raise RewardModelError(f"{path}: the base at {base_path!r} is not the one this reward model was trained on "
                               "(its input embeddings differ).")
    backbone = PeftModel.from_pretrained(base, str(path), is_trainable=False)
    model = RewardModel(backbone, head=load_head(path, info))
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    if device is not None:
        model.to(device)
    return model, load_processor(path), info
