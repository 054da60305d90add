"""`mmft eval` end to end on the tiny llava: files, numbers against pycocoevalcap, comparisons."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from mmft.cli import main
from mmft.evaluation.metrics import spice_unavailable_reason

N = 6
OFFICIAL = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]


def _eval(*extra: str) -> int:
    return main(["eval", "--data", "synthetic", "--split", "test", "--num-samples", str(N), "--max-new-tokens", "8",
                 "--batch-size", str(N), "--no-progress", *extra])


def _captions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "captions.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def base_run(llava_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-base")
    run = tmp_path_factory.mktemp("run")
    (run / "log_history.jsonl").write_text(
        "\n".join(json.dumps({"iteration": i, "objective/scores": 0.1 * i, "objective/kl": 0.02 * i,
                              "loss/value": 1.0 / i, "eval/CIDEr": 0.3 + 0.1 * i}) for i in range(1, 5)) + "\n")
    assert _eval("--model", llava_dir, "--output", str(out), "--run-dir", str(run)) == 0
    return out


def test_results_are_pycocoevalcap_numbers_on_the_written_captions(base_run, pycoco_direct):
    results = json.loads((base_run / "eval_results.json").read_text())
    expected = OFFICIAL + ([] if spice_unavailable_reason() else ["SPICE"])
    assert [k for k in results if "/" not in k and k != "num_samples"] == expected
    assert results["num_samples"] == N
    assert all(isinstance(v, float) and math.isfinite(v) for k, v in results.items()
               if not k.endswith("/ratio")), results
    rows = _captions(base_run)
    assert [r["index"] for r in rows] == list(range(N))
    assert [r["image_id"] for r in rows] == [str(2_000_000 + i) for i in range(N)]
    # METEOR against the oracle is checked on captions with real overlap in test_eval_outputs.py
    # (a random model scores 0 and the METEOR JVM is the slowest part); here it is only in range.
    assert 0.0 <= results["METEOR"] <= 1.0
    corpus, per_image = pycoco_direct([r["caption"] for r in rows], [r["references"] for r in rows],
                                      metrics=("Bleu", "ROUGE_L", "CIDEr"))
    for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert results[name] == pytest.approx(corpus[name], rel=1e-9, abs=1e-12), name
        for row, direct in zip(rows, per_image):
            assert row["scores"][name] == pytest.approx(direct[name], rel=1e-9, abs=1e-12), (name, row["index"])
    # CIDEr-D of the set is the mean of the per-image scores, which the slices rely on.
    assert results["CIDEr"] == pytest.approx(sum(r["scores"]["CIDEr"] for r in rows) / N)


def test_slices_cover_every_scene_size(base_run):
    results = json.loads((base_run / "eval_results.json").read_text())
    rows = _captions(base_run)
    for attr in ("shape", "color", "size", "position", "count"):
        assert 0.0 <= results[f"slices/{attr}_accuracy"] <= 1.0
        assert results[f"slices/{attr}_accuracy"] == pytest.approx(sum(r["scores"][f"attr/{attr}"] for r in rows) / N)
    sizes = [int(k.split("/")[1].split("=")[1]) for k in results if k.endswith("/num_samples") and "objects=" in k]
    assert sum(results[f"slices/objects={n}/num_samples"] for n in sizes) == N
    # Slice means of per-image CIDEr-D average back to the corpus CIDEr-D.
    weighted = sum(results[f"slices/objects={n}/CIDEr"] * results[f"slices/objects={n}/num_samples"] for n in sizes)
    assert weighted / N == pytest.approx(results["CIDEr"], abs=1e-12)
    assert not any(k.startswith("bias/") for k in results)  # the embedded task gets attribute slices instead


def test_report_gallery_and_curves_are_written(base_run):
    report = (base_run / "report.md").read_text()
    assert "| CIDEr |" in report and "## Attribute accuracy" in report and "curves.png" in report
    if spice_unavailable_reason():
        assert "SPICE skipped" in report
        assert any("SPICE skipped" in n for n in json.loads((base_run / "eval_info.json").read_text())["notes"])
    gallery = (base_run / "gallery.html").read_text()
    uris = gallery.split('src="data:image/png;base64,')[1:]
    assert len(uris) == N
    thumb = Image.open(io.BytesIO(base64.b64decode(uris[0].split('"')[0])))
    assert thumb.format == "PNG" and thumb.size == (64, 64)  # the 64 px synthetic image, under the 160 px limit
    png = (base_run / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size[0] > 400


def test_adapter_comparison_shows_before_and_after(llava_dir, lora_adapter, base_run, tmp_path):
    out = tmp_path / "eval-adapter"
    assert _eval("--model", llava_dir, "--adapter", lora_adapter, "--before", "--metrics", "CIDEr",
                 "--output", str(out)) == 0
    rows = _captions(out)
    base_rows = _captions(base_run)
    # "before" is the base model with the adapter disabled: the captions of the plain base run.
    assert [r["before_caption"] for r in rows] == [r["caption"] for r in base_rows]
    assert [r["caption"] for r in rows] != [r["caption"] for r in base_rows]  # the perturbed LoRA changes them
    assert all("CIDEr" in r["scores"] and "CIDEr" in r["before_scores"] for r in rows)
    after = json.loads((out / "eval_results.json").read_text())
    before = json.loads((out / "eval_results_before.json").read_text())
    assert "Bleu_4" not in after and math.isfinite(after["CIDEr"]) and math.isfinite(before["CIDEr"])
    assert after["CIDEr"] == pytest.approx(sum(r["scores"]["CIDEr"] for r in rows) / N)
    gallery = (out / "gallery.html").read_text()
    assert gallery.count("before: <span") == N and gallery.count("after: <span") == N
    report = (out / "report.md").read_text()
    assert "| metric | before | after | change |" in report
    assert "- before:" in report and "- after:" in report


def test_compare_adapter_evaluates_the_other_adapter_as_before(llava_dir, lora_adapter, noop_adapter, base_run,
                                                                tmp_path):
    out = tmp_path / "eval-compare"
    assert _eval("--model", llava_dir, "--adapter", lora_adapter, "--compare-adapter", noop_adapter,
                 "--metrics", "CIDEr", "--output", str(out)) == 0
    rows = _captions(out)
    # The no-op adapter reproduces the base captions; the switch back gives the perturbed adapter's.
    assert [r["before_caption"] for r in rows] == [r["caption"] for r in _captions(base_run)]
    assert [r["caption"] for r in rows] != [r["before_caption"] for r in rows]
    info = json.loads((out / "eval_info.json").read_text())
    assert info["adapter"] == lora_adapter and info["before"] == noop_adapter


def test_reward_model_scores_are_learned_reward_on_the_captions(llava_dir, reward_model_dir, tmp_path):
    from mmft.data.loaders import load_data
    from reward_models.learned import LearnedReward

    out = tmp_path / "eval-rm"
    assert _eval("--model", llava_dir, "--reward-model", reward_model_dir, "--metrics", "CIDEr",
                 "--output", str(out)) == 0
    rows = _captions(out)
    results = json.loads((out / "eval_results.json").read_text())
    dataset = load_data("synthetic", "test", num_samples=N)
    direct = LearnedReward(reward_model_dir)(
        prompts=dataset["prompt"], completions=[[{"role": "assistant", "content": r["caption"]}] for r in rows],
        image=dataset["image"])
    assert [r["scores"]["reward/learned"] for r in rows] == pytest.approx(direct, abs=1e-5)
    assert results["reward/learned"] == pytest.approx(sum(direct) / N, abs=1e-5)
    assert "| reward/learned |" in (out / "report.md").read_text()


def test_bad_invocations_fail_before_loading_anything(llava_dir, tmp_path, capsys):
    assert _eval("--model", llava_dir, "--before", "--output", str(tmp_path / "o")) == 1
    assert "--before and --compare-adapter compare against --adapter" in capsys.readouterr().err
    missing = tmp_path / "no-adapter"
    assert _eval("--model", llava_dir, "--adapter", str(missing), "--output", str(tmp_path / "o")) == 1
    assert f"--adapter {missing}: no adapter_config.json" in capsys.readouterr().err
    assert _eval("--model", llava_dir, "--run-dir", str(tmp_path), "--output", str(tmp_path / "o")) == 1
    assert "no log_history.jsonl" in capsys.readouterr().err
    (tmp_path / "log_history.jsonl").write_text('{"iteration": 1, "lr": 0.001}\n')
    assert _eval("--model", llava_dir, "--run-dir", str(tmp_path), "--output", str(tmp_path / "o")) == 1
    assert "none of the curve metrics" in capsys.readouterr().err
    assert _eval("--model", llava_dir, "--reward-model", str(missing), "--output", str(tmp_path / "o")) == 1
    assert f"--reward-model {missing}: {missing} is not an mmft reward model" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: only one comparison at a time
        _eval("--model", llava_dir, "--adapter", "a", "--before", "--compare-adapter", "b", "--output", "o")


def test_generate_captions_api_greedy_matches_cli_and_beam_search_runs(llava_dir, base_run):
    from mmft.data.loaders import load_data
    from mmft.evaluation import generate_captions
    from mmft.models.loading import load_processor, load_vlm

    model, processor = load_vlm(llava_dir), load_processor(llava_dir)
    dataset = load_data("synthetic", "test", num_samples=N)
    model.train()
    greedy = generate_captions(model, processor, dataset, batch_size=N, max_new_tokens=8, progress=False)
    assert greedy == [r["caption"] for r in _captions(base_run)]
    assert model.training  # the caller's mode is restored
    beams = [generate_captions(model, processor, dataset.select(range(2)), batch_size=2, max_new_tokens=8,
                               num_beams=3, progress=False) for _ in range(2)]
    assert beams[0] == beams[1] and len(beams[0]) == 2 and all(isinstance(c, str) for c in beams[0])
    with pytest.raises(ValueError, match="num_beams"):
        generate_captions(model, processor, dataset, num_beams=0)
