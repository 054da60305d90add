"""Official caption metrics through pycocoevalcap (the reference implementation).

Evaluation reports pycocoevalcap's numbers: PTB tokenisation in Java, then BLEU-1..4,
METEOR, ROUGE-L, CIDEr-D (document frequencies over the evaluated set, as the official
metric defines them) and SPICE when its models are installed. Training rewards live in
`reward_models` and use corpus-level document frequencies instead (ppo_spec.md).
"""

from __future__ import annotations

from collections.abc import Sequence

ALL_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")


def caption_metrics(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Sequence[str] = ("Bleu_4", "CIDEr"),
    tokenize: str = "ptb",
) -> dict[str, float]:
    """Corpus metrics of `candidates` [N] against `references` [N][k], pycocoevalcap names."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists.")
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"Unknown metric(s) {sorted(unknown)}; known: {ALL_METRICS}.")
    gts = {i: [{"caption": r} for r in refs] for i, refs in enumerate(references)}
    res = {i: [{"caption": c}] for i, c in enumerate(candidates)}
    if tokenize == "ptb":
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tok = PTBTokenizer()
        gts, res = tok.tokenize(gts), tok.tokenize(res)
    else:
        gts = {i: [r["caption"].lower() for r in v] for i, v in gts.items()}
        res = {i: [r["caption"].lower() for r in v] for i, v in res.items()}
    # pycocoevalcap asserts on empty candidates; an empty caption scores zero instead.
    res = {i: [c[0] if c[0].strip() else "<empty>"] for i, c in res.items()}
    out: dict[str, float] = {}
    if any(m.startswith("Bleu") for m in metrics):
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"Bleu_{n + 1}": float(bleu[n]) for n in range(4) if f"Bleu_{n + 1}" in metrics})
    if "CIDEr" in metrics:
        out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if "ROUGE_L" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    if "METEOR" in metrics:
        from pycocoevalcap.meteor.meteor import Meteor

        out["METEOR"] = float(Meteor().compute_score(gts, res)[0])
    if "SPICE" in metrics:
        from pycocoevalcap.spice.spice import Spice

        out["SPICE"] = float(Spice().compute_score(gts, res)[0])
    return out
