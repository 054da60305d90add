"""Export: labels made over HTTP become a `datasets` preference dataset that TRL's DPO takes."""

from __future__ import annotations

import io
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from datasets import Image as ImageFeature
from datasets import load_from_disk
from PIL import Image

from mmft.cli import build_parser
from mmft.label import storage
from mmft.label.export import ExportError, export_preferences
from mmft.label.pairs import load_pairs
from mmft.label.storage import add_labeler

from .conftest import write_pairs


def _label_directly(db: Path, pairs: Path, labeler: str, choices: dict[str, str]) -> None:
    """Store labels through the storage API (the HTTP path is covered by the first test)."""
    add_labeler(db, labeler)
    with closing(storage.connect(db)) as conn:
        storage.sync_pairs(conn, load_pairs(pairs), pairs)
        for pair_id, choice in choices.items():
            storage.record_label(conn, labeler, pair_id, choice)


def _tiny_vision_processor():
    """A Qwen2-VL processor with a 20-word vocabulary, built offline (no Hub download).

    Only the real processor class and TRL's real collator matter here: they expand the
    image placeholder into patch tokens and check that image features match those tokens.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    special = ["<pad>", "<unk>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
    words = "user assistant : describe image caption a b of 0 1 2 3 .".split()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(special + words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    template = (
        "{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<|vision_start|> <|image_pad|> <|vision_end|> {% else %}{{ c['text'] }} {% endif %}"
        "{% endfor %}\n{% endfor %}"
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<pad>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
            "video_token": "<|video_pad|>",
        },
    )
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=template,
    )


def test_export_writes_a_dpo_vision_dataset_and_reports_what_it_left_out(tmp_path, start_server, capsys):
    pairs = write_pairs(tmp_path, 6)
    db = tmp_path / "labels.sqlite"
    tokens = {name: add_labeler(db, name) for name in ("ann", "bob")}
    server = start_server(pairs, db)
    labels = {
        "ann": {"p000": "A", "p001": "B", "p002": "tie", "p003": "both_bad", "p004": "A"},
        "bob": {"p000": "B", "p005": "A"},  # p000: ann and bob disagree, both rows kept
    }
    for name, choices in labels.items():
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tokens[name]}"}) as http:
            for pair_id, choice in choices.items():
                assert http.post("/api/label", json={"pair_id": pair_id, "choice": choice}).status_code == 200
    server.stop()

    output = tmp_path / "prefs"
    args = build_parser().parse_args(["label", "export", "--db", str(db), "--output", str(output)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote 5 preference pairs to {output}" in printed
    assert "not exported: 1 tie, 1 both_bad" in printed
    assert "labels by choice: A=3, B=2, tie=1, both_bad=1" in printed
    assert "1 pair(s) have labelers disagreeing" in printed

    dataset = load_from_disk(str(output))
    assert dataset.column_names == ["image", "prompt", "chosen", "rejected", "labeler", "time", "pair_id"]
    assert isinstance(dataset.features["image"], ImageFeature)
    rows = {(row["labeler"], row["pair_id"]): row for row in dataset}
    assert set(rows) == {("ann", "p000"), ("ann", "p001"), ("ann", "p004"), ("bob", "p000"), ("bob", "p005")}
    ann_b = rows[("ann", "p001")]
    assert ann_b["prompt"] == [{"role": "user", "content": "Describe image 1."}]
    assert ann_b["chosen"] == [{"role": "assistant", "content": "caption B of image 1"}]
    assert ann_b["rejected"] == [{"role": "assistant", "content": "caption A of image 1"}]
    assert rows[("ann", "p000")]["chosen"][0]["content"] == "caption A of image 0"
    assert rows[("bob", "p000")]["chosen"][0]["content"] == "caption B of image 0"
    assert ann_b["time"].endswith("+00:00")
    # The images are embedded: the dataset still loads after the originals are gone.
    expected_pixels = Image.open(tmp_path / "images" / "1.png").convert("RGB").tobytes()
    for png in (tmp_path / "images").iterdir():
        png.unlink()
    reloaded = load_from_disk(str(output))
    image = reloaded[[r["pair_id"] for r in reloaded].index("p001")]["image"]
    assert image.size == (16, 16) and image.convert("RGB").tobytes() == expected_pixels

    # TRL 1.16's DPO vision path: the trainer keeps these columns and calls this collator on them.
    from trl.data_utils import is_conversational
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference, DPOTrainer

    example = reloaded[0]
    assert is_conversational(example)
    # DPOTrainer keeps only its "signature" columns of a vision dataset; ours must all survive.
    trainer_state = SimpleNamespace(_signature_columns=None, _is_vision_dataset=True)
    DPOTrainer._set_signature_columns_if_needed(trainer_state)
    assert {"image", "prompt", "chosen", "rejected"} <= set(trainer_state._signature_columns)
    batch = DataCollatorForVisionPreference(_tiny_vision_processor())(
        [dict(row) for row in reloaded.select(range(2))]
    )
    assert batch["input_ids"].shape[0] == 4  # 2 examples x (chosen, rejected)
    assert batch["pixel_values"].shape[0] > 0 and batch["image_grid_thw"].shape == (4, 3)
    assert batch["completion_mask"].sum() > 0


def test_export_with_pairs_file_restricts_and_relocates(tmp_path):
    pairs = write_pairs(tmp_path / "old", 3)
    db = tmp_path / "labels.sqlite"
    _label_directly(db, pairs, "ann", {"p000": "A", "p001": "A", "p002": "A"})
    # Images move; a pairs file beside them lists two of the three pairs.
    moved = tmp_path / "new"
    (tmp_path / "old").rename(moved)
    (moved / "pairs.jsonl").write_text("".join((moved / "pairs.jsonl").read_text().splitlines(True)[:2]))

    with pytest.raises(ExportError, match="cannot be read"):
        export_preferences(db, tmp_path / "fails")
    summary = export_preferences(db, tmp_path / "out", pairs_path=moved / "pairs.jsonl")
    assert summary.rows == 2 and summary.not_in_pairs_file == 1
    assert "1 label(s) on pairs missing from the --pairs file" in summary.format()
    assert sorted(load_from_disk(str(tmp_path / "out"))["pair_id"]) == ["p000", "p001"]

    with pytest.raises(ExportError, match="exists and is not empty"):
        export_preferences(db, tmp_path / "out", pairs_path=moved / "pairs.jsonl")
    write_pairs(moved, 2, overrides={0: {"caption_a": "edited after labelling"}})
    with pytest.raises(ExportError, match=r"pairs.jsonl:1: pair 'p000' has a different prompt or captions"):
        export_preferences(db, tmp_path / "out2", pairs_path=moved / "pairs.jsonl")


def test_exported_image_bytes_are_the_original_file(tmp_path):
    """The export stores the file's bytes (no re-encoding), named by the original file name."""
    pairs = write_pairs(tmp_path, 1)
    db = tmp_path / "labels.sqlite"
    _label_directly(db, pairs, "ann", {"p000": "B"})
    export_preferences(db, tmp_path / "out")
    raw = load_from_disk(str(tmp_path / "out")).cast_column("image", ImageFeature(decode=False))[0]["image"]
    assert raw["bytes"] == (tmp_path / "images" / "0.png").read_bytes()
    assert raw["path"] == "0.png"
    assert Image.open(io.BytesIO(raw["bytes"])).format == "PNG"


def test_export_without_preferences_writes_an_empty_loadable_dataset(tmp_path):
    pairs = write_pairs(tmp_path, 2)
    db = tmp_path / "labels.sqlite"
    _label_directly(db, pairs, "ann", {"p000": "tie", "p001": "both_bad"})
    summary = export_preferences(db, tmp_path / "out")
    assert summary.rows == 0 and summary.choices == {"A": 0, "B": 0, "tie": 1, "both_bad": 1}
    assert "warning: the dataset is empty" in summary.format()
    dataset = load_from_disk(str(tmp_path / "out"))
    assert len(dataset) == 0 and dataset.column_names[:4] == ["image", "prompt", "chosen", "rejected"]
