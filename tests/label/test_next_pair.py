"""`storage.next_pair` against the ordering it promises, through random labelling sessions.

The reference is the order written as one SQL query over every served pair (undone
first, most recent first; then unvisited in file order; then skipped, longest-skipped
first). The function answers it with three indexed queries and a `start` hint that skips
pairs already visited, as the server uses it; both must agree at every step. The
labelled count `storage.progress` keeps in counters must equal a count of the labels at
every step too.
"""

from __future__ import annotations

import random
from contextlib import closing
from pathlib import Path

from mmft.label import storage
from mmft.label.pairs import Pair

REFERENCE = """
    SELECT p.pair_id FROM pairs AS p
    LEFT JOIN queue AS q ON q.pair_id = p.pair_id AND q.labeler = :labeler
    WHERE p.position IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM labels AS l WHERE l.pair_id = p.pair_id AND l.labeler = :labeler)
    ORDER BY CASE q.state WHEN 'requeued' THEN 0 WHEN 'skipped' THEN 2 ELSE 1 END,
             CASE q.state WHEN 'requeued' THEN -q.seq ELSE q.seq END,
             p.position
    LIMIT 1
"""
# What storage.progress answers from its counters, counted from the labels themselves.
DONE = """
    SELECT COUNT(*) FROM labels AS l JOIN pairs AS p ON p.pair_id = l.pair_id
    WHERE l.labeler = :labeler AND p.position IS NOT NULL
"""


def test_next_pair_with_a_start_hint_follows_the_reference_order(tmp_path: Path):
    db = tmp_path / "labels.sqlite"
    labelers = ["ann", "bob"]
    for name in labelers:
        storage.add_labeler(db, name)
    pairs = [Pair(f"p{i:02d}", tmp_path / "x.png", "Describe.", f"a {i}", f"b {i}") for i in range(40)]
    rng = random.Random(0)
    frontier = dict.fromkeys(labelers, 0)
    seen = {"unvisited": 0, "requeued": 0, "skipped": 0}
    with closing(storage.connect(db)) as conn:
        storage.sync_pairs(conn, pairs[5:] + pairs[:5], "test")  # file order differs from id order
        storage.record_label(conn, "bob", "p07", "A")
        # A pair no longer served, with a label that must not count.
        storage.sync_pairs(conn, [p for p in pairs[5:] + pairs[:5] if p.pair_id != "p07"], "test")
        for _ in range(400):
            name = rng.choice(labelers)
            expected = conn.execute(REFERENCE, {"labeler": name}).fetchone()
            hinted = storage.next_pair(conn, name, frontier[name])
            plain = storage.next_pair(conn, name)
            assert hinted == plain
            assert storage.progress(conn, name) == storage.Progress(
                done=conn.execute(DONE, {"labeler": name}).fetchone()[0], total=39)
            assert (hinted.pair_id if hinted else None) == (expected[0] if expected else None)
            # A batch is the reference order's first k pairs, from the same hint.
            k = rng.randint(1, 12)
            batch = storage.next_pairs(conn, name, frontier[name], limit=k)
            assert [pair.pair_id for pair in batch] == [
                row[0] for row in conn.execute(REFERENCE.replace("LIMIT 1", "LIMIT :k"), {"labeler": name, "k": k})]
            if hinted is None:
                continue
            assert hinted.pair_id != "p07"
            state = conn.execute("SELECT state FROM queue WHERE labeler = ? AND pair_id = ?",
                                 (name, hinted.pair_id)).fetchone()
            seen["unvisited" if state is None else state[0]] += 1
            assert hinted.unvisited == (state is None)
            if hinted.unvisited:
                frontier[name] = hinted.position
            action = rng.random()
            if action < 0.6:
                storage.record_label(conn, name, hinted.pair_id, rng.choice(storage.CHOICES))
                if rng.random() < 0.3:  # a retried submission replaces the choice and counts once
                    storage.record_label(conn, name, hinted.pair_id, rng.choice(storage.CHOICES))
            elif action < 0.8:
                storage.skip_pair(conn, name, hinted.pair_id)
            else:
                storage.undo_last(conn, name)
        # Every kind of answer came up, and both labelers finished the served pairs.
        assert all(seen.values()), seen
        for name in labelers:
            while (pair := storage.next_pair(conn, name, frontier[name])) is not None:
                storage.record_label(conn, name, pair.pair_id, "A")
            assert storage.progress(conn, name) == storage.Progress(done=39, total=39)


def test_progress_counters_are_rebuilt_for_a_database_made_before_them(tmp_path: Path):
    """A database from before the counters (no progress/served tables or triggers) gets
    them, with the right counts, when the server opens it and syncs its pairs."""
    db = tmp_path / "labels.sqlite"
    storage.add_labeler(db, "ann")
    pairs = [Pair(f"p{i}", tmp_path / "x.png", "Describe.", f"a {i}", f"b {i}") for i in range(5)]
    with closing(storage.connect(db)) as conn:
        storage.sync_pairs(conn, pairs, "test")
        for pair in pairs[:3]:
            storage.record_label(conn, "ann", pair.pair_id, "B")
        conn.executescript(
            "DROP TRIGGER progress_label_added; DROP TRIGGER progress_label_removed;"
            "DROP TABLE progress; DROP TABLE served;"
        )
    with closing(storage.connect(db, create=True)) as conn:  # as `serve` opens it
        storage.sync_pairs(conn, pairs[1:], "test")
        assert storage.progress(conn, "ann") == storage.Progress(done=2, total=4)
        storage.record_label(conn, "ann", "p4", "A")
        assert storage.progress(conn, "ann") == storage.Progress(done=3, total=4)
