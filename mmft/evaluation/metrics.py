"""Official caption metrics through pycocoevalcap (the reference implementation).

Evaluation reports pycocoevalcap's numbers: PTB tokenisation in Java, then BLEU-1..4,
METEOR, ROUGE-L, CIDEr-D (document frequencies over the evaluated set, as the official
metric defines them) and SPICE when its models are installed. Training rewards live in
`reward_models` and use corpus-level document frequencies instead (ppo_spec.md).

`score_captions` also returns each image's own scores (for the gallery and the
per-slice means); `caption_metrics` is the corpus numbers alone. CLIPScore comes from
`reward_models.ClipScore` (see `mmft.evaluation.evaluate`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

ALL_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
# pycocoevalcap downloads these on first use (`get_stanford_models`); evaluation machines are
# often offline, so SPICE runs only when they are already there.
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def spice_unavailable_reason() -> str | None:
    """Why SPICE cannot run here (missing Java or Stanford CoreNLP models), or None when it can."""
    if shutil.which("java") is None:
        return "SPICE needs Java 8+ on PATH (`java` was not found)."
    from pycocoevalcap.spice import spice

    lib = os.path.join(os.path.dirname(spice.__file__), "lib")
    missing = [j for j in SPICE_CORENLP_JARS if not os.path.isfile(os.path.join(lib, j))]
    if missing:
        return (f"SPICE needs the Stanford CoreNLP 3.6.0 jars in {lib} (missing: {', '.join(missing)}); "
                "run `python -m pycocoevalcap.spice.get_stanford_models` once with internet access.")
    return None


def available_metrics() -> tuple[str, ...]:
    """Every metric of `ALL_METRICS` this machine can compute (SPICE only with its models)."""
    return ALL_METRICS if spice_unavailable_reason() is None else ALL_METRICS[:-1]


def _check_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError("pycocoevalcap's PTB tokenizer and METEOR run in Java, and `java` is not on PATH: "
                           "install a JRE (e.g. apt-get install openjdk-17-jre-headless) or pass tokenize='lower' "
                           "and leave METEOR/SPICE out.")


def score_captions(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Sequence[str] = ("Bleu_4", "CIDEr"),
    tokenize: str = "ptb",
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Corpus and per-image metrics of `candidates` [N] against `references` [N][k].

    Returns `(corpus, per_image)`: `corpus` maps pycocoevalcap names to the corpus score,
    `per_image` [N] maps the same names to each image's own score (sentence-level BLEU
    for the Bleu_n entries; CIDEr-D, ROUGE-L, METEOR and SPICE corpus scores are the mean
    of these).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists.")
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"Unknown metric(s) {sorted(unknown)}; known: {ALL_METRICS}.")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"Sample {i}: references must be a non-empty list of strings, got {refs!r}.")
    if "SPICE" in metrics and (reason := spice_unavailable_reason()):
        raise RuntimeError(reason + " Leave SPICE out of `metrics` (see available_metrics()).")
    n = len(candidates)
    gts = {i: [{"caption": r} for r in refs] for i, refs in enumerate(references)}
    res = {i: [{"caption": c}] for i, c in enumerate(candidates)}
    if tokenize == "ptb":
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        _check_java()
        tok = PTBTokenizer()
        gts, res = tok.tokenize(gts), tok.tokenize(res)
    else:
        gts = {i: [r["caption"].lower() for r in v] for i, v in gts.items()}
        res = {i: [r["caption"].lower() for r in v] for i, v in res.items()}
    # pycocoevalcap asserts on empty candidates; an empty caption scores zero instead.
    # Re-keyed in index order: every scorer returns per-image scores in gts' key order.
    res = {i: [res[i][0] if res[i][0].strip() else "<empty>"] for i in range(n)}
    gts = {i: gts[i] for i in range(n)}
    corpus: dict[str, float] = {}
    per_image: list[dict[str, float]] = [{} for _ in range(n)]

    def put(name: str, total, scores) -> None:
        corpus[name] = float(total)
        for row, s in zip(per_image, scores):
            row[name] = float(s)

    if any(m.startswith("Bleu") for m in metrics):
        bleu, bleu_images = Bleu(4).compute_score(gts, res, verbose=0)
        for k in range(4):
            if f"Bleu_{k + 1}" in metrics:
                put(f"Bleu_{k + 1}", bleu[k], bleu_images[k])
    if "METEOR" in metrics:
        from pycocoevalcap.meteor.meteor import Meteor

        _check_java()
        put("METEOR", *Meteor().compute_score(gts, res))
    if "ROUGE_L" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        put("ROUGE_L", *Rouge().compute_score(gts, res))
    if "CIDEr" in metrics:
        put("CIDEr", *Cider().compute_score(gts, res))
    if "SPICE" in metrics:
        from pycocoevalcap.spice.spice import Spice

        total, images = Spice().compute_score(gts, res)
        put("SPICE", total, [s["All"]["f"] for s in images])
    return corpus, per_image


def caption_metrics(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Sequence[str] = ("Bleu_4", "CIDEr"),
    tokenize: str = "ptb",
) -> dict[str, float]:
    """Corpus metrics of `candidates` [N] against `references` [N][k], pycocoevalcap names."""
    return score_captions(candidates, references, metrics, tokenize)[0]
