"""What mmft needs to know about each architecture, and nothing else does.

Only this package knows architecture quirks (style.md): where the language model
lives, which linear layers LoRA presets target, and how token-type inputs extend over
a response appended to a prompt.
"""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger("mmft")

# Linear layers of a decoder block in every supported language model.
_LM_LINEARS = r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
_LM_PREFIX = r"(model\.)?(language_model|text_model)\.(model\.)?layers\.\d+\."
# The projector's Linear layers only (peft cannot wrap the container modules themselves).
_PROJECTOR = (r"(model\.)?(multi_modal_projector|connector|visual\.merger|visual\.deepstack_merger_list\.\d+)\."
              r"(linear(_\d)?|linear_fc\d|modality_projection\.proj|mlp\.[02])")
_VISION = r"(model\.)?(vision_tower|vision_model|visual\.blocks)\.[\w.]+\.(q_proj|k_proj|v_proj|out_proj|qkv|proj|fc1|fc2|linear_fc1|linear_fc2|gate_proj|up_proj|down_proj)"

LORA_PRESETS = {
    "language": f"{_LM_PREFIX}{_LM_LINEARS}",
    "language+projector": f"({_LM_PREFIX}{_LM_LINEARS}|{_PROJECTOR})",
    "all": f"({_LM_PREFIX}{_LM_LINEARS}|{_PROJECTOR}|{_VISION})",
}

# Sequence-aligned inputs that the processor returns beside input_ids.
SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


def lora_target_modules(preset: str) -> str:
    """The peft `target_modules` regex of a LoRA preset ("language" by default)."""
    if preset not in LORA_PRESETS:
        raise ValueError(f"Unknown LoRA target preset {preset!r}; use one of {list(LORA_PRESETS)}.")
    return LORA_PRESETS[preset]


def inner_model(model: torch.nn.Module) -> torch.nn.Module:
    """The `XModel` inside an `XForConditionalGeneration` (through peft wrappers): the
    part that returns `last_hidden_state`, which the value and reward heads read."""
    while hasattr(model, "get_base_model") or type(model).__name__ in ("PeftModel", "LoraModel"):
        model = model.get_base_model() if hasattr(model, "get_base_model") else model.model
    if hasattr(model, "model") and hasattr(model, "lm_head"):
        return model.model
    return model


def text_hidden_size(config) -> int:
    return config.get_text_config().hidden_size


def response_token_type(model_type: str, key: str) -> int:
    """Value of a token-type input on response tokens appended to a prompt.

    PaliGemma marks its causal suffix with token_type_ids = 1 (the prefix, image and
    prompt, is 0 and attends bidirectionally), as its own generate() does for new
    tokens; every other model uses these inputs to flag image tokens, so text is 0.
    """
    if model_type == "paligemma" and key == "token_type_ids":
        return 1
    return 0


def freeze_vision_tower(model: torch.nn.Module) -> None:
    """Freeze the vision encoder (default in mmft: LoRA trains the language side)."""
    for name, param in model.named_parameters():
        if any(part in name for part in ("vision_tower", "vision_model", "visual.")):
            param.requires_grad_(False)


_PLACEHOLDER_WORDS = ("image", "video", "vision", "boi", "eoi", "audio")
_PROCESSOR_TOKENS = ("image_token", "video_token", "fake_image_token", "boi_token", "eoi_token",
                     "vision_start_token", "vision_end_token", "audio_token")


def multimodal_token_ids(config, processor=None) -> list[int]:
    """Ids of the tokens that stand for images, videos or their boundaries (`<image>`,
    `<|image_pad|>`, `<|vision_start|>`, `<start_of_image>`, ...), from the model config's
    `*_token_id` / `*_token_index` fields and the processor's token strings.

    A response must never contain one: in the training-layout forward the model would
    count it as one more image placeholder and fail ("Image features and image tokens do
    not match"), or shift Qwen's M-RoPE positions. Sampling suppresses them."""
    ids: set[int] = set()
    for key, value in config.to_dict().items():
        if (isinstance(value, int) and value >= 0 and key.endswith(("_token_id", "_token_index"))
                and any(w in key for w in _PLACEHOLDER_WORDS)):
            ids.add(value)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        for attr in _PROCESSOR_TOKENS:
            token = getattr(processor, attr, None)
            if isinstance(token, str):
                token_id = tokenizer.convert_tokens_to_ids(token)
                if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
                    ids.add(token_id)
    return sorted(ids)


def output_embeddings(model: torch.nn.Module, purpose: str) -> torch.nn.Module:
    """The LM head of a (peft-wrapped) `XForConditionalGeneration`; `purpose` names what
    needs it in the error raised when the model has none."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(base).__name__} has no LM head: {purpose} needs the full "
                         "XForConditionalGeneration model.")
    return head


def decoder_stack(model: torch.nn.Module) -> tuple[torch.nn.ModuleList, torch.nn.Module]:
    """The language model's decoder layers and its final norm (through peft wrappers)."""
    vlm = inner_model(model)
    language_model = getattr(vlm, "language_model", None) or getattr(vlm, "text_model", None) or vlm
    layers, norm = getattr(language_model, "layers", None), getattr(language_model, "norm", None)
    if not isinstance(layers, torch.nn.ModuleList) or norm is None:
        raise ValueError(f"{type(language_model).__name__} has no `layers` list and final `norm`: critic_layers "
                         "needs them; set critic_layers='all' (the critic then runs the whole model).")
    return layers, norm


def injected_layers(config) -> int:
    """How many of the language model's bottom layers get visual features added to their
    output outside the layer itself (Qwen3-VL's DeepStack); a layer range that runs on
    its own must start above them."""
    vision = getattr(config, "vision_config", None)
    return len(getattr(vision, "deepstack_visual_indexes", None) or [])


def critic_layer_count(critic_layers: int | str, model: torch.nn.Module) -> int | None:
    """`PPOConfig.critic_layers` as a number of top decoder layers (None: the whole model).
    'half' is the top half, fewer if Qwen3-VL's DeepStack layers are reached; on a
    language model without a `layers` list and final `norm` it means the whole model."""
    if critic_layers == "all":
        return None
    if critic_layers != "half":
        return int(critic_layers)
    try:
        layers, _ = decoder_stack(model)
    except ValueError as err:
        logger.warning("critic_layers='half': %s The critic runs the whole model.", err)
        return None
    return max(1, min(math.ceil(len(layers) / 2), len(layers) - injected_layers(model.config)))


def top_layers_lora_config(peft_config, model: torch.nn.Module, num_layers: int):
    """A copy of `peft_config` that targets only the modules it would target in the top
    `num_layers` decoder layers of the language model (listed by full name)."""
    import copy

    from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists

    layers, _ = decoder_stack(model)
    total, low = len(layers), injected_layers(model.config)
    if not 1 <= num_layers <= total - low:
        raise ValueError(f"critic_layers={num_layers}: the language model has {total} decoder layers"
                         + (f", the bottom {low} of which take visual features from outside the layer (DeepStack)"
                            if low else "") + f"; use 1 to {total - low}.")
    top = {id(m) for layer in layers[total - num_layers:] for m in layer.modules()}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # Linear layers, or the LoRA layers already wrapping them (not their inner modules).
    names = [name for name, module in base.named_modules()
             if id(module) in top and isinstance(module, (torch.nn.Linear, BaseTunerLayer))
             and not any(part in name for part in (".base_layer", ".lora_"))
             and check_target_module_exists(peft_config, name)]
    if not names:
        raise ValueError(f"critic_layers={num_layers}: the LoRA config targets no Linear layer in the top "
                         f"{num_layers} decoder layers (target_modules={peft_config.target_modules!r}).")
    config = copy.deepcopy(peft_config)
    config.target_modules = names
    config.layers_to_transform = config.layers_pattern = None
    return config
