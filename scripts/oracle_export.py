"""More oracle-labelled preference pairs for the embedded task, labelled in-process.

The preference demo (scripts/preference_demo.py) labels its pairs through the HTTP API of a
real label server, as a person would (13 ms a pair here). To measure what more labels buy
(`scripts/rm_sweep.py --train_extra`), this script does three things:

1. It makes the demo's pairs for another range of scenes. It uses scripts/make_pairs.py
   with the demo's sampling settings: samples and pairs per image, temperature, seed
   (`--samples_per_image`, `--pairs_per_image` and `--seed` change them).
2. The demo's oracle labels them in-process, through the store calls the server makes
   (`mmft.label.storage`).
3. It exports them as `mmft label export` does.

    python scripts/oracle_export.py --work extra_10k --first_scene 10000 --num_scenes 10000
    python scripts/rm_sweep.py --prefs demo_work/prefs --train_extra extra_10k/prefs \\
        --backbone BACKBONE --out sweep --run x2:extra=1

WORK gets pairs/ (pairs.jsonl and its images), labels.sqlite and prefs/ (the export).
The pairs come from the cached demo base unless `--model` says otherwise. The labeler is
the demo's oracle with its scoring (`--oracle_scoring`, default net_correct). Ties are
stored and, as in the demo, not exported. Keep the scenes apart from the held-out scenes
of the export being extended: the demo's pairs use scenes 0 to num_pair_images - 1, and
rm_sweep refuses an extra export that shares an image with its held-out pairs. Prints and
writes WORK/summary.json with the pairs, the labels by choice, the exported rows and the
seconds of each stage.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import time
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def label_in_process(pairs_path: Path, db: Path, oracle, oracle_choice) -> dict[str, int]:
    """Serve every pair of `pairs_path` from `db` as `mmft label serve` does, and record the
    oracle's choice for each."""
    from mmft.label import storage
    from mmft.label.pairs import load_pairs
    from mmft.label.server import prepare_database

    prepare_database(pairs_path, db)
    storage.add_labeler(db, "oracle")
    pairs = load_pairs(pairs_path)
    counts = {"A": 0, "B": 0, "tie": 0}
    with closing(storage.connect(db)) as conn:
        for pair in pairs:
            choice = oracle_choice(oracle, pair.caption_a, pair.caption_b, pair.metadata)
            storage.record_label(conn, "oracle", pair.pair_id, choice)
            counts[choice] += 1
    return counts


def oracle_export(work: Path, first_scene: int, num_scenes: int, *, model: str | None = None,
                  oracle_scoring: str | None = None, seed: int | None = None, samples_per_image: int | None = None,
                  pairs_per_image: int | None = None, max_new_tokens: int = 32, batch_size: int = 64) -> dict:
    """Pairs of scenes first_scene .. first_scene + num_scenes - 1, oracle labels, export.
    Sampling settings left None are the demo's."""
    from mmft.demo import build_demo_base
    from mmft.label.export import export_preferences
    from reward_models import AttributeReward

    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} is not empty; remove it or pass another --work.")
    demo = runpy.run_path(str(ROOT / "scripts" / "preference_demo.py"), run_name="preference_demo")
    make_pairs = runpy.run_path(str(ROOT / "scripts" / "make_pairs.py"), run_name="make_pairs")["make_pairs"]
    s = demo["DemoSettings"]()
    scoring = oracle_scoring or s.oracle_scoring
    samples = samples_per_image or s.samples_per_image
    per_image = pairs_per_image or s.pairs_per_image
    seconds = {}
    t = time.time()
    pairs_path = work / "pairs" / "pairs.jsonl"
    made = make_pairs(pairs_path, model=model or str(build_demo_base()), num_images=num_scenes, offset=first_scene,
                      samples_per_image=samples, pairs_per_image=per_image, temperature=s.pair_temperature,
                      max_new_tokens=max_new_tokens, batch_size=batch_size, seed=s.seed if seed is None else seed)
    seconds["make_pairs"] = time.time() - t
    t = time.time()
    db = work / "labels.sqlite"
    labels = label_in_process(pairs_path, db, AttributeReward(scoring=scoring), demo["oracle_choice"])
    seconds["labelling"] = time.time() - t
    t = time.time()
    exported = export_preferences(db, work / "prefs")
    seconds["export"] = time.time() - t
    summary = {"first_scene": first_scene, "num_scenes": num_scenes, "samples_per_image": samples,
               "pairs_per_image": per_image, "pairs": made["pairs"], "labels": labels,
               "exported": exported.rows, "oracle_scoring": scoring, "export": str(work / "prefs"),
               "seconds": seconds}
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="a new or empty folder for pairs, labels and export")
    p.add_argument("--first_scene", type=int, required=True, help="the first scene id (the demo uses 0 .. N-1)")
    p.add_argument("--num_scenes", type=int, required=True)
    p.add_argument("--model", default=None, help="the captioner (default: the cached demo base)")
    p.add_argument("--oracle_scoring", default=None, help="AttributeReward scoring (default: the demo's)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: the demo's)")
    p.add_argument("--samples_per_image", type=int, default=None, help="captions per scene (default: the demo's)")
    p.add_argument("--pairs_per_image", type=int, default=None,
                   help="pairs kept per scene, at most C(k, 2) of k distinct captions (default: the demo's)")
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=64)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    summary = oracle_export(args.work, args.first_scene, args.num_scenes, model=args.model,
                            oracle_scoring=args.oracle_scoring, seed=args.seed, samples_per_image=args.samples_per_image,
                            pairs_per_image=args.pairs_per_image, max_new_tokens=args.max_new_tokens,
                            batch_size=args.batch_size)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
