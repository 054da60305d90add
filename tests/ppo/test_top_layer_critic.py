"""`critic_layers`: the shared critic's adapter on the top decoder layers only, run on
their own from the policy forward's detached input to the first of them."""

import json
import os

import pytest
import torch

from mmft import PPOConfig, PPOTrainer
from mmft.data.synthetic import load_synthetic_captions
from mmft.models.arch import decoder_stack, inner_model
from mmft.models.roles import POLICY, REF, VALUE
from mmft.testing import ARCHS
from tests.ppo.test_fused_pass import config, sampled_batch, state
from tests.ppo.test_ppo_archs import WordCount, _dataset_for


def _perturb_critic(model) -> None:
    """Non-zero value adapter and head, so the values depend on the critic's layers."""
    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if f".{VALUE}." in name or name.startswith("value_head"):
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_top_layer_values_equal_a_full_forward_of_the_critic_adapter(arch, tiny_vlm_dir, tmp_path):
    """The values equal those of one ordinary forward with the value adapter active: it
    exists in the top layer only, so the layers below run as the reference (the base),
    on every zoo architecture and batches mixing one-image, two-image and text-only
    prompts; from the trunk of this call's reference pass, from a cached trunk, and
    with no other role in the call. The value loss leaves the policy without gradient."""
    cfg = PPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_new_tokens=4, critic_layers=1)
    trainer = PPOTrainer(tiny_vlm_dir(arch), args=cfg, reward_funcs=[WordCount()], train_dataset=_dataset_for(arch))
    model = trainer.unwrapped
    layers, _ = decoder_stack(model.policy)
    top = {id(m) for m in layers[-1].modules()}
    with_value = [m for m in model._lora_layers() if VALUE in m.lora_A]
    assert with_value and all(id(m) in top for m in with_value)
    _perturb_critic(model)
    rollout, inputs, P, R = sampled_batch(trainer)
    with torch.no_grad():
        old = model(inputs, P, R, 1.0, (POLICY, REF, VALUE))  # the separate old pass
        alone = model(inputs, P, R, 1.0, (VALUE,))["values"]
        model.activate(VALUE)
        hidden = inner_model(model.policy)(**inputs, use_cache=False).last_hidden_state
        expected = model.value_head(hidden[:, P - 1: P + R - 1]).float()
        model.activate(POLICY)
    new = model(inputs, P, R, 1.0, (POLICY, VALUE), trunk=old["trunk"])  # an update, from the cached trunk
    mask = rollout.response_mask.bool()
    assert expected[mask].abs().max() > 1e-3
    for values in (old["values"], alone, new["values"]):
        torch.testing.assert_close(values[mask], expected[mask], atol=1e-5, rtol=1e-5)
    (new["values"][mask] ** 2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is None or g.abs().max() == 0 for n, g in grads.items() if f".{POLICY}." in n)
    assert any(g is not None and g.abs().max() > 0 for n, g in grads.items() if f".{VALUE}." in n)


@pytest.fixture(scope="module")
def data():
    return load_synthetic_captions("train", 16)


def test_top_layer_critic_trains_saves_and_resumes(tiny_vlm_dir, data, tmp_path):
    path = tiny_vlm_dir("llava")
    full = PPOTrainer(path, args=config(PPOConfig, tmp_path, "full", critic_layers=1, save_steps=1),
                      reward_funcs=[WordCount()], train_dataset=data)
    start = state(full)
    full.train()
    end = state(full)
    changed = {k for k in end if not torch.equal(end[k], start[k])}
    assert any(f"lora_B.{VALUE}" in k for k in changed) and any(f"lora_B.{POLICY}" in k for k in changed)
    assert any(k.startswith("value_head") for k in changed)
    assert full.log_history[-1]["val/explained_variance"] != 0.0
    ckpt = os.path.join(tmp_path, "full", "checkpoint-1")
    targets = json.load(open(os.path.join(ckpt, "critic", "adapter_config.json")))["target_modules"]
    assert targets and all(".layers.1." in t for t in targets)  # the top one of two layers
    resumed = PPOTrainer(path, args=config(PPOConfig, tmp_path, "resumed", critic_layers=1),
                         reward_funcs=[WordCount()], train_dataset=data)
    resumed.train(resume_from_checkpoint=ckpt)
    assert max((end[k] - v).abs().max().item() for k, v in state(resumed).items()) == 0.0


def test_critic_layers_values_and_errors(tiny_vlm_dir, data, tmp_path):
    """'half' (the default) is the top half of the decoder layers, 'all' the adapter over
    the whole model; a number from the command line arrives as a string."""
    assert PPOConfig(output_dir="unused").critic_layers == "half"
    assert PPOConfig(output_dir="unused", critic_layers="2").critic_layers == 2
    path = tiny_vlm_dir("llava")  # 2 decoder layers
    half = PPOTrainer(path, args=config(PPOConfig, tmp_path, "half"), reward_funcs=[WordCount()], train_dataset=data)
    assert half.unwrapped.critic_layers == 1
    whole = PPOTrainer(path, args=config(PPOConfig, tmp_path, "all", critic_layers="all"),
                       reward_funcs=[WordCount()], train_dataset=data)
    assert whole.unwrapped.critic_layers is None
    assert any(".layers.0." in n for n, _ in whole.unwrapped.named_parameters() if f".{VALUE}." in n)
    with pytest.raises(ValueError, match="needs critic='shared'"):
        PPOConfig(output_dir="unused", critic="policy", critic_layers=1)
    for bad in (0, "most", 1.5):
        with pytest.raises(ValueError, match="'half', 'all' or a number of layers >= 1"):
            PPOConfig(output_dir="unused", critic_layers=bad)
    with pytest.raises(ValueError, match="has 2 decoder layers.*use 1 to 2"):
        PPOTrainer(path, args=config(PPOConfig, tmp_path, "big", critic_layers=3),
                   reward_funcs=[WordCount()], train_dataset=data)
    with pytest.raises(ValueError, match="DeepStack.*use 1 to 1"):
        PPOTrainer(tiny_vlm_dir("qwen3_vl"), args=config(PPOConfig, tmp_path, "deep", critic_layers=2),
                   reward_funcs=[WordCount()], train_dataset=_dataset_for("qwen3_vl"))


def test_top_layer_critic_below_is_the_sft_reference(tiny_vlm_dir, tmp_path):
    """Starting from an SFT adapter, the layers below the critic's are the frozen 'ref'
    adapter: the values equal a forward with 'ref' active below and 'value' on top."""
    from peft import get_peft_model

    from mmft.models.loading import load_vlm
    from mmft.rl_trainer import default_lora_config

    sft = get_peft_model(load_vlm(tiny_vlm_dir("llava")), default_lora_config(r=4, alpha=8))
    with torch.no_grad():
        for name, p in sft.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn_like(p))
    sft.save_pretrained(tmp_path / "sft")
    cfg = PPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_new_tokens=4)
    trainer = PPOTrainer(tiny_vlm_dir("llava"), args=cfg, reward_funcs=[WordCount()],
                         train_dataset=_dataset_for("llava"), sft_adapter=str(tmp_path / "sft"))
    model = trainer.unwrapped
    _perturb_critic(model)
    rollout, inputs, P, R = sampled_batch(trainer)
    layers, _ = decoder_stack(model.policy)
    top = {id(m) for m in layers[-1].modules()}
    with torch.no_grad():
        values = model(inputs, P, R, 1.0, (POLICY, REF, VALUE))["values"]
        for m in model._lora_layers():
            m._active_adapter = [VALUE] if id(m) in top else [REF]
        model._switched_to = None
        hidden = inner_model(model.policy)(**inputs, use_cache=False).last_hidden_state
        expected = model.value_head(hidden[:, P - 1: P + R - 1]).float()
        model.activate(VALUE)  # the base below (no 'value' adapter there), for contrast
        on_base = inner_model(model.policy)(**inputs, use_cache=False).last_hidden_state
        model.activate(POLICY)
    mask = rollout.response_mask.bool()
    torch.testing.assert_close(values[mask], expected[mask], atol=1e-5, rtol=1e-5)
    assert (model.value_head(on_base[:, P - 1: P + R - 1]).float() - expected)[mask].abs().max() > 1e-4
