"""A sampled response never contains an image placeholder token: the training-layout
forward would count it as one more image ("Image features and image tokens do not
match"). Found by an SCST demo run that crashed at iteration 21."""

import pytest
import torch
from transformers import AutoConfig

from mmft import PPOConfig, PPOTrainer
from mmft.data.synthetic import load_synthetic_captions
from mmft.models.arch import multimodal_token_ids
from mmft.models.loading import load_processor
from mmft.rollout import generate


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "idefics3", "paligemma", "gemma3"])
def test_placeholder_ids_cover_every_image_token(arch, tiny_vlm_dir):
    path = tiny_vlm_dir(arch)
    config, processor = AutoConfig.from_pretrained(path), load_processor(path)
    ids = multimodal_token_ids(config, processor)
    image_id = getattr(config, "image_token_id", None)
    image_id = getattr(config, "image_token_index", None) if image_id is None else image_id
    assert image_id in ids
    assert processor.tokenizer.convert_tokens_to_ids(processor.image_token) in ids
    special = {processor.tokenizer.eos_token_id, processor.tokenizer.pad_token_id}
    assert not special & set(ids)  # the stop and pad tokens stay possible


def test_rollout_never_samples_the_image_token(tiny_vlm_dir, tmp_path):
    path = tiny_vlm_dir("llava")
    args = PPOConfig(output_dir=str(tmp_path / "o"), per_device_train_batch_size=4, gradient_accumulation_steps=1,
                     max_steps=1, num_ppo_epochs=1, max_new_tokens=6, eval_steps=0, save_steps=0)
    trainer = PPOTrainer(path, args=args, reward_funcs=[lambda completions, **kw: [1.0] * len(completions)],
                         train_dataset=load_synthetic_captions("train", 4))
    image_id = trainer.unwrapped.config.image_token_index
    lm_head = trainer.unwrapped.policy.get_output_embeddings()

    def favour_image_token(module, inputs, output):
        output[..., image_id] += 50.0
        return output

    lm_head.register_forward_hook(favour_image_token)
    prompts, _ = trainer.collate([trainer.train_dataset[i] for i in range(4)], list(range(4)))
    unguarded = generate(trainer.unwrapped.policy, prompts, max_new_tokens=6, stop_ids=trainer.stop_ids,
                         pad_id=trainer.pad_id)
    assert (unguarded.response_ids == image_id).any()  # the hook really makes it the favourite
    rollout = trainer.rollout(prompts)
    assert not (rollout.response_ids == image_id).any()
    history = trainer.train()  # the training-layout passes accept every sampled response
    assert torch.isfinite(torch.tensor(history[-1]["loss/policy"]))
