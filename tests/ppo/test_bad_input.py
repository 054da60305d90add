"""Bad input gets an error naming the file, sample or reward function, and what to do."""

import json
import os

import pytest

from mmft import PPOConfig, PPOTrainer
from mmft.data.errors import DataError
from mmft.data.synthetic import load_synthetic_captions
from mmft.models.loading import ModelLoadError, load_processor, load_vlm


class Constant:
    def __init__(self, value, name="constant", n=None):
        self.value, self.__name__, self.n = value, name, n

    def __call__(self, completions, **kwargs):
        return [self.value] * (self.n if self.n is not None else len(completions))


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "o"), per_device_train_batch_size=2, gradient_accumulation_steps=1,
                max_steps=1, num_ppo_epochs=1, max_new_tokens=4, eval_steps=0, save_steps=0)
    base.update(kw)
    return PPOConfig(**base)


@pytest.fixture(scope="module")
def data():
    return load_synthetic_captions("train", 4)


@pytest.mark.parametrize("reward, message", [
    (Constant(float("nan"), "nan_reward"), "nan_reward"),
    (Constant(float("inf"), "inf_reward"), "inf_reward"),
    (Constant(1.0, "short_reward", n=1), "short_reward"),
])
def test_bad_reward_values_name_the_reward(reward, message, tiny_vlm_dir, data, tmp_path):
    trainer = PPOTrainer(tiny_vlm_dir("llava"), args=cfg(tmp_path), reward_funcs=[reward], train_dataset=data)
    with pytest.raises((ValueError, TypeError), match=message):
        trainer.train()


def test_prompt_too_long_names_the_sample_or_is_skipped_and_counted(tiny_vlm_dir, data, tmp_path):
    trainer = PPOTrainer(tiny_vlm_dir("llava"), args=cfg(tmp_path, max_prompt_length=10),
                         reward_funcs=[Constant(1.0)], train_dataset=data)
    with pytest.raises(DataError, match=r"Sample \d+: the prompt is \d+ tokens after image expansion"):
        trainer.train()
    long_text = "Describe the image in one sentence. " + "Please be precise. " * 20
    rows = [dict(data[i]) for i in range(4)]
    rows[1]["prompt"] = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": long_text}]}]
    from datasets import Dataset

    mixed = Dataset.from_list(rows).cast(data.features)
    trainer = PPOTrainer(tiny_vlm_dir("llava"), args=cfg(tmp_path, max_prompt_length=60, skip_long_prompts=True,
                                                         per_device_train_batch_size=4, max_steps=2),
                         reward_funcs=[Constant(1.0)], train_dataset=mixed)
    trainer.train()
    assert trainer.skipped_prompts == [1, 1]  # row 1, drawn once per iteration, counted each time


def test_batch_sizes_that_do_not_divide_fail_at_config_time(tmp_path):
    with pytest.raises(ValueError, match="num_mini_batches=3"):
        PPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=4,
                  num_mini_batches=3)


def test_text_only_model_is_named(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path / "lm")
    with pytest.raises(ModelLoadError, match=r"lm'.*not a vision-language model"):
        load_vlm(tmp_path / "lm")


def test_processor_without_chat_template_or_images(tiny_vlm_dir, tmp_path):
    import shutil

    src = tiny_vlm_dir("llava")
    dst = tmp_path / "no-template"
    shutil.copytree(src, dst)
    for name in ("chat_template.jinja", "chat_template.json"):
        if (dst / name).exists():
            os.remove(dst / name)
    cfg_path = dst / "processor_config.json"
    conf = json.loads(cfg_path.read_text())
    conf.pop("chat_template", None)
    cfg_path.write_text(json.dumps(conf))
    tok_cfg = dst / "tokenizer_config.json"
    tconf = json.loads(tok_cfg.read_text())
    tconf.pop("chat_template", None)
    tok_cfg.write_text(json.dumps(tconf))
    with pytest.raises(ModelLoadError, match="no chat template"):
        load_processor(dst)


def test_dataset_without_prompt_and_unreadable_image(tiny_vlm_dir, data, tmp_path):
    with pytest.raises(ValueError, match="no 'prompt' column"):
        PPOTrainer(tiny_vlm_dir("llava"), args=cfg(tmp_path), reward_funcs=[Constant(1.0)],
                   train_dataset=data.remove_columns("prompt"))
    from mmft.data.collator import VLMCollator

    collator = VLMCollator(load_processor(tiny_vlm_dir("llava")))
    row = dict(data[0])
    row["image"] = "not-an-image.png"
    with pytest.raises(DataError, match="Sample 7: expected a PIL image"):
        collator([row], [7])
