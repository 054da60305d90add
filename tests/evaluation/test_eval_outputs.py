"""Scoring API, gallery, report and training curves on hand-made data (no VLM)."""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from mmft.evaluation import metrics as metrics_module
from mmft.evaluation.curves import plot_curves
from mmft.evaluation.evaluate import EvalResult, score_generated
from mmft.evaluation.metrics import available_metrics, score_captions, spice_unavailable_reason
from mmft.evaluation.report import markdown_report, write_gallery, write_outputs


def _dataset(references, sizes=((300, 200), (40, 60), (64, 64), (80, 80))):
    """Real-data-like rows (no `objects`): image, prompt, references, image_id."""
    from datasets import Dataset, Features, List, Value
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(0)
    n = len(references)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes[:n]]
    prompt = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Describe."}]}]
    features = Features({"image": ImageFeature(), "references": List(Value("string")), "image_id": Value("string"),
                         "prompt": List({"role": Value("string"),
                                         "content": List({"type": Value("string"), "text": Value("string")})})})
    return Dataset.from_dict({"image": images, "references": references, "image_id": [f"img{i}" for i in range(n)],
                              "prompt": [prompt] * n}, features=features)


REFS = [["a man rides a brown horse on a beach", "a person riding a horse", "a man on a horse by the sea"],
        ["a woman walks her dog in the park", "a lady with a dog", "a woman and a small dog on the grass"],
        ["two children play football", "kids playing soccer on a field", "young boys kicking a ball"]]
CAPTIONS = ["a man riding a horse on the beach", "a man walking a dog in a park", "children playing soccer"]


class CountWords:
    """A TRL-contract reward that also records what it was given."""

    __name__ = "count_words"

    def __init__(self):
        self.kwargs = None

    def __call__(self, prompts=None, completions=None, **kwargs):
        self.kwargs = kwargs
        self.prompts = prompts
        return [float(len(c[0]["content"].split())) for c in completions]


def test_score_generated_matches_pycocoevalcap_and_reports_bias_and_rewards(pycoco_direct):
    dataset = _dataset(REFS)
    reward = CountWords()
    # METEOR is left out: its JVM takes 10-25 s to start on a shared machine; the CLI test
    # covers it, and reward_models' tests check pycocoevalcap's METEOR itself.
    metrics = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")
    result = score_generated(CAPTIONS, dataset, metrics=metrics, reward_funcs=[reward])
    corpus, per_image = pycoco_direct(CAPTIONS, REFS, metrics=("Bleu", "ROUGE_L", "CIDEr"))
    for name in metrics:
        assert result.metrics[name] == pytest.approx(corpus[name], rel=1e-9), name
        assert [s["scores"][name] for s in result.samples] == pytest.approx([p[name] for p in per_image], rel=1e-9)
    assert result.metrics["CIDEr"] > 0.5 and result.metrics["Bleu_1"] > 0.5  # real overlap, not zeros
    # TRL's contract: conversational completions, prompts, every other column by name.
    assert set(reward.kwargs) == {"image", "references", "image_id"} and len(reward.prompts) == 3
    assert result.metrics["reward/count_words"] == pytest.approx((8 + 8 + 3) / 3)
    assert [s["scores"]["reward/count_words"] for s in result.samples] == [8, 8, 3]
    # Real data (no `objects`): the bias report, not attribute slices. Caption 2 says "man" for a woman.
    assert result.metrics["bias/male/generated"] == pytest.approx(2 / 3)
    assert result.metrics["bias/gender/error_rate"] == pytest.approx(1 / 2)
    assert not any(k.startswith("slices/") for k in result.metrics)
    assert [s["image_id"] for s in result.samples] == ["img0", "img1", "img2"]
    with pytest.raises(ValueError, match="2 captions for a dataset of 3 rows"):
        score_generated(CAPTIONS[:2], dataset, metrics=("CIDEr",), tokenize="lower")


def _result(captions, references, cider):
    samples = [{"index": i, "image_id": f"img{i}", "references": r, "caption": c, "scores": {"CIDEr": s}}
               for i, (c, r, s) in enumerate(zip(captions, references, cider))]
    return EvalResult({"CIDEr": sum(cider) / len(cider), "num_samples": float(len(cider)),
                       "bias/male/ratio": float("nan")}, samples, ["SPICE skipped: no models"])


def test_gallery_escapes_captions_and_inlines_images(tmp_path):
    refs = [["a <b>bold</b> horse", "a horse"], ["a dog & a cat", "pets"], ["x", "y"]]
    dataset = _dataset(refs)
    after = _result(['<script>alert("pwned")</script> a horse', "a dog", ""], refs, [0.5, 1.0, 0.0])
    before = _result(["<img src=x onerror=alert(1)>", "a cat", "z"], refs, [0.1, 0.2, 0.3])
    path = tmp_path / "gallery.html"
    write_gallery(path, after, dataset, before=before)
    page = path.read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>" not in page and "onerror=alert(1)>" not in page
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; a horse" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "a dog &amp; a cat" in page
    assert page.count("before: <span") == 3 and page.count("after: <span") == 3
    uris = page.split('src="data:image/png;base64,')[1:]
    assert len(uris) == 3
    sizes = [Image.open(io.BytesIO(base64.b64decode(u.split('"')[0]))).size for u in uris]
    assert sizes == [(160, 107), (40, 60), (64, 64)]  # thumbnails keep the aspect ratio, small ones stay
    write_gallery(path, after, dataset, limit=1)
    assert path.read_text().count("data:image/png;base64,") == 1


def test_write_outputs_writes_json_safe_files(tmp_path):
    refs = [["a | pipe", "b"], ["c", "d"]]
    dataset = _dataset(refs)
    after = _result(["<script>x</script> | y", "c"], refs, [0.5, 1.5])
    before = _result(["a", "d"], refs, [0.0, 0.5])
    paths = write_outputs(tmp_path, after, dataset, before=before, info={"model": "m", "data": "d"})
    results = json.loads(paths["results"].read_text())
    assert results["CIDEr"] == 1.0 and results["bias/male/ratio"] is None  # NaN is not JSON: written as null
    assert json.loads(paths["before_results"].read_text())["CIDEr"] == 0.25
    rows = [json.loads(line) for line in paths["captions"].read_text().splitlines()]
    assert rows[0]["caption"] == "<script>x</script> | y" and rows[0]["before_caption"] == "a"
    assert rows[1]["before_scores"] == {"CIDEr": 0.5}
    report = paths["report"].read_text()
    assert "| CIDEr | 0.2500 | 1.0000 | +0.7500 |" in report
    assert "&lt;script&gt;x&lt;/script&gt; \\| y" in report and "<script>" not in report
    assert "SPICE skipped: no models" in report
    assert json.loads(paths["info"].read_text())["notes"] == ["SPICE skipped: no models"]
    assert "<script>" not in markdown_report(after)


def test_plot_curves_writes_a_png(run_log, log_writer, tmp_path):
    out = tmp_path / "curves.png"
    found = plot_curves(run_log, out)
    assert found == ["objective/scores", "objective/kl", "loss/value", "eval/CIDEr"]
    image = Image.open(out)
    assert image.format == "PNG" and image.size[0] > 400 and out.stat().st_size > 5000
    # An SCST-like log (no value loss, no eval): still drawn, the missing panels marked.
    scst = log_writer(tmp_path / "scst.jsonl", [{"iteration": i, "objective/scores": i / 10} for i in range(3)])
    assert plot_curves(scst, tmp_path / "scst.png") == ["objective/scores"]
    assert (tmp_path / "scst.png").stat().st_size > 0


def test_plot_curves_names_the_bad_line(tmp_path):
    log = tmp_path / "log_history.jsonl"
    log.write_text('{"iteration": 1, "objective/kl": 0.1}\nnot json\n')
    with pytest.raises(ValueError, match=r"line 2 is not valid JSON"):
        plot_curves(log, tmp_path / "c.png")
    log.write_text('{"objective/kl": 0.1}\n')
    with pytest.raises(ValueError, match=r"line 1 must be a JSON object with an 'iteration' key"):
        plot_curves(log, tmp_path / "c.png")
    log.write_text('{"iteration": 1, "lr": 0.1}\n')
    with pytest.raises(ValueError, match="none of the curve metrics"):
        plot_curves(tmp_path, tmp_path / "c.png")  # a run directory works too
    with pytest.raises(FileNotFoundError, match="No training log"):
        plot_curves(tmp_path / "missing", tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP with a word-level tokenizer, saved offline."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-clip")
    words = "a photo depicts man woman dog horse riding walking on the beach park children playing soccer".split()
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<bos>", eos_token="<eos>", model_max_length=16)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=8)
    CLIPModel(config).save_pretrained(path)
    return str(path)


def test_clipscore_is_reward_models_clip_s(tiny_clip):
    from reward_models import ClipScore

    dataset = _dataset(REFS)
    result = score_generated(CAPTIONS, dataset, metrics=("CIDEr",), tokenize="lower", clip_model=tiny_clip)
    direct = ClipScore(tiny_clip)(completions=CAPTIONS, image=dataset["image"])
    per_image = [s["scores"]["CLIPScore"] for s in result.samples]
    assert per_image == pytest.approx(direct)
    assert result.metrics["CLIPScore"] == pytest.approx(sum(direct) / 3)
    assert all(0 <= v <= 2.5 and math.isfinite(v) for v in per_image)


def test_empty_captions_score_zero_instead_of_crashing():
    corpus, per_image = score_captions(["", "a man riding a horse"], [REFS[1], REFS[0]], metrics=("CIDEr",),
                                       tokenize="lower")
    assert per_image[0]["CIDEr"] == 0 and per_image[1]["CIDEr"] > 0
    assert corpus["CIDEr"] == pytest.approx(per_image[1]["CIDEr"] / 2)
    with pytest.raises(ValueError, match="Sample 1: references must be a non-empty list"):
        score_captions(["a", "b"], [["a"], []], metrics=("CIDEr",), tokenize="lower")


def test_spice_is_detected_and_skipped_with_a_reason(monkeypatch):
    import os

    from pycocoevalcap.spice import spice

    lib = os.path.join(os.path.dirname(spice.__file__), "lib")
    installed = all(os.path.isfile(os.path.join(lib, j)) for j in metrics_module.SPICE_CORENLP_JARS)
    assert (spice_unavailable_reason() is None) == installed
    assert ("SPICE" in available_metrics()) == installed
    monkeypatch.setattr(metrics_module.shutil, "which", lambda name: None)
    assert "needs Java" in spice_unavailable_reason()
    with pytest.raises(RuntimeError, match="Leave SPICE out"):
        score_captions(["a"], [["a"]], metrics=("SPICE",), tokenize="lower")
    monkeypatch.undo()
    if not installed:  # the note in the report is checked on the CLI run (test_eval_cli.py)
        assert "stanford-corenlp-3.6.0-models.jar" in spice_unavailable_reason()
