"""ActorCritic's fast adapter switching (roles.py) gives exactly what peft's own
set_adapter / disable_adapter give, and never changes which adapters are trainable."""

import torch
from peft import get_peft_model

from mmft.data.collator import VLMCollator
from mmft.data.synthetic import load_synthetic_captions
from mmft.models.loading import load_processor, load_vlm
from mmft.models.roles import POLICY, REF, VALUE, ActorCritic
from mmft.rl_trainer import default_lora_config
from mmft.rollout import training_inputs


def _roles(path):
    torch.manual_seed(0)
    peft_model = get_peft_model(load_vlm(path), default_lora_config(), adapter_name=POLICY)
    peft_model.add_adapter(VALUE, default_lora_config())
    with torch.no_grad():  # non-zero LoRA B so the three roles really differ
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    roles = ActorCritic(peft_model)
    roles.activate(POLICY)
    return roles


def _flags(roles):
    return {n: p.requires_grad for n, p in roles.named_parameters()}


def test_fast_switching_matches_peft_and_keeps_trainable_flags(tiny_vlm_dir):
    path = tiny_vlm_dir("llava")
    roles = _roles(path)
    rows = [r for r in load_synthetic_captions("train", 3)]
    prompts = VLMCollator(load_processor(path))(rows, [0, 1, 2])
    ids = torch.randint(5, 50, (3, 4))
    inputs = training_inputs(prompts, ids, torch.ones(3, 4), roles.config.model_type)
    flags = _flags(roles)
    assert any(v for k, v in flags.items() if ".value." in k) and any(v for k, v in flags.items() if ".policy." in k)

    roles.eval()
    peft_calls = []
    set_adapter = roles.policy.set_adapter
    roles.policy.set_adapter = lambda *a, **k: (peft_calls.append(a), set_adapter(*a, **k))
    with torch.no_grad():
        fast = roles(inputs, prompts.prompt_length, 4, roles=(POLICY, REF, VALUE, POLICY))
    assert peft_calls == []  # every switch took the fast path
    del roles.policy.set_adapter
    with torch.no_grad():
        # peft's own switching, from scratch on an identical copy
        slow_model = _roles(path).policy
        slow_model.eval()
        slow_model.set_adapter(POLICY)
        policy = slow_model(**inputs, logits_to_keep=5, use_cache=False).logits[:, :-1]
        with slow_model.disable_adapter():
            ref = slow_model(**inputs, logits_to_keep=5, use_cache=False).logits[:, :-1]
    assert torch.allclose(fast["logits"], policy, atol=1e-5)
    assert torch.allclose(fast["ref_logits"], ref, atol=1e-5)
    assert not torch.allclose(fast["logits"], fast["ref_logits"], atol=1e-3)
    assert _flags(roles) == flags  # policy and value trainable, nothing else changed

    # Someone else switches with peft (as a mounted reward model does): the next activate
    # takes peft's full path and restores the flags peft changed.
    roles.policy.set_adapter(VALUE, inference_mode=True)
    assert _flags(roles) != flags
    roles.activate(POLICY)
    assert _flags(roles) == flags
    assert roles._lora_layers()[0].active_adapter in (POLICY, [POLICY])
