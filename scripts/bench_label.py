"""Labelling throughput over HTTP: a scripted labeler against a real `mmft label serve`.

One label a request (GET /api/next, POST /api/label: what the web page does) against
batches (GET /api/pairs?limit=N, POST /api/labels: what scripted, model or oracle labelers
such as scripts/preference_demo.py use). Every acknowledged label is committed to disk
(SQLite WAL, synchronous=FULL), so one label a request pays an fsync per label and a batch
one per batch. Each batch size labels as its own labeler on the same server and database;
afterwards the database must hold exactly the labels each labeler sent.

    python scripts/bench_label.py --json outputs/bench_label.json
    python scripts/bench_label.py --num_pairs 100000 --batch_sizes 1 100 500 1000 --json OUT
"""

from __future__ import annotations

import argparse
import json
import runpy
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import save_result, table  # noqa: E402

DEMO = runpy.run_path(str(Path(__file__).resolve().parent / "preference_demo.py"))
CHOICES = ("A", "B", "tie", "both_bad")


def write_pairs(folder: Path, num_pairs: int, pairs_per_image: int) -> Path:
    """`num_pairs` pairs, `pairs_per_image` of them sharing one small PNG (as make_pairs writes
    C(k, 2) pairs of k captions per image); captions of a demo caption's length."""
    images = folder / "images"
    images.mkdir(parents=True)
    path = folder / "pairs.jsonl"
    with path.open("w") as out:
        for i in range(num_pairs):
            image = images / f"{i // pairs_per_image}.png"
            if i % pairs_per_image == 0:
                Image.new("RGB", (64, 64), (i * 37 % 256, i * 91 % 256, 200)).save(image)
            out.write(json.dumps({
                "pair_id": f"p{i:07d}", "image": str(image), "prompt": "Describe the image.",
                "caption_a": f"a large red circle in the top left and a small blue square below it {i}",
                "caption_b": f"two green triangles next to a small yellow circle at the bottom {i}",
            }) + "\n")
    return path


def choice_of(pair_id: str) -> str:
    return CHOICES[int(pair_id[1:]) % len(CHOICES)]


def label(url: str, token: str, batch: int, limit: int) -> dict:
    """Label up to `limit` pairs, `batch` a request (1: /api/next and /api/label)."""
    import httpx

    done, requests = 0, 0
    start = time.perf_counter()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60.0) as client:
        while done < limit:
            if batch == 1:
                pair = client.get("/api/next").raise_for_status().json()
                if pair["done"]:
                    break
                client.post("/api/label", json={"pair_id": pair["pair_id"], "choice": choice_of(pair["pair_id"])}
                            ).raise_for_status()
                done, requests = done + 1, requests + 2
                continue
            pairs = client.get("/api/pairs", params={"limit": min(batch, limit - done)}).raise_for_status().json()
            if not pairs["pairs"]:
                break
            labels = [{"pair_id": p["pair_id"], "choice": choice_of(p["pair_id"])} for p in pairs["pairs"]]
            client.post("/api/labels", json={"labels": labels}).raise_for_status()
            done, requests = done + len(labels), requests + 2
    seconds = time.perf_counter() - start
    return {"labels": done, "requests": requests, "seconds": seconds, "labels_per_s": done / seconds}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--num_pairs", type=int, default=20000, help="pairs in the served file")
    p.add_argument("--pairs_per_image", type=int, default=28, help="pairs sharing an image (28: every pair of 8)")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 100, 500])
    p.add_argument("--one_by_one_labels", type=int, default=2000,
                   help="labels for batch size 1 (the slow path; the others label every pair)")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pairs = write_pairs(folder, args.num_pairs, args.pairs_per_image)
        db = folder / "labels.sqlite"
        tokens = {b: DEMO["label_cli"]("add-labeler", f"bench{b}", "--db", str(db)).stdout.strip()
                  for b in args.batch_sizes}
        t = time.perf_counter()
        server = DEMO["Server"](pairs, db)
        startup = time.perf_counter() - t
        try:
            for b in args.batch_sizes:
                limit = args.one_by_one_labels if b == 1 else args.num_pairs
                rows.append({"batch_size": b, **label(server.url, tokens[b], b, limit)})
        finally:
            server.stop()
        with sqlite3.connect(db) as conn:
            stored = dict(conn.execute("SELECT labeler, COUNT(*) FROM labels GROUP BY labeler").fetchall())
    for row in rows:
        row["stored"] = stored.get(f"bench{row['batch_size']}", 0)
        if row["stored"] != row["labels"]:
            raise SystemExit(f"batch size {row['batch_size']}: sent {row['labels']} labels, "
                             f"the database holds {row['stored']}")
    one = next((r["labels_per_s"] for r in rows if r["batch_size"] == 1), None)
    print(table(["batch size", "labels", "requests", "seconds", "labels/s", "x one by one"],
                [[r["batch_size"], r["labels"], r["requests"], r["seconds"], r["labels_per_s"],
                  r["labels_per_s"] / one if one else float("nan")] for r in rows]))
    return save_result(args.json, {"num_pairs": args.num_pairs, "pairs_per_image": args.pairs_per_image,
                                   "server_start_s": startup, "runs": rows}, "bench_label.py", argv)


if __name__ == "__main__":
    main()
