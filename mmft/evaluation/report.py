"""Writing an evaluation to disk: results JSON, per-sample captions, Markdown report, HTML gallery.

Files under the output directory:
- `eval_results.json`: flat {metric: value} of the evaluated model (pycocoevalcap names
  plus `slices/...`, `bias/...`, `reward/...`, `CLIPScore`), the form `mmft push` reads;
- `eval_results_before.json`: the same for the comparison model ("before"), when given;
- `eval_info.json`: what was evaluated and how (model, adapter, data, decoding, notes);
- `captions.jsonl`: per sample `index`, `image_id`, `references`, `caption`, `scores`
  (and `before_caption`, `before_scores` with a comparison);
- `report.md`: metric tables (before / after / change), slices, notes, sample captions;
- `gallery.html`: one self-contained page, images inlined as base64 PNG thumbnails, every
  text HTML-escaped (captions are model output and may contain markup).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from mmft.evaluation.evaluate import EvalResult
from mmft.evaluation.metrics import ALL_METRICS

RESULTS_FILE = "eval_results.json"
BEFORE_RESULTS_FILE = "eval_results_before.json"
INFO_FILE = "eval_info.json"
CAPTIONS_FILE = "captions.jsonl"
REPORT_FILE = "report.md"
GALLERY_FILE = "gallery.html"
CURVES_FILE = "curves.png"
THUMBNAIL_SIZE = 160


def _json_number(v: float) -> float | None:
    # JSON has no NaN; an undefined ratio (no reference ever uses the word) is written as null.
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _json_scores(d: dict[str, float]) -> dict[str, float | None]:
    return {k: _json_number(v) for k, v in d.items()}


def headline_names(metrics: dict[str, float]) -> list[str]:
    """The main metrics, in display order: pycocoevalcap's, CLIPScore, then rewards."""
    names = [m for m in ALL_METRICS if m in metrics]
    names += [m for m in ("CLIPScore",) if m in metrics]
    names += sorted(m for m in metrics if m.startswith("reward/"))
    return names


def write_outputs(out_dir, result: EvalResult, dataset, *, before: EvalResult | None = None,
                  info: dict | None = None, gallery_size: int = 50, curves_png: str | None = None) -> dict[str, Path]:
    """Write every file of an evaluation into `out_dir`; returns {file kind: path}.

    dataset: the evaluated rows (for the gallery's images). before: the comparison
    model's result on the same rows. gallery_size: how many samples the gallery shows
    (its images are inlined). curves_png: a curves image already in `out_dir` to link.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if before is not None and [s["index"] for s in before.samples] != [s["index"] for s in result.samples]:
        raise ValueError("The before and after results cover different samples; evaluate both on the same rows.")
    paths = {"results": out / RESULTS_FILE, "info": out / INFO_FILE, "captions": out / CAPTIONS_FILE,
             "report": out / REPORT_FILE, "gallery": out / GALLERY_FILE}
    paths["results"].write_text(json.dumps(_json_scores(result.metrics), indent=2) + "\n", encoding="utf-8")
    if before is not None:
        paths["before_results"] = out / BEFORE_RESULTS_FILE
        paths["before_results"].write_text(json.dumps(_json_scores(before.metrics), indent=2) + "\n",
                                           encoding="utf-8")
    info = dict(info or {})
    info["notes"] = list(dict.fromkeys(result.notes + (before.notes if before else [])))
    paths["info"].write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    with open(paths["captions"], "w", encoding="utf-8") as f:
        for k, s in enumerate(result.samples):
            row = {**s, "scores": _json_scores(s["scores"])}
            if before is not None:
                row["before_caption"] = before.samples[k]["caption"]
                row["before_scores"] = _json_scores(before.samples[k]["scores"])
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    paths["report"].write_text(markdown_report(result, before, info, curves_png), encoding="utf-8")
    write_gallery(paths["gallery"], result, dataset, before=before, limit=gallery_size,
                  title=info.get("title", "mmft caption evaluation"))
    return paths


# ---------------------------------------------------------------------------------------
# Markdown


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.4f}"


def _md(text: str) -> str:
    # Captions are model output: escape HTML (Markdown renders it) and table pipes.
    return html.escape(text).replace("|", "\\|").replace("\n", " ") or "*(empty)*"


def markdown_report(result: EvalResult, before: EvalResult | None = None, info: dict | None = None,
                    curves_png: str | None = None, num_examples: int = 8) -> str:
    """The Markdown report of an evaluation (and its comparison, when given)."""
    info = info or {}
    m = result.metrics
    lines = ["# Caption evaluation", ""]
    for key in ("model", "adapter", "before", "data", "split", "decoding"):
        if info.get(key):
            lines.append(f"- **{key}**: `{info[key]}`")
    lines += [f"- **samples**: {int(m.get('num_samples', len(result.samples)))}", ""]
    lines += ["## Metrics", ""]
    names = headline_names(m)
    if before is not None:
        lines += ["| metric | before | after | change |", "|---|---:|---:|---:|"]
        for n in names:
            b, a = before.metrics.get(n), m.get(n)
            delta = a - b if a is not None and b is not None else None
            lines.append(f"| {n} | {_fmt(b)} | {_fmt(a)} | {'n/a' if delta is None else f'{delta:+.4f}'} |")
    else:
        lines += ["| metric | value |", "|---|---:|"] + [f"| {n} | {_fmt(m[n])} |" for n in names]
    lines.append("")
    slices = {k: v for k, v in m.items() if k.startswith("slices/")}
    if slices:
        lines += ["## Attribute accuracy (embedded task)", "",
                  "Fraction of scene objects whose attribute the caption names correctly; count: the "
                  "caption states the right number of objects; hallucinated shapes: shapes named that "
                  "are not in the scene (mean per caption).", ""]
        groups = sorted({k.split("/")[1] for k in slices if k.startswith("slices/objects=")})
        attrs = [k.split("/", 1)[1] for k in slices if k.count("/") == 1]
        header = ["slice", *attrs]
        lines += ["| " + " | ".join(header) + " |", "|---" + "|---:" * len(attrs) + "|"]
        rows = [("all", "slices/")] + [(g.replace("=", " = "), f"slices/{g}/") for g in groups]
        for label, prefix in rows:
            lines.append(f"| {label} | " + " | ".join(_fmt(m.get(prefix + a)) for a in attrs) + " |")
        if before is not None:
            lines.append("| all (before) | " + " | ".join(_fmt(before.metrics.get("slices/" + a)) for a in attrs)
                         + " |")
        lines.append("")
    bias_groups = sorted({k.split("/")[1] for k in m if k.startswith("bias/") and not k.startswith("bias/gender/")})
    if bias_groups:
        lines += ["## Caption bias", "",
                  "Fraction of captions using each word group, generated against the references "
                  "(ratio > 1: the model uses the group more often than the annotators).", "",
                  "| words | generated | references | ratio |" + (" generated (before) |" if before else ""),
                  "|---|---:|---:|---:|" + ("---:|" if before else "")]
        for g in bias_groups:
            row = (f"| {g} | {_fmt(m.get(f'bias/{g}/generated'))} | {_fmt(m.get(f'bias/{g}/reference'))} | "
                   f"{_fmt(m.get(f'bias/{g}/ratio'))} |")
            if before:
                row += f" {_fmt(before.metrics.get(f'bias/{g}/generated'))} |"
            lines.append(row)
        lines.append("")
        if "bias/gender/num_images" in m:
            lines += [f"Gender, over the {int(m['bias/gender/num_images'])} images whose references agree on one "
                      f"gender: wrong gender {_fmt(m.get('bias/gender/error_rate'))}, no gender "
                      f"{_fmt(m.get('bias/gender/neutral_rate'))}.", ""]
    notes = info.get("notes") or result.notes
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if curves_png:
        lines += ["## Training curves", "", f"![training curves]({curves_png})", ""]
    lines += ["## Examples", "", f"More in [{GALLERY_FILE}]({GALLERY_FILE}) and `{CAPTIONS_FILE}`.", ""]
    for k, s in enumerate(result.samples[:num_examples]):
        lines.append(f"**{_md(s['image_id'])}**")
        if before is not None:
            lines.append(f"- before: {_md(before.samples[k]['caption'])}")
            lines.append(f"- after: {_md(s['caption'])}")
        else:
            lines.append(f"- caption: {_md(s['caption'])}")
        lines.append(f"- reference: {_md(s['references'][0])}")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# HTML gallery

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; width: 100%; }
td, th { border-bottom: 1px solid #ddd; padding: 6px 8px; vertical-align: top; text-align: left; }
img { image-rendering: pixelated; border: 1px solid #ccc; }
.refs { color: #555; font-size: 90%; margin: 0; padding-left: 1.2em; }
.cap { font-weight: 600; }
.before { color: #8a4b00; }
.scores { font-family: monospace; font-size: 85%; color: #333; }
"""


def thumbnail_data_uri(image, size: int = THUMBNAIL_SIZE) -> str:
    """A PIL image as a `data:image/png;base64,...` URI, at most `size` pixels a side."""
    im = image.convert("RGB")
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _scores_html(scores: dict[str, float]) -> str:
    shown = [(k, v) for k, v in scores.items() if not k.startswith("attr/") or k == "attr/hallucinated_shapes"]
    attrs = [(k, v) for k, v in scores.items() if k.startswith("attr/") and k != "attr/hallucinated_shapes"]
    parts = [f"{html.escape(k)}={_fmt(v)}" for k, v in shown]
    if attrs:
        parts.append("accuracy: " + " ".join(f"{html.escape(k[5:])}={_fmt(v)}" for k, v in attrs))
    return "<br>".join(parts)


def write_gallery(path, result: EvalResult, dataset, *, before: EvalResult | None = None, limit: int = 50,
                  title: str = "mmft caption evaluation") -> None:
    """An HTML page with each sample's image, references, caption(s) and scores."""
    esc = html.escape
    rows = []
    for k, s in enumerate(result.samples[:limit]):
        try:
            image = dataset[s["index"]]["image"]
        except Exception as err:  # unreadable image: say which, keep the rest of the gallery
            raise ValueError(f"Sample {s['index']} (image id {s['image_id']}): cannot read its image for the "
                             f"gallery: {err}") from err
        img = f'<img src="{thumbnail_data_uri(image)}" alt="{esc(s["image_id"])}">' if image is not None else ""
        refs = "".join(f"<li>{esc(r)}</li>" for r in s["references"])
        if before is not None:
            b = before.samples[k]
            caps = (f'<div class="before">before: <span class="cap">{esc(b["caption"]) or "<i>(empty)</i>"}'
                    f'</span></div><div class="scores">{_scores_html(b["scores"])}</div>'
                    f'<div>after: <span class="cap">{esc(s["caption"]) or "<i>(empty)</i>"}</span></div>'
                    f'<div class="scores">{_scores_html(s["scores"])}</div>')
        else:
            caps = (f'<div class="cap">{esc(s["caption"]) or "<i>(empty)</i>"}</div>'
                    f'<div class="scores">{_scores_html(s["scores"])}</div>')
        rows.append(f"<tr><td>{img}<br><small>{esc(s['image_id'])}</small></td><td>{caps}</td>"
                    f'<td><ul class="refs">{refs}</ul></td></tr>')
    m = result.metrics
    summary = ", ".join(f"{esc(n)} {_fmt(m[n])}" for n in headline_names(m))
    shown = min(limit, len(result.samples))
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n<h1>{esc(title)}</h1>\n<p>{summary}</p>\n"
            f"<p>{shown} of {len(result.samples)} samples.</p>\n"
            "<table><tr><th>image</th><th>caption" + (" (before / after)" if before else "") +
            "</th><th>references</th></tr>\n" + "\n".join(rows) + "\n</table></body></html>\n")
    Path(path).write_text(page, encoding="utf-8")
