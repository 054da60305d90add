"""Benchmark reward_models' CIDEr-D, BLEU and ROUGE-L against pycocoevalcap on Flickr8k.

Workload: the human leave-one-out set of Flickr8k (8,092 images; candidate = caption #0,
references = #1..#4), the same numbers pycocoevalcap reports per image.

Row "pre-tokenised": both sides get lower-cased captions with " ." removed (the README's
preprocessing) and no tokenizer runs (reward_models: ``tokenizer="none"``). reward_models'
CIDEr-D document frequencies are built beforehand from the references, as a training run
builds them once from its training set; pycocoevalcap computes them inside ``compute_score``.
Row "with tokenisation": both sides get the raw captions. pycocoevalcap runs its Java
PTBTokenizer on references and candidates (one JVM each, as in ``COCOEvalCap``), then the
metric; reward_models runs the pure-Python PTB tokenizer inside ``score`` (its cache cleared
before every run). CiderD tokenises its corpus references once at construction (as in
training), so in that row only its candidates are tokenised per call.

Times are the minimum over ``--repeats`` interleaved runs, as CPU time of the process and its
children (the Java tokenizer); the machine this was written on is shared, so wall time partly
measures the neighbours; it is reported too. Speedups are pycocoevalcap time / reward_models time.

    .venv/bin/python scripts/bench_rewards.py --json bench_rewards.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from reward_models import Bleu, CiderD, RougeL  # noqa: E402
from reward_models.tokenize import ptb_tokenize  # noqa: E402

DEFAULT_CAPTIONS = REPO_ROOT.parent / "shared" / "data" / "flickr8k" / "captions.txt"


def read_flickr8k(path: Path) -> dict[str, list[str]]:
    """image -> captions #0..#4; the first line of the published file uses a space, not a tab."""
    captions: dict[str, dict[int, str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.strip():
                key, caption = line.split("\t", 1) if "\t" in line else line.split(" ", 1)
                image, number = key.rsplit("#", 1)
                captions.setdefault(image, {})[int(number)] = caption
    return {image: [c[i] for i in sorted(c)] for image, c in captions.items()}


def _cpu() -> float:
    """CPU seconds of this process and its finished children (pycocoevalcap's Java tokenizer)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def timed(fn):
    """(result, cpu seconds, wall seconds) of one call."""
    c0, w0 = _cpu(), time.perf_counter()
    out = fn()
    return out, _cpu() - c0, time.perf_counter() - w0


def bench_row(cands, refs, raw: bool, repeats: int) -> dict:
    from pycocoevalcap.bleu.bleu import Bleu as CocoBleu
    from pycocoevalcap.cider.cider import Cider as CocoCider
    from pycocoevalcap.rouge.rouge import Rouge as CocoRouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ids = list(range(len(cands)))
    tokenizer = "python" if raw else "none"

    def coco_inputs():
        gts = {i: r for i, r in zip(ids, refs)}
        res = {i: [c] for i, c in zip(ids, cands)}
        if raw:  # COCOEvalCap's pipeline: Java PTB tokenisation of both sides
            tok = PTBTokenizer()
            gts = tok.tokenize({i: [{"caption": c} for c in r] for i, r in gts.items()})
            res = tok.tokenize({i: [{"caption": c[0]}] for i, c in res.items()})
        return gts, res

    cider = CiderD(refs, tokenizer=tokenizer, cache_dir=False)  # df precomputed, as in training
    ours = {
        "cider": lambda: cider.score(cands, refs),
        "bleu": lambda: Bleu(4, tokenizer=tokenizer).score(cands, refs),
        "rouge": lambda: RougeL(tokenizer=tokenizer).score(cands, refs),
    }

    def coco(metric):
        def run():
            gts, res = coco_inputs()
            if metric == "cider":
                return np.asarray(CocoCider().compute_score(gts, res)[1])
            if metric == "bleu":
                return np.asarray(CocoBleu(4).compute_score(gts, res, verbose=0)[1]).T
            return np.asarray(CocoRouge().compute_score(gts, res)[1])

        return run

    out = {}
    for metric in ("cider", "bleu", "rouge"):
        best = {"coco_cpu": np.inf, "coco_wall": np.inf, "ours_cpu": np.inf, "ours_wall": np.inf}
        for _ in range(repeats):
            coco_scores, cpu, wall = timed(coco(metric))
            best["coco_cpu"], best["coco_wall"] = min(best["coco_cpu"], cpu), min(best["coco_wall"], wall)
            ptb_tokenize.cache_clear()
            our_scores, cpu, wall = timed(ours[metric])
            best["ours_cpu"], best["ours_wall"] = min(best["ours_cpu"], cpu), min(best["ours_wall"], wall)
        best["max_abs_diff"] = float(np.abs(np.asarray(our_scores) - coco_scores).max())
        best["speedup"] = best["coco_cpu"] / best["ours_cpu"]
        best["speedup_wall"] = best["coco_wall"] / best["ours_wall"]
        best["corpus_score"] = float(np.asarray(our_scores).mean(axis=0).ravel()[-1])
        out[metric] = best
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--captions", type=Path, default=DEFAULT_CAPTIONS, help="Flickr8k captions.txt")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved runs per measurement (the minimum is kept)"
    )
    args = parser.parse_args()
    if not args.captions.is_file():
        parser.error(f"captions not found: {args.captions}")

    data = read_flickr8k(args.captions)
    raw_cands = [caps[0] for caps in data.values()]
    raw_refs = [caps[1:5] for caps in data.values()]

    def norm(c):
        return c.lower().replace(" .", "")

    rows = {
        "pre-tokenised": bench_row(
            [norm(c) for c in raw_cands], [[norm(r) for r in rs] for rs in raw_refs], False, args.repeats
        ),
        "with tokenisation": bench_row(raw_cands, raw_refs, True, args.repeats),
    }
    print(
        f"Flickr8k leave-one-out, {len(raw_cands)} candidates x 4 references; min of {args.repeats} runs, CPU seconds"
    )
    print(
        f"{'row':<18} {'metric':<8} {'pycocoevalcap':>14} {'reward_models':>14} {'speedup':>8} {'(wall)':>8} {'max|diff|':>10}"
    )
    for row, metrics in rows.items():
        for metric, r in metrics.items():
            print(
                f"{row:<18} {metric:<8} {r['coco_cpu']:>14.3f} {r['ours_cpu']:>14.3f} {r['speedup']:>7.1f}x "
                f"{r['speedup_wall']:>7.1f}x {r['max_abs_diff']:>10.1e}"
            )
    main_row = rows["pre-tokenised"]
    result = {
        "cider_speedup": main_row["cider"]["speedup"],
        "bleu_speedup": main_row["bleu"]["speedup"],
        "rouge_speedup": main_row["rouge"]["speedup"],
        "max_abs_diff": max(r["max_abs_diff"] for r in main_row.values()),
        "max_abs_diff_with_tokenisation": max(r["max_abs_diff"] for r in rows["with tokenisation"].values()),
        "rows": rows,
        "num_candidates": len(raw_cands),
        "repeats": args.repeats,
        "timing": "CPU seconds of the process and its children (min over repeats); *_wall fields are wall-clock seconds",
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
            "platform": platform.platform(),
        },
        "command": " ".join([".venv/bin/python", "scripts/bench_rewards.py", *sys.argv[1:]]),
    }
    targets = {"cider_speedup": 20, "bleu_speedup": 10, "rouge_speedup": 10}
    missed = [f"{k} {result[k]:.1f} < {v}" for k, v in targets.items() if result[k] < v]
    if result["max_abs_diff"] > 1e-9:
        missed.append(f"max_abs_diff {result['max_abs_diff']:.2e} > 1e-9")
    print("targets met" if not missed else "targets missed: " + "; ".join(missed))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
