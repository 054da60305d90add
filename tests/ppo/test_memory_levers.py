"""Memory levers of issue 6: activation checkpointing with adapter-correct recomputation,
QLoRA (nf4) base shared by every role, and the checks that refuse what ZeRO cannot do."""

import warnings

import pytest
import torch

from mmft import PPOConfig, PPOTrainer
from mmft.data.synthetic import load_synthetic_captions


class WordCount:
    __name__ = "word_count"

    def __call__(self, completions, **kwargs):
        return [float(len(c[0]["content"].split())) for c in completions]


def cfg(tmp_path, name, **kw):
    base = dict(output_dir=str(tmp_path / name), per_device_train_batch_size=4, gradient_accumulation_steps=1,
                max_steps=1, num_ppo_epochs=2, max_new_tokens=5, eval_steps=0, save_steps=0, seed=4,
                max_grad_norm=0.0, learning_rate=1e-3)
    base.update(kw)
    return PPOConfig(**base)


def test_gradient_checkpointing_recomputes_each_role_with_its_adapter(tiny_vlm_dir, tmp_path):
    """One backward over the policy and value passes (two epochs, so the zero-initialised
    head lets gradient reach the value adapter): with checkpointing on, each segment
    must be recomputed with the adapter it ran with, so the update equals the one without."""
    data = load_synthetic_captions("train", 8)
    plain = PPOTrainer(tiny_vlm_dir("llava"), args=cfg(tmp_path, "plain"), reward_funcs=[WordCount()],
                       train_dataset=data)
    plain.train()
    ckpt = PPOTrainer(tiny_vlm_dir("llava"), args=cfg(tmp_path, "ckpt", gradient_checkpointing=True),
                      reward_funcs=[WordCount()], train_dataset=data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers' old name warns; ours must not
        assert ckpt.unwrapped.is_gradient_checkpointing and ckpt.unwrapped.is_activation_checkpointing
    assert not plain.unwrapped.is_gradient_checkpointing
    ckpt.train()
    a, b = plain._trainable_state(), ckpt._trainable_state()
    assert any("lora_B.value" in k and a[k].abs().max() > 0 for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_reentrant_checkpointing_refused_with_the_shared_critic(tiny_vlm_dir, tmp_path):
    data = load_synthetic_captions("train", 4)
    with pytest.raises(ValueError, match="use_reentrant.*shared critic"):
        PPOTrainer(tiny_vlm_dir("llava"), args=cfg(tmp_path, "re", gradient_checkpointing=True,
                                                  gradient_checkpointing_kwargs={"use_reentrant": True}),
                   reward_funcs=[WordCount()], train_dataset=data)


def test_qlora_base_shared_by_policy_reference_and_critic(tiny_vlm_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from mmft.models.loading import load_vlm

    model = load_vlm(tiny_vlm_dir("llava"), load_in_4bit=True, bnb_4bit_compute_dtype="float32")
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit, "no nf4 layer in the quantised base"
    assert four_bit[0].weight.quant_type == "nf4"
    trainer = PPOTrainer(model, processing_class=_processor(tiny_vlm_dir("llava")),
                         args=cfg(tmp_path, "q"), reward_funcs=[WordCount()],
                         train_dataset=load_synthetic_captions("train", 8))
    history = trainer.train()
    assert history[0]["objective/kl"] == 0.0
    # One quantised base: each LoRA layer holds both adapters over the same Linear4bit.
    wrapped = [m for m in trainer.unwrapped.policy.modules() if hasattr(m, "lora_A") and "value" in m.lora_A]
    assert wrapped and all("policy" in m.lora_A for m in wrapped)
    assert all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in wrapped)
    assert torch.isfinite(torch.tensor(history[0]["loss/value"]))


def _processor(path):
    from mmft.models.loading import load_processor

    return load_processor(path)
