"""The reward objects work unchanged as reward_funcs of TRL's GRPOTrainer and RLOOTrainer.

A tiny Qwen2 causal LM is built from a config and a word-level tokenizer is built locally
(no downloads); two optimiser steps each, CPU only.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from reward_models import Bleu, CiderD  # noqa: E402

CAPTIONS = [
    ["a dog runs on the grass", "a brown dog is running"],
    ["two children play in the snow", "kids playing in the snow"],
    ["a man rides a red bike", "a cyclist on the road"],
    ["a cat sits on a wall", "the cat is sitting"],
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """(model folder, tokenizer): saved so that trainers can build their reference model from it."""
    words = sorted(
        {w for refs in CAPTIONS for r in refs for w in r.split()} | {"describe", "picture", "of", "."}
    )
    specials = ["<pad>", "<unk>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|end|>",
        chat_template=CHAT_TEMPLATE,
    )
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=vocab["<pad>"],
        eos_token_id=vocab["<|end|>"],
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    path = tmp_path_factory.mktemp("tiny-qwen2")
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path), tokenizer


def _rewards():
    cider = CiderD(CAPTIONS, cache_dir=False)
    return [cider, Bleu(order=1)]


def _common_args(tmp_path):
    return dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        seed=0,
    )


def _check_logged(trainer):
    logged = [entry for entry in trainer.state.log_history if "rewards/cider_d/mean" in entry]
    assert len(logged) == 2, trainer.state.log_history
    for entry in logged:
        assert entry["rewards/bleu1/mean"] >= 0.0 and entry["rewards/cider_d/mean"] >= 0.0
    assert trainer.state.global_step == 2


def test_grpo_trainer_with_text_prompts(tiny_lm, tmp_path):
    path, tokenizer = tiny_lm
    data = Dataset.from_dict(
        {
            "prompt": ["describe picture of"] * len(CAPTIONS),
            "references": CAPTIONS,
            "image_id": list(range(len(CAPTIONS))),
        }
    )
    trainer = trl.GRPOTrainer(
        model=path,
        reward_funcs=_rewards(),
        args=trl.GRPOConfig(**_common_args(tmp_path)),
        train_dataset=data,
        processing_class=tokenizer,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    _check_logged(trainer)
    assert any(not torch.equal(before[n], p.detach().cpu()) for n, p in trainer.model.named_parameters())


def test_rloo_trainer_with_conversational_prompts(tiny_lm, tmp_path):
    path, tokenizer = tiny_lm
    data = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": "describe picture of"}]] * len(CAPTIONS),
            "references": CAPTIONS,
        }
    )
    trainer = trl.RLOOTrainer(
        model=path,
        reward_funcs=_rewards(),
        args=trl.RLOOConfig(**_common_args(tmp_path)),
        train_dataset=data,
        processing_class=tokenizer,
    )
    trainer.train()
    _check_logged(trainer)
