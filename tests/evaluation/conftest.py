"""Fixtures for `mmft eval` tests: a LoRA adapter on the tiny llava, a training log, one thread."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tests share two cores with other engineers' runs; one thread is also deterministic.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def llava_dir(tiny_vlm_dir) -> str:
    return tiny_vlm_dir("llava")


@pytest.fixture(scope="session")
def lora_adapter(llava_dir, tmp_path_factory) -> str:
    """A LoRA adapter on the tiny llava with lora_B perturbed (a fresh LoRA is a no-op,
    so without it 'before' and 'after' could not differ)."""
    from peft import LoraConfig, get_peft_model

    from mmft.models.loading import load_vlm

    path = tmp_path_factory.mktemp("adapter")
    model = get_peft_model(load_vlm(llava_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 1.0, generator=generator)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def noop_adapter(llava_dir, tmp_path_factory) -> str:
    """A freshly initialised LoRA adapter (lora_B = 0): the base model's outputs exactly."""
    from peft import LoraConfig, get_peft_model

    from mmft.models.loading import load_vlm

    path = tmp_path_factory.mktemp("noop-adapter")
    get_peft_model(load_vlm(llava_dir), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def reward_model_dir(llava_dir, tmp_path_factory) -> str:
    """An mmft reward model on the tiny llava: one training step on two preference pairs
    (enough to write every file `reward_models.learned.LearnedReward` reads)."""
    from datasets import Dataset, Features, List, Value
    from datasets import Image as ImageFeature

    from mmft.data.synthetic import CAPTION_PROMPT, make_scene, render_scene
    from mmft.reward_modeling import RewardModelConfig, RewardModelTrainer

    path = tmp_path_factory.mktemp("reward-model")
    scenes = [make_scene(i) for i in range(2)]
    message = List({"role": Value("string"), "content": Value("string")})
    pairs = Dataset.from_dict(
        {"image": [render_scene(s) for s in scenes], "prompt": [[{"role": "user", "content": CAPTION_PROMPT}]] * 2,
         "chosen": [[{"role": "assistant", "content": s.references[0]}] for s in scenes],
         "rejected": [[{"role": "assistant", "content": "noise noise"}] for _ in scenes]},
        features=Features({"image": ImageFeature(), "prompt": message, "chosen": message, "rejected": message}))
    trainer = RewardModelTrainer(llava_dir, train_dataset=pairs, args=RewardModelConfig(
        output_dir=str(path), max_steps=1, per_device_train_batch_size=2, logging_steps=1, seed=0))
    trainer.train()
    trainer.save_model()
    return str(path)


def write_log(path, entries: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(e) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def log_writer():
    """`write_log(path, entries)`: a log_history.jsonl from a list of dicts."""
    return write_log


@pytest.fixture()
def run_log(tmp_path) -> str:
    """A small PPO-like log_history.jsonl (eval/CIDEr every other iteration)."""
    entries = []
    for i in range(1, 7):
        e = {"iteration": i, "objective/scores": 0.1 * i, "objective/kl": 0.01 * i, "loss/value": 1.0 / i}
        if i % 2 == 0:
            e["eval/CIDEr"] = 0.2 + 0.05 * i
        entries.append(e)
    return write_log(tmp_path / "log_history.jsonl", entries)


def direct_scores(candidates, references, metrics=("Bleu", "METEOR", "ROUGE_L", "CIDEr")):
    """(corpus, per_image) straight from pycocoevalcap's scorers after its PTB tokenizer.

    Applies the one documented departure of `score_captions`: a candidate that is empty
    after tokenisation is scored as the word '<empty>' (pycocoevalcap asserts otherwise).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = {i: [{"caption": r} for r in refs] for i, refs in enumerate(references)}
    res = {i: [{"caption": c}] for i, c in enumerate(candidates)}
    tok = PTBTokenizer()
    gts, res = tok.tokenize(gts), tok.tokenize(res)
    res = {i: [c[0] if c[0].strip() else "<empty>"] for i, c in res.items()}
    corpus, per_image = {}, [{} for _ in candidates]
    scorers = []
    if "Bleu" in metrics:
        scorers.append((Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]))
    if "METEOR" in metrics:
        scorers.append((Meteor(), "METEOR"))
    if "ROUGE_L" in metrics:
        scorers.append((Rouge(), "ROUGE_L"))
    if "CIDEr" in metrics:
        scorers.append((Cider(), "CIDEr"))
    for scorer, name in scorers:
        score, scores = scorer.compute_score(gts, res, verbose=0) if isinstance(name, list) \
            else scorer.compute_score(gts, res)
        if isinstance(name, list):
            for n, s, ss in zip(name, score, scores):
                corpus[n] = s
                for row, v in zip(per_image, ss):
                    row[n] = v
        else:
            corpus[name] = score
            for row, v in zip(per_image, scores):
                row[name] = v
    return corpus, per_image


@pytest.fixture(scope="session")
def pycoco_direct():
    """`direct_scores(candidates, references, metrics)`: the pycocoevalcap oracle."""
    return direct_scores
