"""Real-data loaders: every source becomes the canonical rows the recipes take.

One entry point, `load_data(spec, split)`, with a spec string per source:

| spec                                          | source                                                     |
|-----------------------------------------------|------------------------------------------------------------|
| `synthetic` / `synthetic-vqa`                 | the embedded task (`mmft.data.synthetic`)                  |
| `coco:ANNOTATIONS.json:IMAGES_DIR`            | COCO captions (`captions_train2017.json`) + image folder   |
| `karpathy:dataset_coco.json:IMAGES_ROOT`      | Karpathy split JSON (COCO, Flickr8k/30k); IMAGES_ROOT/filepath/filename |
| `flickr:TOKENFILE:IMAGES_DIR[:SPLITFILE]`     | Flickr8k/30k token file (`IMAGE.jpg#N<TAB>caption`)         |
| `hf:NAME_OR_PATH[:CONFIG]`                    | any `datasets.load_dataset` name or `save_to_disk` folder  |
| `imagefolder:DIR`                             | images + `metadata.jsonl`/`metadata.csv` (HF imagefolder layout) |
| `vqa:QUESTIONS.json:ANNOTATIONS.json:IMAGES_DIR` | VQAv2 questions + annotations + COCO images             |

Caption rows: `image` (datasets Image, decoded on access), `prompt` (TRL conversational:
one user turn with an image and the caption instruction), `references` (list[str]),
`image_id` (str, traces a row back to its source). VQA rows: `image`, `prompt` (the
question), `answers` (the 10 human answers, duplicates kept: VQA accuracy counts them),
`multiple_choice_answer`, `question`, `question_id`, `image_id`, `question_type`,
`answer_type`.

Images are stored as paths and decoded lazily, but every file's existence is checked
at load time (and its decoding too with `verify_images=True`). Problems are collected
in a `DataReport` naming file and line or sample index: `on_error="raise"` (default)
raises one `DataError` listing them, `on_error="skip"` leaves the bad samples out and
logs the report; nothing is dropped silently.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmft.data.errors import DataError, DataReport
from mmft.data.synthetic import CAPTION_PROMPT

logger = logging.getLogger(__name__)

VQA_PROMPT = "{question} Answer the question using a single word or phrase."
# Tried in order when `caption_column` is not given (hf: and imagefolder: sources).
CAPTION_COLUMNS = ("references", "captions", "caption", "sentences", "text")
ON_ERROR = ("raise", "skip")
# Split names accepted everywhere, mapped to each source's own names.
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val"}
# The Flickr8k release ships split lists next to the token file.
_FLICKR_SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
                       "test": "Flickr_8k.testImages.txt"}
# A caption id: FILE#N. Any file name is accepted after a tab, because the published
# Flickr8k file names one image `2258277193_586949ec62.jpg.1`; a space separator is only
# repaired (lenient=True) when the id is an unambiguous `*.jpg#N` (or .jpeg/.png).
_FLICKR_KEY = re.compile(r"^(?P<file>[^\s#]+)#(?P<n>\d+)$")
_FLICKR_STRICT_KEY = re.compile(r"^[^\s#]+\.(?:jpe?g|png)#\d+$", re.IGNORECASE)


def conversation(text: str) -> list[dict]:
    """TRL conversational prompt: one user turn holding an image then `text`."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def _prompt_feature():
    from datasets import List, Value

    return List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})})


def caption_features():
    """The `datasets.Features` of canonical caption rows (shared by every caption source)."""
    from datasets import Features, Image, List, Value

    return Features({"image": Image(), "prompt": _prompt_feature(), "references": List(Value("string")),
                     "image_id": Value("string")})


def vqa_features():
    """The `datasets.Features` of canonical VQA rows."""
    from datasets import Features, Image, List, Value

    return Features({"image": Image(), "prompt": _prompt_feature(), "answers": List(Value("string")),
                     "multiple_choice_answer": Value("string"), "question": Value("string"),
                     "question_id": Value("int64"), "image_id": Value("string"),
                     "question_type": Value("string"), "answer_type": Value("string")})


# ---------------------------------------------------------------------------------------
# Shared validation: every source lists _Sample objects, then _finalize checks and builds.


@dataclass
class _Sample:
    """One image with its texts (captions or answers) before validation.

    `location` says where the sample came from ("captions.json images[3] (id 9)"),
    `text_locations` the same for each text, so messages can point at the exact line.
    """

    image: str
    image_id: str
    location: str
    texts: list[str] = field(default_factory=list)
    text_locations: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class _ImageChecker:
    """Existence (one directory listing per folder, cached: COCO has 118k files) and,
    optionally, decoding of image files. Returns the kind of problem or None."""

    def __init__(self, verify: bool):
        self.verify = verify
        self._listings: dict[str, set[str]] = {}

    def exists(self, path: str) -> bool:
        folder, name = os.path.split(path)
        if folder not in self._listings:
            try:
                self._listings[folder] = set(os.listdir(folder or "."))
            except OSError:
                self._listings[folder] = set()
        return name in self._listings[folder] and os.path.isfile(path)

    def problem(self, path: str) -> str | None:
        if not self.exists(path):
            return "missing_image"
        if self.verify and not _decodes(path):
            return "unreadable_image"
        return None


def _decodes(path_or_bytes: str | bytes) -> bool:
    """Whether PIL can fully decode the image (verify() alone misses truncated data)."""
    import io

    from PIL import Image

    try:
        src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
        with Image.open(src) as img:
            img.load()
        return True
    except Exception:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError...)
        return False


def _check_policy(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}.")


def _close(report: DataReport, on_error: str) -> None:
    """Apply the error policy once a report is complete."""
    if on_error == "raise":
        report.raise_if_problems()
    elif report.problems:
        # Skipping is the user's explicit choice; still say what was left out.
        logger.warning("Skipped samples while loading data:\n%s", report.summary())


def _validate(samples: list[_Sample], report: DataReport, *, text_kind: str, check_images: bool,
              verify_images: bool) -> list[_Sample]:
    """Drop empty texts and samples with no text or a missing/unreadable image, reporting each."""
    checker = _ImageChecker(verify_images)
    kept = []
    for s in samples:
        texts = []
        for text, loc in zip(s.texts, s.text_locations):
            if isinstance(text, str) and text.strip():
                texts.append(text.strip())
            else:
                report.add(f"empty_{text_kind}", loc)
        if not texts:
            report.add(f"no_{text_kind}s", s.location)
            continue
        if check_images and (kind := checker.problem(s.image)):
            report.add(kind, f"{s.location}: {s.image}")
            continue
        s.texts = texts
        kept.append(s)
    report.num_samples = len(kept)
    return kept


def _caption_dataset(samples: list[_Sample], report: DataReport, *, prompt: str, on_error: str,
                     check_images: bool, verify_images: bool):
    from datasets import Dataset

    kept = _validate(samples, report, text_kind="caption", check_images=check_images,
                     verify_images=verify_images)
    _close(report, on_error)
    rows = {"image": [s.image for s in kept], "prompt": [conversation(prompt)] * len(kept),
            "references": [s.texts for s in kept], "image_id": [s.image_id for s in kept]}
    return Dataset.from_dict(rows, features=caption_features())


def _read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist: check the path in the data spec.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} line {err.lineno} column {err.colno}: invalid JSON ({err.msg}).") from err


def _require_list(data: Any, key: str, path: str | os.PathLike, what: str) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path} is not {what}: it has no {key!r} list at the top level.")
    return data[key]


# ---------------------------------------------------------------------------------------
# Sources


def load_coco_captions(annotations_file: str | os.PathLike, images_dir: str | os.PathLike, *,
                       num_samples: int | None = None, prompt: str = CAPTION_PROMPT, on_error: str = "raise",
                       check_images: bool = True, verify_images: bool = False, report: DataReport | None = None):
    """COCO captions (`captions_{train,val}2017.json`: `images` [{id, file_name}] and
    `annotations` [{id, image_id, caption}]) with the images in `images_dir`.

    The annotation file is the split. Rows follow the order of `images`; `image_id` is
    the COCO id as a string.
    """
    _check_policy(on_error)
    report = report or DataReport(source=f"COCO captions {annotations_file}")
    data = _read_json(annotations_file)
    images = _require_list(data, "images", annotations_file, "a COCO captions file")
    annotations = _require_list(data, "annotations", annotations_file, "a COCO captions file")
    by_id: dict[Any, _Sample] = {}
    for i, img in enumerate(images):
        if not isinstance(img, dict) or "id" not in img or not img.get("file_name"):
            raise DataError(f"{annotations_file} images[{i}]: expected an object with 'id' and 'file_name'.")
        by_id[img["id"]] = _Sample(image=str(Path(images_dir, img["file_name"]).absolute()),
                                   image_id=str(img["id"]),
                                   location=f"{annotations_file} images[{i}] (id {img['id']})")
    for j, ann in enumerate(annotations):
        loc = f"{annotations_file} annotations[{j}] (id {ann.get('id') if isinstance(ann, dict) else '?'})"
        sample = by_id.get(ann.get("image_id")) if isinstance(ann, dict) else None
        if sample is None:
            report.add("unknown_image_id", f"{loc}: image_id {ann.get('image_id') if isinstance(ann, dict) else '?'}")
            continue
        sample.texts.append(ann.get("caption"))
        sample.text_locations.append(loc)
    samples = list(by_id.values())[:num_samples]
    return _caption_dataset(samples, report, prompt=prompt, on_error=on_error, check_images=check_images,
                            verify_images=verify_images)


def load_karpathy(split_file: str | os.PathLike, images_root: str | os.PathLike, split: str = "train", *,
                  restval_in_train: bool = True, num_samples: int | None = None, prompt: str = CAPTION_PROMPT,
                  on_error: str = "raise", check_images: bool = True, verify_images: bool = False,
                  report: DataReport | None = None):
    """The Karpathy split (`dataset_coco.json`, `dataset_flickr8k.json`, `dataset_flickr30k.json`):
    `images` [{filepath?, filename, split, sentences [{raw}], cocoid?}].

    `split`: train, val (alias validation), test, restval or all. The 30,504 `restval`
    images are folded into train unless `restval_in_train=False` (the usual practice for
    captioning since Karpathy & Fei-Fei 2015). The image is IMAGES_ROOT/filepath/filename;
    `image_id` is the COCO id when present, else the file name without extension.
    """
    _check_policy(on_error)
    split = _SPLIT_ALIASES.get(split, split)
    if split not in ("train", "val", "test", "restval", "all"):
        raise DataError(f"Unknown Karpathy split {split!r}: use train, val, test, restval or all.")
    wanted = {split, "restval"} if split == "train" and restval_in_train else {split}
    report = report or DataReport(source=f"Karpathy split {split_file} [{split}]")
    images = _require_list(_read_json(split_file), "images", split_file, "a Karpathy split file")
    samples = []
    for i, img in enumerate(images):
        if not isinstance(img, dict) or not img.get("filename") or "split" not in img:
            raise DataError(f"{split_file} images[{i}]: expected an object with 'filename', 'split', 'sentences'.")
        if split != "all" and img["split"] not in wanted:
            continue
        loc = f"{split_file} images[{i}] ({img['filename']})"
        sentences = img.get("sentences") or []
        image_id = str(img["cocoid"]) if "cocoid" in img else Path(img["filename"]).stem
        samples.append(_Sample(
            image=str(Path(images_root, img.get("filepath", ""), img["filename"]).absolute()),
            image_id=image_id, location=loc,
            texts=[s.get("raw") if isinstance(s, dict) else None for s in sentences],
            text_locations=[f"{loc} sentences[{k}]" for k in range(len(sentences))]))
    samples = samples[:num_samples]
    return _caption_dataset(samples, report, prompt=prompt, on_error=on_error, check_images=check_images,
                            verify_images=verify_images)


def parse_flickr_tokens(token_file: str | os.PathLike, report: DataReport, *, lenient: bool = False
                        ) -> dict[str, _Sample]:
    """Parse a Flickr8k/30k token file (`IMAGE.jpg#N<TAB>caption` per line).

    Returns file name -> sample (captions ordered by N, images in order of first
    appearance); `image` is the bare file name, joined to the images folder by the caller.

    A line whose id and caption are separated by a space instead of a tab (the first
    line of the published Flickr8k file) is malformed by default; with `lenient=True` it
    is accepted when the id is exactly `IMAGE.jpg#N`, and reported as repaired.
    """
    by_file: dict[str, _Sample] = {}
    numbers: dict[str, list[int]] = {}
    with open(token_file, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue  # blank lines (a trailing newline) hold no sample
            loc = f"{token_file} line {lineno}"
            if "\t" in line:
                key, caption = line.split("\t", 1)
            else:
                key, _, caption = line.partition(" ")
                if not _FLICKR_STRICT_KEY.match(key):
                    report.add("malformed_line", f"{loc}: no tab between id and caption")
                    continue
                if not lenient:
                    report.add("malformed_line", f"{loc}: id and caption separated by a space, not a tab "
                                                 "(pass lenient=True to accept such lines)")
                    continue
                report.repair("space_separator", f"{loc}: {key}")
            m = _FLICKR_KEY.match(key.strip())
            if not m:
                report.add("malformed_line", f"{loc}: id {key!r} is not IMAGE.jpg#N")
                continue
            name, n = m["file"], int(m["n"])
            sample = by_file.setdefault(name, _Sample(image=name, image_id=Path(name).stem,
                                                      location=f"{token_file} image {name} (line {lineno})"))
            if n in numbers.setdefault(name, []):
                report.add("malformed_line", f"{loc}: caption #{n} of {name} appears twice")
                continue
            numbers[name].append(n)
            sample.texts.append(caption)
            sample.text_locations.append(loc)
    for name, sample in by_file.items():  # order captions by #N whatever the line order
        order = sorted(range(len(sample.texts)), key=numbers[name].__getitem__)
        sample.texts = [sample.texts[k] for k in order]
        sample.text_locations = [sample.text_locations[k] for k in order]
    return by_file


def load_flickr(token_file: str | os.PathLike, images_dir: str | os.PathLike, split: str = "all", *,
                split_file: str | os.PathLike | None = None, lenient: bool = False, num_samples: int | None = None,
                prompt: str = CAPTION_PROMPT, on_error: str = "raise", check_images: bool = True,
                verify_images: bool = False, report: DataReport | None = None):
    """Flickr8k/Flickr30k captions from a token file and an image folder.

    `split="all"` takes every image of the token file. Any other split needs a list of
    image file names, one per line: `split_file`, or for train/val/test the Flickr8k
    list next to the token file (`Flickr_8k.trainImages.txt`, `.devImages.txt`,
    `.testImages.txt`). For Flickr30k use the Karpathy split (`karpathy:` spec).
    `lenient`: see `parse_flickr_tokens`. `image_id` is the file name without extension.
    """
    _check_policy(on_error)
    report = report or DataReport(source=f"Flickr token file {token_file} [{split}]")
    if not Path(token_file).is_file():
        raise DataError(f"{token_file} does not exist: check the token file path in the data spec.")
    by_file = parse_flickr_tokens(token_file, report, lenient=lenient)
    if split == "all" and split_file is None:
        samples = list(by_file.values())
    else:
        if split_file is None:
            alias = _SPLIT_ALIASES.get(split, split)
            if alias not in _FLICKR_SPLIT_FILES:
                raise DataError(f"Flickr split {split!r}: pass split_file=... (a list of image names) or split='all'.")
            split_file = Path(token_file).parent / _FLICKR_SPLIT_FILES[alias]
            if not split_file.is_file():
                raise DataError(f"No split list for split {split!r}: {split_file} does not exist. Pass "
                                "split_file=... (one image file name per line) or use split='all'.")
        samples = []
        with open(split_file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not (name := line.strip()):
                    continue
                if name not in by_file:
                    report.add("no_captions", f"{split_file} line {lineno}: {name} has no captions in {token_file}")
                    continue
                samples.append(by_file[name])
    samples = samples[:num_samples]
    for s in samples:
        s.image = str(Path(images_dir, s.image).absolute())
    return _caption_dataset(samples, report, prompt=prompt, on_error=on_error, check_images=check_images,
                            verify_images=verify_images)


def _caption_column(columns: Sequence[str], caption_column: str | None, where: str) -> str:
    if caption_column is not None:
        if caption_column not in columns:
            raise DataError(f"{where} has no caption column {caption_column!r}; its columns are {list(columns)}.")
        return caption_column
    for name in CAPTION_COLUMNS:
        if name in columns:
            return name
    raise DataError(f"{where} has none of the caption columns {list(CAPTION_COLUMNS)}; its columns are "
                    f"{list(columns)}. Pass caption_column=... to name it.")


def _as_texts(value: Any) -> list:
    """A caption cell as a list: one string, a list of strings, or a list of {raw: ...}
    (Karpathy-style `sentences`)."""
    if isinstance(value, str) or value is None:
        return [value]
    return [v.get("raw") if isinstance(v, dict) else v for v in value]


def load_hf_captions(name_or_path: str, split: str = "train", *, config: str | None = None,
                     image_column: str = "image", caption_column: str | None = None, id_column: str | None = None,
                     num_samples: int | None = None, prompt: str = CAPTION_PROMPT, on_error: str = "raise",
                     check_images: bool = True, verify_images: bool = False, report: DataReport | None = None):
    """Any Hugging Face dataset with an image column and a caption column.

    `name_or_path`: a `save_to_disk` folder (Dataset or DatasetDict) or anything
    `datasets.load_dataset` takes (Hub name, local script/folder). The caption column
    holds a string or a list of strings; when `caption_column` is None the first of
    `CAPTION_COLUMNS` present is used. The image column is an Image feature or a
    string path. `image_id` comes from `id_column`, else the row index.
    """
    import datasets

    _check_policy(on_error)
    where = f"Hugging Face dataset {name_or_path}" + (f" ({config})" if config else "") + f" [{split}]"
    report = report or DataReport(source=where)
    try:
        if Path(name_or_path).is_dir() and any(Path(name_or_path, f).is_file()
                                               for f in ("dataset_dict.json", "state.json")):
            ds = datasets.load_from_disk(name_or_path)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{where}: no split {split!r}; it has {list(ds)}.")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name_or_path, config, split=split)
    except DataError:
        raise
    except Exception as err:  # datasets raises many types; keep its message, add which spec failed
        raise DataError(f"Could not load {where}: {type(err).__name__}: {err}") from err
    if image_column not in ds.column_names:
        raise DataError(f"{where} has no image column {image_column!r}; its columns are {ds.column_names}. "
                        "Pass image_column=... to name it.")
    caption_column = _caption_column(ds.column_names, caption_column, where)
    if id_column is not None and id_column not in ds.column_names:
        raise DataError(f"{where} has no id column {id_column!r}; its columns are {ds.column_names}.")
    if num_samples is not None:
        ds = ds.select(range(min(num_samples, len(ds))))

    captions = ds[caption_column]
    ids = [str(v) for v in ds[id_column]] if id_column else [str(i) for i in range(len(ds))]
    # Image references without decoding (Image(decode=False) gives {bytes, path}), read in
    # batches so embedded image bytes never all sit in memory at once.
    image_refs = ds.select_columns([image_column])
    if isinstance(ds.features[image_column], datasets.Image):
        image_refs = image_refs.cast_column(image_column, datasets.Image(decode=False))
    images = (img for batch in image_refs.iter(batch_size=256) for img in batch[image_column]) if check_images \
        else iter([None] * len(ds))
    checker = _ImageChecker(verify_images)
    kept, references = [], []
    for i, (image, cell) in enumerate(zip(images, captions)):
        loc = f"{where} row {i}"
        texts = []
        for k, text in enumerate(_as_texts(cell)):
            if isinstance(text, str) and text.strip():
                texts.append(text.strip())
            else:
                report.add("empty_caption", f"{loc} {caption_column}[{k}]")
        if not texts:
            report.add("no_captions", loc)
            continue
        if check_images:
            path, data = (image.get("path"), image.get("bytes")) if isinstance(image, dict) else (image, None)
            if data is None and (not path or not checker.exists(path)):
                report.add("missing_image", f"{loc}: {path}")
                continue
            if verify_images and not _decodes(data if data is not None else path):
                report.add("unreadable_image", f"{loc}: {path or 'embedded bytes'}")
                continue
        kept.append(i)
        references.append(texts)
    report.num_samples = len(kept)
    _close(report, on_error)

    # Keep the image column as stored (no copy of the image bytes) and add the rest.
    out = ds.select(kept).select_columns([image_column])
    if image_column != "image":
        out = out.rename_column(image_column, "image")
    out = out.add_column("prompt", [conversation(prompt)] * len(kept))
    out = out.add_column("references", references)
    out = out.add_column("image_id", [ids[i] for i in kept])
    return out.cast(caption_features())


def _read_metadata(path: Path, report: DataReport) -> list[tuple[int, dict]]:
    """(line number, row) pairs of an imagefolder `metadata.jsonl` or `metadata.csv`."""
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix == ".jsonl":
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    report.add("malformed_line", f"{path} line {lineno}: invalid JSON ({err.msg})")
                    continue
                if not isinstance(row, dict):
                    report.add("malformed_line", f"{path} line {lineno}: not a JSON object")
                    continue
                rows.append((lineno, row))
        else:
            reader = csv.DictReader(f)
            for row in reader:
                rows.append((reader.line_num, row))
    return rows


def load_imagefolder(folder: str | os.PathLike, split: str = "train", *, caption_column: str | None = None,
                     id_column: str | None = None, num_samples: int | None = None, prompt: str = CAPTION_PROMPT,
                     on_error: str = "raise", check_images: bool = True, verify_images: bool = False,
                     report: DataReport | None = None):
    """An image folder in the Hugging Face imagefolder layout: `metadata.jsonl` (or
    `metadata.csv`) with a `file_name` column (path relative to the metadata file) and a
    caption column (a string or a list of strings).

    Splits: `FOLDER/<split>/metadata.jsonl` when split folders exist; otherwise the
    top-level metadata is the whole data set, served for split `train` or `all`.
    `image_id` is `id_column` when given, else `file_name`.
    """
    _check_policy(on_error)
    folder = Path(folder)
    bases = [folder / split] + ([folder] if split in ("train", "all") else [])
    meta = next((b / n for b in bases for n in ("metadata.jsonl", "metadata.csv") if (b / n).is_file()), None)
    if meta is None:
        raise DataError(f"No metadata for split {split!r} in {folder}: expected {folder / split}/metadata.jsonl "
                        f"(or .csv), or {folder}/metadata.jsonl for split 'train'/'all'.")
    report = report or DataReport(source=f"image folder {meta} [{split}]")
    rows = _read_metadata(meta, report)
    columns = list(rows[0][1]) if rows else []
    if rows and "file_name" not in columns:
        raise DataError(f"{meta} has no 'file_name' column (the image path relative to it); columns: {columns}.")
    caption_column = _caption_column(columns, caption_column, str(meta)) if rows else caption_column
    samples = []
    for lineno, row in rows[:num_samples]:
        loc = f"{meta} line {lineno}"
        if not row.get("file_name"):
            report.add("malformed_line", f"{loc}: empty file_name")
            continue
        texts = _as_texts(row.get(caption_column))
        samples.append(_Sample(image=str((meta.parent / row["file_name"]).absolute()),
                               image_id=str(row[id_column]) if id_column else row["file_name"], location=loc,
                               texts=texts, text_locations=[f"{loc} {caption_column}[{k}]" for k in range(len(texts))]))
    return _caption_dataset(samples, report, prompt=prompt, on_error=on_error, check_images=check_images,
                            verify_images=verify_images)


def load_vqa(questions_file: str | os.PathLike, annotations_file: str | os.PathLike,
             images_dir: str | os.PathLike, *, prompt_template: str = VQA_PROMPT, num_samples: int | None = None,
             on_error: str = "raise", check_images: bool = True, verify_images: bool = False,
             report: DataReport | None = None):
    """VQAv2 (`v2_OpenEnded_mscoco_train2014_questions.json` + `v2_mscoco_train2014_annotations.json`)
    with the COCO images in `images_dir`.

    The image of a question is `COCO_<data_subtype>_<image_id:012d>.jpg` (the 2014 names,
    `data_subtype` from the questions file) or `<image_id:012d>.jpg` (the 2017 names),
    whichever exists. `prompt_template` is formatted with `question`.
    """
    from datasets import Dataset

    _check_policy(on_error)
    report = report or DataReport(source=f"VQA {questions_file}")
    qdata = _read_json(questions_file)
    questions = _require_list(qdata, "questions", questions_file, "a VQA questions file")
    annotations = _require_list(_read_json(annotations_file), "annotations", annotations_file,
                                "a VQA annotations file")
    subtype = qdata.get("data_subtype")
    by_qid = {}
    for j, ann in enumerate(annotations):
        if isinstance(ann, dict) and "question_id" in ann:
            by_qid[ann["question_id"]] = (j, ann)
    checker = _ImageChecker(verify=False)  # decoding is checked once, in _validate
    samples = []
    for i, q in enumerate(questions[:num_samples] if num_samples is not None else questions):
        loc = f"{questions_file} questions[{i}]"
        if not isinstance(q, dict) or not {"question_id", "image_id", "question"} <= set(q):
            report.add("malformed_line", f"{loc}: expected an object with question_id, image_id, question")
            continue
        loc += f" (question_id {q['question_id']})"
        if q["question_id"] not in by_qid:
            report.add("no_annotation", loc)
            continue
        j, ann = by_qid[q["question_id"]]
        names = ([f"COCO_{subtype}_{int(q['image_id']):012d}.jpg"] if subtype else []) + [f"{int(q['image_id']):012d}.jpg"]
        paths = [str(Path(images_dir, n).absolute()) for n in names]
        image = next((p for p in paths if checker.exists(p)), paths[0])
        answers = ann.get("answers") or []
        samples.append(_Sample(
            image=image, image_id=str(q["image_id"]), location=loc,
            texts=[a.get("answer") if isinstance(a, dict) else a for a in answers],
            text_locations=[f"{annotations_file} annotations[{j}] answers[{k}]" for k in range(len(answers))],
            extra={"question": q["question"], "question_id": int(q["question_id"]),
                   "multiple_choice_answer": ann.get("multiple_choice_answer") or "",
                   "question_type": ann.get("question_type") or "", "answer_type": ann.get("answer_type") or ""}))
    kept = _validate(samples, report, text_kind="answer", check_images=check_images, verify_images=verify_images)
    _close(report, on_error)
    rows: dict[str, list] = {"image": [s.image for s in kept],
                             "prompt": [conversation(prompt_template.format(question=s.extra["question"])) for s in kept],
                             "answers": [s.texts for s in kept], "image_id": [s.image_id for s in kept]}
    for key in ("multiple_choice_answer", "question", "question_id", "question_type", "answer_type"):
        rows[key] = [s.extra[key] for s in kept]
    return Dataset.from_dict(rows, features=vqa_features())


def _load_synthetic(kind: str, split: str, num_samples: int | None, prompt: str | None, report: DataReport):
    from mmft.data.synthetic import load_synthetic_captions, load_synthetic_vqa

    split = {"val": "validation", "dev": "validation"}.get(split, split)
    ds = (load_synthetic_captions if kind == "synthetic" else load_synthetic_vqa)(split, num_samples)
    if prompt is not None and kind == "synthetic":
        ds = ds.remove_columns("prompt").add_column("prompt", [conversation(prompt)] * len(ds))
    ds = ds.add_column("image_id", [str(i) for i in ds["scene_id"]])
    report.num_samples = len(ds)
    return ds


# ---------------------------------------------------------------------------------------
# The entry point

_SPEC_ARITY = {"coco": (2, 2), "karpathy": (2, 2), "flickr": (2, 3), "hf": (1, 2), "imagefolder": (1, 1),
               "vqa": (3, 3), "synthetic": (0, 0), "synthetic-vqa": (0, 0)}
_SPEC_FORMS = {"coco": "coco:ANNOTATIONS.json:IMAGES_DIR", "karpathy": "karpathy:dataset_coco.json:IMAGES_ROOT",
               "flickr": "flickr:TOKENFILE:IMAGES_DIR[:SPLITFILE]", "hf": "hf:NAME_OR_PATH[:CONFIG]",
               "imagefolder": "imagefolder:DIR", "vqa": "vqa:QUESTIONS.json:ANNOTATIONS.json:IMAGES_DIR",
               "synthetic": "synthetic", "synthetic-vqa": "synthetic-vqa"}


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """Split a data spec into its kind and its parts, checking the number of parts."""
    kind, *parts = spec.split(":")
    if kind not in _SPEC_ARITY:
        raise DataError(f"Unknown data spec {spec!r}: it must start with one of {', '.join(_SPEC_ARITY)} "
                        f"(forms: {'; '.join(_SPEC_FORMS.values())}).")
    low, high = _SPEC_ARITY[kind]
    if not low <= len(parts) <= high or not all(parts[:low]):
        raise DataError(f"Data spec {spec!r} does not have the form {_SPEC_FORMS[kind]} "
                        "(paths cannot contain ':').")
    return kind, parts


def load_data(spec: str, split: str = "train", *, num_samples: int | None = None, prompt: str | None = None,
              on_error: str = "raise", check_images: bool = True, verify_images: bool = False,
              return_report: bool = False, **options):
    """Load the canonical rows of any supported source (see the module docstring for specs).

    Args:
        spec: e.g. `synthetic`, `coco:captions_val2017.json:val2017`, `hf:user/name:config`.
        split: train / validation (alias val, dev) / test; the COCO and VQA files are
            already one split, the `hf:` and `imagefolder:` sources pass it through.
        num_samples: keep the first N samples (of the source's order), before validation.
        prompt: caption instruction (default `CAPTION_PROMPT`); for `vqa:` a template
            with `{question}` (default `VQA_PROMPT`).
        on_error: "raise" (a `DataError` listing every problem) or "skip" (leave bad
            samples out, log the report).
        check_images: check that every image file exists (turn off to parse captions
            without the images, e.g. the Flickr8k token file alone).
        verify_images: also decode every image (slow on large sets).
        return_report: return `(dataset, DataReport)` instead of the dataset.
        **options: source-specific keywords: `lenient`, `split_file` (flickr);
            `restval_in_train` (karpathy); `config`, `image_column`, `caption_column`,
            `id_column` (hf; imagefolder takes the last two).
    """
    _check_policy(on_error)
    kind, parts = parse_spec(spec)
    report = DataReport(source=spec + f" [{split}]")
    common = dict(num_samples=num_samples, on_error=on_error, check_images=check_images,
                  verify_images=verify_images, report=report, **options)
    if kind != "vqa" and prompt is not None:
        common["prompt"] = prompt
    if kind in ("synthetic", "synthetic-vqa"):
        if options:
            raise TypeError(f"The {kind} source takes no options, got {sorted(options)}.")
        ds = _load_synthetic(kind, split, num_samples, prompt, report)
    elif kind == "coco":
        ds = load_coco_captions(parts[0], parts[1], **common)
    elif kind == "karpathy":
        ds = load_karpathy(parts[0], parts[1], split, **common)
    elif kind == "flickr":
        if len(parts) == 3:
            common["split_file"] = parts[2]
        ds = load_flickr(parts[0], parts[1], split, **common)
    elif kind == "hf":
        if len(parts) == 2:
            common["config"] = parts[1]
        ds = load_hf_captions(parts[0], split, **common)
    elif kind == "imagefolder":
        ds = load_imagefolder(parts[0], split, **common)
    else:  # vqa
        if prompt is not None:
            common["prompt_template"] = prompt
        ds = load_vqa(parts[0], parts[1], parts[2], **common)
    return (ds, report) if return_report else ds
