"""A zoo of tiny, randomly initialised VLMs of real Hugging Face architectures.

Every trainer test, benchmark and the demo runs on these. Each entry builds the real
model class from a shrunken config plus the architecture's real processor (image
processor, and video processor where the processor needs one) around a byte-level
BPE tokenizer trained locally on the embedded task's text. Nothing touches the Hub:
the result is written with `save_pretrained` and loads back with
`AutoProcessor.from_pretrained` / `AutoModelForImageTextToText.from_pretrained` under
`HF_HUB_OFFLINE=1`, exactly as a real checkpoint would.

Tokenizers keep pad distinct from EOS (ppo_spec.md: masks come from lengths, but the
zoo should not hide that bug class either); `pad_equals_eos=True` builds the opposite
case on purpose for the test that pins it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

# ChatML-style template shared by the zoo. `image_block` is the text that stands for
# one image in the prompt before the processor expands it to image tokens.
_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '@IMAGE@' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

_BASE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


@dataclass(frozen=True)
class ArchSpec:
    """How to build one tiny architecture."""

    name: str
    model_type: str
    image_block: str  # what the chat template writes for one image
    special_tokens: tuple[str, ...]  # added to the tokenizer beyond _BASE_SPECIALS
    extra_special: dict[str, str]  # named special tokens, e.g. {"image_token": "<image>"}
    build: Callable[[object, int], tuple[object, object]]  # (tokenizer, image_size) -> (config, processor)
    notes: str


def _corpus() -> list[str]:
    from mmft.data.synthetic import tokenizer_corpus

    return tokenizer_corpus()


def build_tokenizer(
    special_tokens: Iterable[str] = (),
    extra_special: dict[str, str] | None = None,
    chat_template: str | None = None,
    vocab_size: int = 1024,
    pad_equals_eos: bool = False,
):
    """Train a byte-level BPE tokenizer on the embedded task's text (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(_BASE_SPECIALS) + [t for t in special_tokens if t not in _BASE_SPECIALS]
    extra_special = dict(extra_special or {})
    specials += [t for t in extra_special.values() if t not in specials]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    eos = "<|im_end|>"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos,
        pad_token=eos if pad_equals_eos else "<|pad|>",
        bos_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens=extra_special,
        chat_template=chat_template,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    return fast


def _text_dims(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


# ---------------------------------------------------------------------------------------
# Architectures


def _llava(tokenizer, image_size: int):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor

    patch = 16
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch, projection_dim=32,
    )
    text = LlamaConfig(**_text_dims(tokenizer))
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id,
        vision_feature_select_strategy="default", vision_feature_layer=-1, projector_hidden_act="gelu",
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    return config, processor


def _qwen_vision_kwargs(image_size: int) -> dict:
    # Qwen-VL image processors resize to a multiple of patch*merge (28) within
    # [min_pixels, max_pixels]; pinning both to one size makes every image the same
    # 2x2 grid of merged patches, so prompts have a fixed number of image tokens.
    side = max(28, (image_size // 28) * 28)
    return dict(min_pixels=side * side, max_pixels=side * side)


def _qwen2_vl(tokenizer, image_size: int):
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    dims = _text_dims(tokenizer)
    text = dict(dims, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=tokenizer.image_token_id, video_token_id=tokenizer.video_token_id,
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    kw = _qwen_vision_kwargs(image_size)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**kw), video_processor=Qwen2VLVideoProcessor(**kw),
        tokenizer=tokenizer, chat_template=tokenizer.chat_template,
    )
    return config, processor


def _qwen2_5_vl(tokenizer, image_size: int):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    dims = _text_dims(tokenizer)
    text = dict(dims, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1], in_channels=3),
        image_token_id=tokenizer.image_token_id, video_token_id=tokenizer.video_token_id,
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    kw = _qwen_vision_kwargs(image_size)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**kw), video_processor=Qwen2VLVideoProcessor(**kw),
        tokenizer=tokenizer, chat_template=tokenizer.chat_template,
    )
    return config, processor


def _qwen3_vl(tokenizer, image_size: int):
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLProcessor, Qwen3VLVideoProcessor

    dims = _text_dims(tokenizer)
    text = dict(dims, head_dim=16,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                 "mrope_interleaved": True})
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                           num_position_embeddings=64, deepstack_visual_indexes=[1]),
        image_token_id=tokenizer.image_token_id, video_token_id=tokenizer.video_token_id,
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    side = max(32, (image_size // 32) * 32)
    size = {"shortest_edge": side * side, "longest_edge": side * side}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=16, merge_size=2),
        video_processor=Qwen3VLVideoProcessor(size=size, patch_size=16, merge_size=2),
        tokenizer=tokenizer, chat_template=tokenizer.chat_template,
    )
    return config, processor


def _idefics3(tokenizer, image_size: int):
    from transformers import Idefics3Config, Idefics3ImageProcessor, Idefics3Processor

    patch, scale = 16, 2
    text = dict(_text_dims(tokenizer), model_type="llama")
    config = Idefics3Config(
        text_config=text,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch),
        scale_factor=scale, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    image_seq_len = (image_size // patch) ** 2 // (scale**2)
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False, size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len,
        chat_template=tokenizer.chat_template,
    )
    return config, processor


def _paligemma(tokenizer, image_size: int):
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    patch = 16
    num_image_tokens = (image_size // patch) ** 2
    # The processor adds PaliGemma's 1,152 location and segmentation tokens itself.
    processor = PaliGemmaProcessor(
        image_processor=SiglipImageProcessor(size={"height": image_size, "width": image_size},
                                             image_seq_length=num_image_tokens),
        tokenizer=tokenizer, chat_template=tokenizer.chat_template,
    )
    text = GemmaConfig(**dict(_text_dims(tokenizer), vocab_size=len(processor.tokenizer), head_dim=16))
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=image_size, patch_size=patch, projection_dim=64)
    config = PaliGemmaConfig(
        vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
        projection_dim=64, hidden_size=64,
    )
    config.vision_config.num_image_tokens = num_image_tokens
    return config, processor


def _gemma3(tokenizer, image_size: int):
    from transformers import Gemma3Config, Gemma3ImageProcessor, Gemma3Processor

    patch, tokens_per_image = 16, 4
    text = dict(_text_dims(tokenizer), head_dim=16, sliding_window=64, query_pre_attn_scalar=16)
    config = Gemma3Config(
        text_config=text,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=tokenizer.boi_token_id, eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer, image_seq_length=tokens_per_image, chat_template=tokenizer.chat_template,
    )
    return config, processor


_QWEN_SPECIALS = ("<|vision_start|>", "<|vision_end|>")
ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in [
        ArchSpec("llava", "llava", "<image>", (), {"image_token": "<image>"}, _llava,
                 "CLIP vision tower + MLP projector + Llama; 16 image tokens at 64 px."),
        ArchSpec("qwen2_vl", "qwen2_vl", "<|vision_start|><|image_pad|><|vision_end|>", _QWEN_SPECIALS,
                 {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}, _qwen2_vl,
                 "Qwen2-VL: native-resolution ViT, 3-D M-RoPE positions (mm_token_type_ids)."),
        ArchSpec("qwen2_5_vl", "qwen2_5_vl", "<|vision_start|><|image_pad|><|vision_end|>", _QWEN_SPECIALS,
                 {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}, _qwen2_5_vl,
                 "Qwen2.5-VL: windowed-attention ViT, 3-D M-RoPE positions."),
        ArchSpec("qwen3_vl", "qwen3_vl", "<|vision_start|><|image_pad|><|vision_end|>", _QWEN_SPECIALS,
                 {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}, _qwen3_vl,
                 "Qwen3-VL: interleaved M-RoPE, DeepStack visual features into early LM layers."),
        ArchSpec("idefics3", "idefics3", "<image>",
                 ("<fake_token_around_image>", "<global-img>", "<end_of_utterance>",
                  *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))),
                 {"image_token": "<image>"}, _idefics3,
                 "Idefics3 / SmolVLM: SigLIP tower + pixel-shuffle connector + Llama."),
        ArchSpec("paligemma", "paligemma", "<image>", (), {"image_token": "<image>"}, _paligemma,
                 "PaliGemma: SigLIP + Gemma, image tokens prefixed by the processor, prefix-LM mask."),
        ArchSpec("gemma3", "gemma3", "<start_of_image>", (),
                 {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                  "eoi_token": "<end_of_image>"}, _gemma3,
                 "Gemma 3: SigLIP + pooled soft tokens + Gemma 3 text (sliding window)."),
    ]
}


def list_archs() -> list[str]:
    return list(ARCHS)


def make_tiny_vlm(
    arch: str,
    output_dir: str | os.PathLike | None = None,
    *,
    image_size: int = 64,
    seed: int = 0,
    pad_equals_eos: bool = False,
    text_hidden: int | None = None,
    text_layers: int | None = None,
):
    """Build a tiny randomly initialised VLM of architecture `arch` and its processor.

    Returns `(model, processor)`; when `output_dir` is given both are saved there with
    `save_pretrained` (and a `generation_config.json` whose EOS is the chat end token).
    """
    from transformers import AutoModelForImageTextToText

    if arch not in ARCHS:
        raise ValueError(f"Unknown tiny architecture {arch!r}; known: {', '.join(ARCHS)}.")
    spec = ARCHS[arch]
    template = _CHAT_TEMPLATE.replace("@IMAGE@", spec.image_block)
    tokenizer = build_tokenizer(spec.special_tokens, spec.extra_special, template, pad_equals_eos=pad_equals_eos)
    config, processor = spec.build(tokenizer, image_size)
    if text_hidden or text_layers:
        text_config = config.get_text_config()
        if text_hidden:
            text_config.hidden_size = text_hidden
            text_config.intermediate_size = 2 * text_hidden
        if text_layers:
            text_config.num_hidden_layers = text_layers
            # Configs with one attention type per layer (Qwen, Gemma 3) must list every layer.
            layer_types = getattr(text_config, "layer_types", None)
            if layer_types:
                text_config.layer_types = [layer_types[i % len(layer_types)] for i in range(text_layers)]
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    gen = model.generation_config
    gen.eos_token_id = processor.tokenizer.eos_token_id
    gen.pad_token_id = processor.tokenizer.pad_token_id
    gen.bos_token_id = processor.tokenizer.bos_token_id
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    return model, processor
