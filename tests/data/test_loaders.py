"""Real-data loaders: each source on a small fixture the test writes, its bad-data
cases (raise names file and line / index; skip reports), and the real Flickr8k token
file from ../shared (parsed without images)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mmft.data.errors import DataError, DataReport  # noqa: E402
from mmft.data.loaders import (  # noqa: E402
    VQA_PROMPT,
    caption_features,
    conversation,
    load_data,
    load_flickr,
    parse_flickr_tokens,
)
from mmft.data.synthetic import CAPTION_PROMPT  # noqa: E402

FLICKR8K = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "flickr8k" / "captions.txt"


def _png(path: Path, color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def _json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


def _image_prompt(row) -> str:
    return row["prompt"][0]["content"][1]["text"]


# ----------------------------------------------------------------------------- COCO


@pytest.fixture
def coco(tmp_path):
    images = tmp_path / "val2017"
    for i, color in ((1, (255, 0, 0)), (2, (0, 255, 0)), (3, (0, 0, 255))):
        _png(images / f"{i:012d}.jpg".replace(".jpg", ".png"), color)
    data = {
        "images": [{"id": i, "file_name": f"{i:012d}.png"} for i in (1, 2, 3)],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "a red square"},
            {"id": 11, "image_id": 2, "caption": "a green square "},
            {"id": 12, "image_id": 1, "caption": "red everywhere"},
            {"id": 13, "image_id": 3, "caption": "a blue square"},
        ],
    }
    return _json(tmp_path / "captions_val2017.json", data), images


def test_coco_rows_are_canonical(coco):
    ann, images = coco
    ds = load_data(f"coco:{ann}:{images}", "validation")
    assert ds.features == caption_features()
    assert ds["image_id"] == ["1", "2", "3"]
    assert ds["references"] == [["a red square", "red everywhere"], ["a green square"], ["a blue square"]]
    row = ds[0]
    # Same stored form as the synthetic task's prompt (Arrow gives the image part text=None).
    assert row["prompt"] == load_data("synthetic", num_samples=1)[0]["prompt"]
    assert row["prompt"][0]["content"][1] == conversation(CAPTION_PROMPT)[0]["content"][1]
    assert row["image"].getpixel((0, 0)) == (255, 0, 0)  # decoded lazily, on access


def test_coco_missing_image_raises_naming_index_and_file(coco):
    ann, images = coco
    (images / "000000000002.png").unlink()
    with pytest.raises(DataError) as err:
        load_data(f"coco:{ann}:{images}")
    msg = str(err.value)
    assert "1 x missing_image" in msg and "images[1] (id 2)" in msg and "000000000002.png" in msg
    assert "on_error='skip'" in msg  # says what to do


def test_coco_skip_reports_every_kind(coco, caplog):
    ann, images = coco
    data = json.loads(ann.read_text())
    data["annotations"] += [{"id": 14, "image_id": 3, "caption": "  "}, {"id": 15, "image_id": 99, "caption": "x"}]
    _json(ann, data)
    (images / "000000000002.png").unlink()
    with caplog.at_level(logging.WARNING, logger="mmft.data.loaders"):
        ds, report = load_data(f"coco:{ann}:{images}", on_error="skip", return_report=True)
    assert ds["image_id"] == ["1", "3"]
    assert ds["references"][1] == ["a blue square"]  # the empty caption is left out, the image kept
    assert report.counts() == {"unknown_image_id": 1, "empty_caption": 1, "missing_image": 1}
    assert "annotations[5] (id 15): image_id 99" in report.problems["unknown_image_id"][0]
    assert "annotations[4] (id 14)" in report.problems["empty_caption"][0]
    assert report.num_samples == 2
    assert "1 x missing_image" in caplog.text  # skipping is never silent


def test_coco_verify_images_catches_undecodable_files(coco):
    ann, images = coco
    (images / "000000000003.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    assert len(load_data(f"coco:{ann}:{images}")) == 3  # existence only, by default
    with pytest.raises(DataError, match=r"1 x unreadable_image[\s\S]*images\[2\] \(id 3\)"):
        load_data(f"coco:{ann}:{images}", verify_images=True)


def test_invalid_json_names_line(tmp_path):
    bad = tmp_path / "captions.json"
    bad.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DataError, match=r"captions.json line 2 column \d+: invalid JSON"):
        load_data(f"coco:{bad}:{tmp_path}")


# ----------------------------------------------------------------------------- Karpathy


@pytest.fixture
def karpathy(tmp_path):
    root = tmp_path / "coco"
    entries = []
    for i, split in enumerate(("train", "restval", "val", "test")):
        _png(root / "val2014" / f"COCO_val2014_{i:012d}.png")
        entries.append({"filepath": "val2014", "filename": f"COCO_val2014_{i:012d}.png", "imgid": i,
                        "split": split, "cocoid": 100 + i,
                        "sentences": [{"raw": f"caption {k} of {split}", "tokens": []} for k in range(2)]})
    return _json(tmp_path / "dataset_coco.json", {"images": entries, "dataset": "coco"}), root


def test_karpathy_splits_and_restval(karpathy):
    path, root = karpathy
    spec = f"karpathy:{path}:{root}"
    assert load_data(spec, "train")["image_id"] == ["100", "101"]  # restval folded into train
    assert load_data(spec, "train", restval_in_train=False)["image_id"] == ["100"]
    val = load_data(spec, "validation")
    assert val["image_id"] == ["102"] and val["references"] == [["caption 0 of val", "caption 1 of val"]]
    assert load_data(spec, "test")["image_id"] == ["103"]
    assert len(load_data(spec, "all")) == 4


def test_karpathy_flickr_style_ids(tmp_path):
    # dataset_flickr30k.json has no filepath and no cocoid: the id is the file stem.
    _png(tmp_path / "imgs" / "1000092795.jpg")
    data = {"images": [{"filename": "1000092795.jpg", "split": "test", "sentences": [{"raw": "two men"}]}]}
    ds = load_data(f"karpathy:{_json(tmp_path / 'dataset_flickr30k.json', data)}:{tmp_path / 'imgs'}", "test")
    assert ds["image_id"] == ["1000092795"] and ds["references"] == [["two men"]]


def test_karpathy_empty_sentence_names_position(karpathy):
    path, root = karpathy
    data = json.loads(path.read_text())
    data["images"][2]["sentences"][1]["raw"] = ""
    _json(path, data)
    with pytest.raises(DataError, match=r"images\[2\] \(COCO_val2014_000000000002.png\) sentences\[1\]"):
        load_data(f"karpathy:{path}:{root}", "val")


# ----------------------------------------------------------------------------- Flickr


@pytest.fixture
def flickr(tmp_path):
    images = tmp_path / "Flicker8k_Dataset"
    lines = []
    for name in ("a_1.jpg", "b_2.jpg", "c_3.jpg"):
        _png(images / name)
        lines += [f"{name}#{k}\t{name[0]} caption {k} ." for k in range(3)]
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text("\n".join(lines) + "\n")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("a_1.jpg\nc_3.jpg\n")
    (tmp_path / "Flickr_8k.devImages.txt").write_text("b_2.jpg\n")
    return token, images


def test_flickr_token_file_and_split_lists(flickr):
    token, images = flickr
    spec = f"flickr:{token}:{images}"
    train = load_data(spec, "train")
    assert train["image_id"] == ["a_1", "c_3"]
    assert train["references"][0] == ["a caption 0 .", "a caption 1 .", "a caption 2 ."]
    assert load_data(spec, "validation")["image_id"] == ["b_2"]
    assert len(load_data(spec, "all")) == 3
    with pytest.raises(DataError, match="Flickr_8k.testImages.txt does not exist"):
        load_data(spec, "test")
    custom = token.parent / "mine.txt"
    custom.write_text("b_2.jpg\nzzz.jpg\n")
    with pytest.raises(DataError, match=r"mine.txt line 2: zzz.jpg has no captions"):
        load_data(f"{spec}:{custom}", "test")


def test_flickr_malformed_lines(flickr):
    token, images = flickr
    lines = token.read_text().splitlines()
    lines[0] = lines[0].replace("\t", " ")  # the published Flickr8k defect
    lines[4] = "b_2.jpg caption without id number"
    token.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_data(f"flickr:{token}:{images}", "all")
    msg = str(err.value)
    assert "line 1: id and caption separated by a space, not a tab (pass lenient=True" in msg
    assert "line 5: no tab between id and caption" in msg

    ds, report = load_data(f"flickr:{token}:{images}", "all", lenient=True, on_error="skip", return_report=True)
    assert ds["references"][0][0] == "a caption 0 ."  # line 1 repaired, kept
    assert report.repaired == {"space_separator": [f"{token} line 1: a_1.jpg#0"]}
    assert report.counts() == {"malformed_line": 1}
    assert len(ds["references"][1]) == 2  # b_2 lost the malformed caption, nothing else


def test_flickr_missing_image(flickr):
    token, images = flickr
    (images / "b_2.jpg").unlink()
    with pytest.raises(DataError, match=r"image b_2.jpg \(line 4\): .*b_2.jpg"):
        load_data(f"flickr:{token}:{images}", "all")
    ds = load_flickr(token, images, "all", on_error="skip")
    assert ds["image_id"] == ["a_1", "c_3"]


@pytest.mark.skipif(not FLICKR8K.is_file(), reason="needs ../shared/data/flickr8k/captions.txt")
def test_real_flickr8k_token_file():
    spec = f"flickr:{FLICKR8K}:unused-images-dir"
    # Default: strict. The published file separates id and caption with a space on
    # lines 1, 6 and 12; the error names them and says how to accept them.
    with pytest.raises(DataError) as err:
        load_data(spec, "all", check_images=False)
    msg = str(err.value)
    assert "3 x malformed_line" in msg
    assert "captions.txt line 1: id and caption separated by a space" in msg and "lenient=True" in msg

    ds, report = load_data(spec, "all", check_images=False, lenient=True, return_report=True)
    assert len(ds) == 8092 and all(len(refs) == 5 for refs in ds["references"])
    assert ds["image_id"][0] == "1000268201_693b08cb0e"  # (ds[0] would decode a missing image)
    assert ds["references"][0][0] == "A child in a pink dress is climbing up a set of stairs in an entry way ."
    assert [loc.split(": ")[0].rsplit(" ", 1)[1] for loc in report.repaired["space_separator"]] == ["1", "6", "12"]
    assert not report.problems
    assert "2258277193_586949ec62.jpg" in " ".join(ds["image_id"])  # the odd `.jpg.1` name is an image too

    ds, report = load_data(spec, "all", check_images=False, on_error="skip", return_report=True)
    assert len(ds) == 8092 and sum(len(r) for r in ds["references"]) == 40460 - 3
    assert report.counts() == {"malformed_line": 3}


def test_parse_flickr_tokens_orders_captions_by_number(tmp_path):
    token = tmp_path / "t.txt"
    token.write_text("x.jpg#1\tsecond\nx.jpg#0\tfirst\nx.jpg#1\tdup\n")
    report = DataReport(source="t")
    parsed = parse_flickr_tokens(token, report)
    assert parsed["x.jpg"].texts == ["first", "second"]
    assert report.problems["malformed_line"] == [f"{token} line 3: caption #1 of x.jpg appears twice"]


# ----------------------------------------------------------------------------- hf: and imagefolder:


def test_hf_saved_dataset(tmp_path):
    from datasets import Dataset, DatasetDict, Features, List, Value
    from datasets import Image as ImageFeature

    feats = Features({"img": ImageFeature(), "captions": List(Value("string")), "uid": Value("int64")})
    rows = {"img": [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(3)],
            "captions": [["one", "uno"], ["two"], ["three", ""]], "uid": [7, 8, 9]}
    DatasetDict({"train": Dataset.from_dict(rows, features=feats)}).save_to_disk(tmp_path / "ds")
    spec = f"hf:{tmp_path / 'ds'}"
    kw = dict(image_column="img", id_column="uid")
    with pytest.raises(DataError, match=r"row 2 captions\[1\]"):
        load_data(spec, "train", **kw)
    ds, report = load_data(spec, "train", on_error="skip", return_report=True, **kw)
    assert ds.features == caption_features()
    assert ds["references"] == [["one", "uno"], ["two"], ["three"]]
    assert ds["image_id"] == ["7", "8", "9"] and ds[1]["image"].getpixel((0, 0)) == (40, 0, 0)
    assert report.counts() == {"empty_caption": 1}
    with pytest.raises(DataError, match=r"no split 'test'; it has \['train'\]"):
        load_data(spec, "test", **kw)
    with pytest.raises(DataError, match=r"no image column 'image'.*image_column="):
        load_data(spec, "train")


def test_hf_path_column_missing_file(tmp_path):
    from datasets import Dataset

    good = _png(tmp_path / "good.png")
    Dataset.from_dict({"image": [str(good), str(tmp_path / "gone.png")], "caption": ["a", "b"]}).save_to_disk(
        tmp_path / "ds")
    with pytest.raises(DataError, match=r"row 1: .*gone.png"):
        load_data(f"hf:{tmp_path / 'ds'}")
    ds = load_data(f"hf:{tmp_path / 'ds'}", on_error="skip", prompt="Caption this.")
    assert ds["references"] == [["a"]] and _image_prompt(ds[0]) == "Caption this."


def test_imagefolder(tmp_path):
    root = tmp_path / "folder"
    for split in ("train", "test"):
        _png(root / split / "x.png")
        _png(root / split / "y.png")
        (root / split / "metadata.jsonl").write_text(
            json.dumps({"file_name": "x.png", "text": f"x in {split}"}) + "\n"
            + json.dumps({"file_name": "y.png", "text": ["y", "why"]}) + "\n")
    ds = load_data(f"imagefolder:{root}", "test")
    assert ds["image_id"] == ["x.png", "y.png"] and ds["references"] == [["x in test"], ["y", "why"]]
    with pytest.raises(DataError, match="No metadata for split 'validation'"):
        load_data(f"imagefolder:{root}", "validation")
    flat = tmp_path / "flat"  # metadata.csv at the top: the whole folder is the train split
    _png(flat / "imgs" / "z.png")
    (flat / "metadata.csv").write_text("file_name,caption\nimgs/z.png,a zed\nimgs/gone.png,lost\n")
    with pytest.raises(DataError, match=r"metadata.csv line 3: .*gone.png"):
        load_data(f"imagefolder:{flat}", "train")
    assert load_data(f"imagefolder:{flat}", "all", on_error="skip")["references"] == [["a zed"]]
    (root / "train" / "metadata.jsonl").write_text('{"file_name": "x.png", "text": "ok"}\n{"file_name": \n')
    with pytest.raises(DataError, match=r"train/metadata.jsonl line 2: invalid JSON"):
        load_data(f"imagefolder:{root}", "train")


# ----------------------------------------------------------------------------- VQA


def test_vqa(tmp_path):
    images = tmp_path / "val2014"
    _png(images / "COCO_val2014_000000000042.jpg")
    questions = {"data_subtype": "val2014", "questions": [
        {"image_id": 42, "question": "What color is it?", "question_id": 420},
        {"image_id": 42, "question": "Is it square?", "question_id": 421},
        {"image_id": 43, "question": "Orphan?", "question_id": 430},
    ]}
    answers = ["red"] * 8 + ["dark red", "maroon"]
    annotations = {"annotations": [
        {"question_id": 420, "image_id": 42, "multiple_choice_answer": "red", "question_type": "what color",
         "answer_type": "other", "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(answers)]},
        {"question_id": 421, "image_id": 42, "multiple_choice_answer": "yes", "question_type": "is it",
         "answer_type": "yes/no", "answers": [{"answer": "yes", "answer_id": 1}]},
    ]}
    q, a = _json(tmp_path / "q.json", questions), _json(tmp_path / "a.json", annotations)
    with pytest.raises(DataError, match=r"no_annotation[\s\S]*questions\[2\] \(question_id 430\)"):
        load_data(f"vqa:{q}:{a}:{images}")
    ds, report = load_data(f"vqa:{q}:{a}:{images}", on_error="skip", return_report=True)
    assert report.counts() == {"no_annotation": 1}
    row = ds[0]
    assert row["answers"] == answers and row["multiple_choice_answer"] == "red"  # all 10, duplicates kept
    assert row["question_id"] == 420 and row["image_id"] == "42" and row["answer_type"] == "other"
    assert _image_prompt(row) == VQA_PROMPT.format(question="What color is it?")
    assert row["image"].size == (8, 8)
    ds = load_data(f"vqa:{q}:{a}:{images}", on_error="skip", prompt="Q: {question}", num_samples=2)
    assert _image_prompt(ds[1]) == "Q: Is it square?"


# ----------------------------------------------------------------------------- load_data


def test_specs_and_synthetic(coco, flickr):
    with pytest.raises(DataError, match="Unknown data spec 'cocoa:x'"):
        load_data("cocoa:x")
    with pytest.raises(DataError, match="does not have the form coco:ANNOTATIONS.json:IMAGES_DIR"):
        load_data("coco:only-one-part.json")
    with pytest.raises(ValueError, match="on_error must be one of"):
        load_data("synthetic", on_error="ignore")
    syn = load_data("synthetic", "val", num_samples=2)
    assert syn["image_id"] == ["1000000", "1000001"] and len(syn[0]["references"]) == 5

    # Every caption source has the same schema, so sources can be mixed.
    from datasets import concatenate_datasets

    (ann, images), (token, fimages) = coco, flickr
    mixed = concatenate_datasets([load_data(f"coco:{ann}:{images}"), load_data(f"flickr:{token}:{fimages}", "all")])
    assert len(mixed) == 6 and mixed.features == caption_features()


def test_hf_load_dataset_path_and_errors(tmp_path):
    # A plain local folder goes through datasets.load_dataset (its imagefolder builder).
    root = tmp_path / "raw"
    _png(root / "a.png", (1, 2, 3))
    _png(root / "b.png")
    (root / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "an a"}\n{"file_name": "b.png", "text": "a b"}\n')
    ds = load_data(f"hf:{root}", "train")
    assert sorted(ds["references"]) == [["a b"], ["an a"]] and ds.features == caption_features()
    assert {ds[i]["image"].getpixel((0, 0)) for i in range(2)} == {(1, 2, 3), (200, 30, 30)}
    with pytest.raises(DataError, match=r"Could not load Hugging Face dataset .*missing-dir"):
        load_data(f"hf:{tmp_path / 'missing-dir'}")
