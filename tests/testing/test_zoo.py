"""The tiny-VLM zoo: every architecture builds offline, reloads with the Auto classes and generates."""

import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmft.data.synthetic import load_synthetic_captions
from mmft.testing import ARCHS


@pytest.mark.parametrize("arch", list(ARCHS))
def test_make_tiny_reloads_offline_and_generates(arch, tmp_path):
    out = tmp_path / arch
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "mmft.cli", "make-tiny", "--arch", arch, "--output", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Wrote a tiny" in proc.stdout
    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert model.config.model_type == ARCHS[arch].model_type
    tok = processor.tokenizer
    assert tok.pad_token_id != tok.eos_token_id
    assert processor.chat_template
    row = load_synthetic_captions("test", 1)[0]
    # Every word of the task is in the tokenizer's training text: no byte fallback for it.
    assert len(tok(row["references"][0], add_special_tokens=False)["input_ids"]) <= 2 * len(row["references"][0].split())
    text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[[row["image"]]], return_tensors="pt")
    inputs.pop("labels", None)
    torch.manual_seed(0)
    out_ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out_ids.shape[1] == inputs["input_ids"].shape[1] + 4 or (out_ids[0, -1] == tok.eos_token_id)
    assert (inputs["input_ids"] == model.config.image_token_id if hasattr(model.config, "image_token_id")
            else inputs["input_ids"] == model.config.image_token_index).sum() > 0


def test_archs_command_lists_every_architecture():
    import contextlib
    import io

    from mmft.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["archs"]) == 0
    listed = [line.split()[0] for line in buf.getvalue().splitlines()]
    assert listed == list(ARCHS)


@pytest.mark.parametrize("arch", ["qwen2_vl", "gemma3"])
def test_text_layers_override_keeps_per_layer_attention_types(arch):
    """Qwen and Gemma 3 configs list an attention type per layer; a deeper or shallower
    override must list exactly as many (it raised IndexError in the forward before)."""
    import torch

    from mmft.testing.zoo import make_tiny_vlm

    model, _ = make_tiny_vlm(arch, text_layers=3)
    text = model.config.get_text_config()
    assert text.num_hidden_layers == 3 and len(text.layer_types) == 3
    with torch.no_grad():
        out = model.get_input_embeddings()(torch.tensor([[5, 6, 7]]))
        assert out.shape[-1] == text.hidden_size
        logits = model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits
    assert logits.shape[:2] == (1, 4) and torch.isfinite(logits).all()
