"""CLIP-S / RefCLIP-S with a tiny randomly initialised CLIP saved and reloaded offline."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    PreTrainedTokenizerFast,
)

from reward_models.clipscore import ClipScore  # noqa: E402

WORDS = "a photo depicts dog cat red blue ball on the grass running sitting".split()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-clip")
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_max_length=16,
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(path)
    return path


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]


def _reference_scores(path, cands, images, refs, w=2.5, prefix="A photo depicts"):
    """Cosines from CLIPModel.forward (logits / logit scale), independent of ClipScore's code path."""
    model = CLIPModel.from_pretrained(path).eval()
    processor = CLIPProcessor.from_pretrained(path)
    texts = [f"{prefix} {c}" for c in cands]
    with torch.no_grad():
        out = model(**processor(text=texts, images=images, padding=True, return_tensors="pt"))
    cos = (out.logits_per_image / model.logit_scale.exp()).detach().numpy()
    clip_s = w * np.maximum(np.diag(cos), 0)
    with torch.no_grad():
        emb = model(
            **processor(
                text=texts + [f"{prefix} {r}" for rs in refs for r in rs],
                images=images[:1],
                padding=True,
                return_tensors="pt",
            )
        ).text_embeds.numpy()
    cand, ref = emb[: len(cands)], emb[len(cands) :]
    ref_s, k = [], 0
    for i, rs in enumerate(refs):
        ref_s.append(max(w * max(float(cand[i] @ ref[k + j]), 0.0) for j in range(len(rs))))
        k += len(rs)
    ref_s = np.array(ref_s)
    return clip_s, np.where(clip_s + ref_s > 0, 2 * clip_s * ref_s / (clip_s + ref_s), 0.0)


def test_clip_s_and_refclip_s_match_the_definitions(tiny_clip):
    images = _images()
    cands = ["a red ball on the grass", "a dog running", "a cat sitting"]
    refs = [["a red ball"], ["a dog on the grass", "a blue dog"], ["a cat"]]
    want_clip, want_ref = _reference_scores(tiny_clip, cands, images, refs)
    clip_s = ClipScore(tiny_clip, batch_size=2, device="cpu")
    got = clip_s(prompts=["p"] * 3, completions=cands, image=images, references=refs)
    np.testing.assert_allclose(got, want_clip, atol=1e-5)
    assert all(0.0 <= v <= 2.5 for v in got) and max(got) > 0
    ref = ClipScore(tiny_clip, mode="refclip_s", device="cpu")
    np.testing.assert_allclose(ref(completions=cands, image=images, references=refs), want_ref, atol=1e-5)
    assert ref.__name__ == "refclip_s"


def test_clipscore_contract_lists_of_images_missing_images_and_pickle(tiny_clip):
    images = _images()
    reward = ClipScore(tiny_clip, device="cpu")
    single = reward(completions=["a dog", "a cat"], image=[images[0], images[1]])
    # a list of images per row: the first one is scored; a row without an image gets None
    listed = reward(
        completions=[[{"role": "assistant", "content": "a dog"}], "a cat", "a ball"],
        image=[[images[0], images[2]], [images[1]], None],
    )
    np.testing.assert_allclose(listed[:2], single, atol=1e-6)
    assert listed[2] is None
    clone = pickle.loads(pickle.dumps(reward))
    assert clone._model is None and clone(completions=["a dog"], image=[images[0]]) == pytest.approx(
        single[:1], abs=1e-6
    )
    with pytest.raises(KeyError, match="'clip_s' needs an `image` column"):
        reward(completions=["a dog"], references=[["a dog"]])


def test_siglip_checkpoint_uses_max_length_padding(tmp_path):
    """A tiny SigLIP: embeddings equal the model's own forward (text padded to max length, as SigLIP
    was trained), and the score is 2.5 * max(cos, 0) of them."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "</s>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>", model_max_length=16
    )
    SiglipProcessor(
        image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    ).save_pretrained(tmp_path)
    torch.manual_seed(0)
    text = dict(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    text.update(max_position_embeddings=16, pad_token_id=0, eos_token_id=2, bos_token_id=None)
    vision = dict(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    model.save_pretrained(tmp_path)

    images = _images()[:2]
    cands = ["a dog running", "a red ball"]
    reward = ClipScore(tmp_path, device="cpu")
    processor = SiglipProcessor.from_pretrained(tmp_path)
    texts = [f"A photo depicts {c}" for c in cands]
    with torch.no_grad():
        out = model(
            **processor(text=texts, images=images, padding="max_length", truncation=True, return_tensors="pt")
        )
    text_emb = torch.nn.functional.normalize(out.text_embeds, dim=-1).numpy()
    image_emb = torch.nn.functional.normalize(out.image_embeds, dim=-1).numpy()
    np.testing.assert_allclose(reward.embed_texts(cands), text_emb, atol=1e-5)
    np.testing.assert_allclose(reward.embed_images(images), image_emb, atol=1e-5)
    want = 2.5 * np.maximum((text_emb * image_emb).sum(axis=1), 0)
    np.testing.assert_allclose(reward(completions=cands, image=images), want, atol=1e-5)
