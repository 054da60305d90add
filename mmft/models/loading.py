"""Loading any Hugging Face VLM and its processor, with errors a user can act on."""

from __future__ import annotations

import os

import torch


class ModelLoadError(ValueError):
    """A model or processor that mmft cannot use, with the path and what was expected."""


def load_processor(path: str | os.PathLike, **kwargs):
    """`AutoProcessor.from_pretrained(path)` checked for what VLM training needs:
    an image processor and a chat template (left padding is set for generation)."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"Could not load a processor from {str(path)!r}: {err}") from err
    if getattr(processor, "image_processor", None) is None:
        raise ModelLoadError(
            f"{str(path)!r} has no image processor: mmft trains vision-language models, so it expects a "
            f"multimodal processor (got {type(processor).__name__}). Point --model_name_or_path at a VLM checkpoint."
        )
    if not getattr(processor, "chat_template", None):
        raise ModelLoadError(
            f"The processor of {str(path)!r} has no chat template; prompts are TRL conversational messages and "
            "need one. Add `chat_template` to the processor (processor.chat_template = ...; save_pretrained)."
        )
    processor.tokenizer.padding_side = "left"
    return processor


def _check_is_vlm(path: str | os.PathLike):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"Could not read a model config from {str(path)!r}: {err}") from err
    if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ModelLoadError(
            f"{str(path)!r} is a {config.model_type!r} model, not a vision-language model: mmft expects a "
            "checkpoint that AutoModelForImageTextToText can load (LLaVA, Qwen2/2.5/3-VL, Idefics3/SmolVLM, "
            "PaliGemma, Gemma 3, ...)."
        )
    return config


def load_vlm(
    path: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    load_in_4bit: bool = False,
    bnb_4bit_compute_dtype: str = "bfloat16",
    attn_implementation: str | None = None,
    device_map=None,
):
    """Load a VLM with `AutoModelForImageTextToText`, optionally 4-bit (QLoRA).

    QLoRA quantises the frozen base with nf4 and double quantisation; every role
    (policy, reference, critic adapters) then shares that one quantised base.
    """
    from transformers import AutoModelForImageTextToText

    _check_is_vlm(path)
    kwargs: dict = {}
    if dtype not in (None, "auto"):
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    elif dtype == "auto":
        kwargs["dtype"] = "auto"
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    if load_in_4bit:
        kwargs["quantization_config"] = qlora_config(bnb_4bit_compute_dtype)
    return AutoModelForImageTextToText.from_pretrained(path, **kwargs)


def qlora_config(compute_dtype: str = "bfloat16"):
    """nf4 + double quantisation, as in the QLoRA paper (Dettmers et al. 2023)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ModelLoadError(
            "load_in_4bit needs bitsandbytes: pip install 'mmft[qlora]' (bitsandbytes>=0.46)."
        ) from err
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
    )
