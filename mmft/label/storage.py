"""The labelling database: SQLite through the standard library.

Tables:
    labelers(name, token_sha256, created): who may label; only a hash of each token is kept.
    pairs(pair_id, position, image, prompt, caption_a, caption_b, metadata): every pair ever
        loaded. `position` is the pair's index in the pairs file now being served, NULL for
        pairs that are not in it (kept because labels may point at them).
    labels(labeler, pair_id, choice, time): one row per (labeler, pair); a repeated
        submission overwrites the choice (UNIQUE + upsert), so retries are idempotent.
    queue(labeler, pair_id, state, seq): per-labeler ordering overrides: 'skipped' pairs go
        to the back, an undone ('requeued') pair comes next.
    progress(labeler, done): how many served pairs each labeler has labelled, kept by
        triggers on `labels` and recounted by `sync_pairs` (the only writer of
        `pairs.position`, so the served set changes nowhere else). The count that every
        page load and label answer carries costs one lookup instead of a join over all
        of a labeler's labels (39 ms at 60,000 labels).
    served(total): one row, the number of served pairs, written by `sync_pairs`.

Durability: WAL journal with `synchronous=FULL`, so a COMMIT has reached the disk (fsync of
the WAL) before it returns, and the server answers 200 only after COMMIT. A label that was
acknowledged therefore survives a kill -9 of the server, and a power cut.

Every function takes an open connection; the server opens one per request (sqlite3
connections are cheap and this keeps threads from sharing one).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from mmft.label.pairs import Pair

CHOICES = ("A", "B", "tie", "both_bad")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labelers (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pairs (
    pair_id TEXT PRIMARY KEY,
    position INTEGER UNIQUE,
    image TEXT NOT NULL,
    prompt TEXT NOT NULL,
    caption_a TEXT NOT NULL,
    caption_b TEXT NOT NULL,
    metadata TEXT NOT NULL
);
-- Covers the pairs-side probe of the progress count (labels joined with served pairs),
-- which would otherwise read a table row per label.
CREATE INDEX IF NOT EXISTS pairs_served ON pairs (pair_id, position);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY,
    labeler TEXT NOT NULL REFERENCES labelers(name),
    pair_id TEXT NOT NULL REFERENCES pairs(pair_id),
    choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie', 'both_bad')),
    time REAL NOT NULL,
    UNIQUE (labeler, pair_id)
);
CREATE TABLE IF NOT EXISTS queue (
    labeler TEXT NOT NULL REFERENCES labelers(name),
    pair_id TEXT NOT NULL REFERENCES pairs(pair_id),
    state TEXT NOT NULL CHECK (state IN ('skipped', 'requeued')),
    seq INTEGER NOT NULL,
    PRIMARY KEY (labeler, pair_id)
);
CREATE TABLE IF NOT EXISTS progress (
    labeler TEXT PRIMARY KEY REFERENCES labelers(name),
    done INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS served (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    total INTEGER NOT NULL
);
-- The served set only changes in sync_pairs, which recounts; between syncs a label counts
-- when it is added to or removed from a served pair. Upserts of a choice update neither
-- labeler nor pair_id, so they leave the count alone.
CREATE TRIGGER IF NOT EXISTS progress_label_added AFTER INSERT ON labels
WHEN (SELECT position FROM pairs WHERE pair_id = NEW.pair_id) IS NOT NULL
BEGIN
    INSERT INTO progress (labeler, done) VALUES (NEW.labeler, 1)
    ON CONFLICT (labeler) DO UPDATE SET done = done + 1;
END;
CREATE TRIGGER IF NOT EXISTS progress_label_removed AFTER DELETE ON labels
WHEN (SELECT position FROM pairs WHERE pair_id = OLD.pair_id) IS NOT NULL
BEGIN
    UPDATE progress SET done = done - 1 WHERE labeler = OLD.labeler;
END;
"""

_TABLES = ("labelers", "pairs", "labels", "queue")
_MAX_NAME_LENGTH = 64


class LabelStoreError(ValueError):
    """A request the database cannot satisfy; the message says what to do."""


class UnknownPairError(LabelStoreError):
    """The pair_id is not among the pairs being served."""


@dataclass(frozen=True)
class NextPair:
    """The pair a labeler should see next.

    `position` is its index in the served pairs file; `unvisited` is True when the labeler
    has neither labelled, skipped nor undone it (see `next_pair`'s `start`).
    """

    pair_id: str
    prompt: str
    caption_a: str
    caption_b: str
    position: int
    unvisited: bool


@dataclass(frozen=True)
class Progress:
    """How many of the served pairs a labeler has labelled."""

    done: int
    total: int


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def connect(db_path: str | Path, create: bool = False) -> sqlite3.Connection:
    """Open the database with the settings every connection needs.

    Args:
        db_path: the SQLite file.
        create: create the file and schema when missing (serve, add-labeler). Without it a
            missing or uninitialised database is an error (export, inspection).

    The connection is in autocommit mode; writes go through `write_transaction`.
    """
    db_path = Path(db_path)
    if create:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    elif not db_path.is_file():
        raise LabelStoreError(
            f"{db_path}: database not found (it is created by `mmft label add-labeler` or `serve`)"
        )
    # check_same_thread=False: FastAPI may run a request's steps on different pool threads;
    # each connection still serves one request at a time.
    conn = sqlite3.connect(db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    # FULL: fsync the WAL at every commit, so an acknowledged label is on disk.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    if create:
        # WAL lets page loads read while a label commits; the mode persists in the file.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
    else:
        present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not set(_TABLES) <= present:
            conn.close()
            raise LabelStoreError(
                f"{db_path}: not a labelling database (tables {', '.join(_TABLES)} missing)"
            )
    return conn


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error.

    IMMEDIATE takes the write lock up front, so two writers queue on the busy timeout
    instead of one failing with SQLITE_BUSY when it upgrades a read lock.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def add_labeler(db_path: str | Path, name: str) -> str:
    """Register labeler `name` in `db_path` (created if missing) and return their new token.

    The token is shown only now: the database keeps its SHA-256.

    Raises:
        LabelStoreError: the name is empty, too long, or already taken.
    """
    name = name.strip()
    if not name or len(name) > _MAX_NAME_LENGTH:
        raise LabelStoreError(f"labeler name must be 1 to {_MAX_NAME_LENGTH} characters, got {name!r}")
    token = secrets.token_urlsafe(24)
    with closing(connect(db_path, create=True)) as conn, write_transaction(conn):
        if conn.execute("SELECT 1 FROM labelers WHERE name = ?", (name,)).fetchone():
            raise LabelStoreError(f"labeler {name!r} already exists in {db_path}; pick another name")
        conn.execute(
            "INSERT INTO labelers (name, token_sha256, created) VALUES (?, ?, ?)",
            (name, _hash_token(token), time.time()),
        )
    return token


def labeler_for_token(conn: sqlite3.Connection, token: str) -> str | None:
    """The name of the labeler holding `token`, or None."""
    row = conn.execute("SELECT name FROM labelers WHERE token_sha256 = ?", (_hash_token(token),)).fetchone()
    return row["name"] if row else None


def count_labelers(conn: sqlite3.Connection) -> int:
    """How many labelers are registered."""
    return conn.execute("SELECT COUNT(*) FROM labelers").fetchone()[0]


def sync_pairs(conn: sqlite3.Connection, pairs: Sequence[Pair], source: str | Path) -> None:
    """Make `pairs` (read from `source`) the pairs being served, in their file order.

    New pairs are added; known ones get their image path and metadata refreshed (images may
    have moved). Pairs not in `pairs` stay in the table, unserved, with their labels.

    Raises:
        LabelStoreError: a pair that already has labels now has a different prompt or
            caption; its labels would silently describe other text. Give it a new pair_id.
    """
    with write_transaction(conn):
        conn.execute("UPDATE pairs SET position = NULL")
        for position, pair in enumerate(pairs):
            old = conn.execute(
                "SELECT prompt, caption_a, caption_b FROM pairs WHERE pair_id = ?", (pair.pair_id,)
            ).fetchone()
            changed = old is not None and tuple(old) != (pair.prompt, pair.caption_a, pair.caption_b)
            if changed and conn.execute("SELECT 1 FROM labels WHERE pair_id = ?", (pair.pair_id,)).fetchone():
                raise LabelStoreError(
                    f"{source}:{pair.line}: pair {pair.pair_id!r} already has labels in the database but its "
                    "prompt or captions changed; give the changed pair a new pair_id"
                )
            conn.execute(
                "INSERT INTO pairs (pair_id, position, image, prompt, caption_a, caption_b, metadata) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pair_id) DO UPDATE SET position = excluded.position, "
                "image = excluded.image, prompt = excluded.prompt, caption_a = excluded.caption_a, "
                "caption_b = excluded.caption_b, metadata = excluded.metadata",
                (
                    pair.pair_id,
                    position,
                    str(pair.image),
                    pair.prompt,
                    pair.caption_a,
                    pair.caption_b,
                    json.dumps(pair.metadata, ensure_ascii=False),
                ),
            )
        _recount(conn)


def _recount(conn: sqlite3.Connection) -> None:
    """Rebuild `progress` and `served` from the tables (inside the caller's transaction)."""
    conn.execute("DELETE FROM progress")
    conn.execute(
        "INSERT INTO progress (labeler, done) SELECT l.labeler, COUNT(*) FROM labels AS l "
        "JOIN pairs AS p ON p.pair_id = l.pair_id WHERE p.position IS NOT NULL GROUP BY l.labeler"
    )
    conn.execute(
        "INSERT INTO served (id, total) SELECT 0, COUNT(*) FROM pairs WHERE position IS NOT NULL "
        "ON CONFLICT (id) DO UPDATE SET total = excluded.total"
    )


def image_path(conn: sqlite3.Connection, pair_id: str) -> Path:
    """The image file of a served pair.

    Raises:
        UnknownPairError: `pair_id` is not served.
    """
    row = conn.execute(
        "SELECT image FROM pairs WHERE pair_id = ? AND position IS NOT NULL", (pair_id,)
    ).fetchone()
    if row is None:
        raise UnknownPairError(f"unknown pair_id {pair_id!r}")
    return Path(row["image"])


def next_pair(conn: sqlite3.Connection, labeler: str, start: int = 0) -> NextPair | None:
    """The next served pair `labeler` has not labelled, or None when all are labelled.

    Order: the most recently undone pair first, then unvisited pairs in file order, then
    skipped pairs, longest-skipped first (so skipping defers a pair, never drops it).

    `start`: a position before which every served pair is already visited (labelled,
    skipped or undone) by this labeler, so the search for unvisited pairs begins there
    instead of scanning them all again. A pair once visited stays visited (an undo
    requeues it, a label clears its queue entry), so the position of the last unvisited
    pair returned is a valid `start` for the next call while the served pairs file stays
    the same (the server keeps one per labeler). 0 is always correct.
    """
    pairs = next_pairs(conn, labeler, start, limit=1)
    return pairs[0] if pairs else None


def next_pairs(conn: sqlite3.Connection, labeler: str, start: int = 0, limit: int = 1) -> list[NextPair]:
    """Up to `limit` served pairs `labeler` has not labelled, in `next_pair`'s order: the
    pairs successive `next_pair` calls would return if each were labelled in turn (a
    scripted or model labeler fetches them in one request). `start` as for `next_pair`;
    the position of the first unvisited pair returned is a valid `start` afterwards."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    columns = "p.pair_id, p.prompt, p.caption_a, p.caption_b, p.position"
    unlabelled = "NOT EXISTS (SELECT 1 FROM labels AS l WHERE l.pair_id = p.pair_id AND l.labeler = :labeler)"
    out: list[NextPair] = []

    def queued(state: str, order: str) -> None:
        """The first served, unlabelled pairs in `labeler`'s queue with `state`, by seq `order`."""
        rows = conn.execute(
            f"""
            SELECT {columns} FROM queue AS q JOIN pairs AS p ON p.pair_id = q.pair_id
            WHERE q.labeler = :labeler AND q.state = :state AND p.position IS NOT NULL AND {unlabelled}
            ORDER BY q.seq {order}, p.position LIMIT :limit
            """,
            {"labeler": labeler, "state": state, "limit": limit - len(out)},
        ).fetchall()
        out.extend(NextPair(**dict(row), unvisited=False) for row in rows)

    queued("requeued", "DESC")
    if len(out) < limit:
        # Unvisited: in file order from `start` (the position index), neither labelled nor queued.
        rows = conn.execute(
            f"""
            SELECT {columns} FROM pairs AS p
            WHERE p.position >= :start AND {unlabelled}
              AND NOT EXISTS (SELECT 1 FROM queue AS q WHERE q.pair_id = p.pair_id AND q.labeler = :labeler)
            ORDER BY p.position LIMIT :limit
            """,
            {"labeler": labeler, "start": start, "limit": limit - len(out)},
        ).fetchall()
        out.extend(NextPair(**dict(row), unvisited=True) for row in rows)
    if len(out) < limit:
        queued("skipped", "ASC")
    return out


def progress(conn: sqlite3.Connection, labeler: str) -> Progress:
    """Labelled and total counts over the served pairs (two primary-key lookups)."""
    row = conn.execute(
        "SELECT (SELECT done FROM progress WHERE labeler = ?), (SELECT total FROM served)", (labeler,)
    ).fetchone()
    return Progress(done=row[0] or 0, total=row[1] or 0)


def _require_served(conn: sqlite3.Connection, pair_id: str) -> None:
    if (
        conn.execute("SELECT 1 FROM pairs WHERE pair_id = ? AND position IS NOT NULL", (pair_id,)).fetchone()
        is None
    ):
        raise UnknownPairError(f"unknown pair_id {pair_id!r}")


def _next_seq(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM queue").fetchone()[0]


def record_label(conn: sqlite3.Connection, labeler: str, pair_id: str, choice: str) -> None:
    """Store `labeler`'s `choice` for `pair_id`; a repeat replaces the earlier choice.

    Raises:
        LabelStoreError: `choice` is not one of CHOICES.
        UnknownPairError: `pair_id` is not served.
    """
    record_labels(conn, labeler, [(pair_id, choice)])


def record_labels(conn: sqlite3.Connection, labeler: str, labels: Sequence[tuple[str, str]]) -> None:
    """Store `labeler`'s (pair_id, choice) labels in one transaction: all of them or, when
    one is invalid, none. Within the batch and across calls the last choice for a pair
    counts (one row per labeler and pair). One commit (one fsync) for the lot is what makes
    a batch cheaper than as many `record_label` calls.

    Raises:
        LabelStoreError: a choice is not one of CHOICES (the message names its index).
        UnknownPairError: a pair_id is not served (the message names it and its index).
    """
    for i, (pair_id, choice) in enumerate(labels):
        if choice not in CHOICES:
            where = f"label {i} (pair_id {pair_id!r}): " if len(labels) > 1 else ""
            raise LabelStoreError(f"{where}choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    with write_transaction(conn):
        for i, (pair_id, choice) in enumerate(labels):
            try:
                _require_served(conn, pair_id)
            except UnknownPairError as err:
                raise UnknownPairError(f"label {i}: {err}" if len(labels) > 1 else str(err)) from None
            conn.execute(
                "INSERT INTO labels (labeler, pair_id, choice, time) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (labeler, pair_id) DO UPDATE SET choice = excluded.choice, time = excluded.time",
                (labeler, pair_id, choice, time.time()),
            )
            conn.execute("DELETE FROM queue WHERE labeler = ? AND pair_id = ?", (labeler, pair_id))


def skip_pair(conn: sqlite3.Connection, labeler: str, pair_id: str) -> None:
    """Send `pair_id` to the back of `labeler`'s queue; it comes back after the others.

    Raises:
        UnknownPairError: `pair_id` is not served.
    """
    with write_transaction(conn):
        _require_served(conn, pair_id)
        conn.execute(
            "INSERT INTO queue (labeler, pair_id, state, seq) VALUES (?, ?, 'skipped', ?) "
            "ON CONFLICT (labeler, pair_id) DO UPDATE SET state = excluded.state, seq = excluded.seq",
            (labeler, pair_id, _next_seq(conn)),
        )


def undo_last(conn: sqlite3.Connection, labeler: str) -> tuple[str, str] | None:
    """Delete `labeler`'s most recent label on a served pair and put that pair first in their queue.

    "Most recent" is by submission time, so re-submitting a pair makes it the one undone.

    Returns:
        (pair_id, choice) of the removed label, or None when the labeler has no labels.
    """
    with write_transaction(conn):
        # Only labels on served pairs: undoing one the labeler cannot see would just delete it.
        row = conn.execute(
            "SELECT l.id, l.pair_id, l.choice FROM labels AS l JOIN pairs AS p ON p.pair_id = l.pair_id "
            "WHERE l.labeler = ? AND p.position IS NOT NULL ORDER BY l.time DESC, l.id DESC LIMIT 1",
            (labeler,),
        ).fetchone()
        if row is None:
            return None
        conn.execute("DELETE FROM labels WHERE id = ?", (row["id"],))
        conn.execute(
            "INSERT INTO queue (labeler, pair_id, state, seq) VALUES (?, ?, 'requeued', ?) "
            "ON CONFLICT (labeler, pair_id) DO UPDATE SET state = excluded.state, seq = excluded.seq",
            (labeler, row["pair_id"], _next_seq(conn)),
        )
    return row["pair_id"], row["choice"]


@dataclass(frozen=True)
class LabelRow:
    """One stored label joined with its pair, as export reads it."""

    labeler: str
    pair_id: str
    choice: str
    time: float
    image: Path
    prompt: str
    caption_a: str
    caption_b: str


def read_labels(conn: sqlite3.Connection) -> list[LabelRow]:
    """Every label with its pair's content, ordered by time (then insertion)."""
    rows = conn.execute(
        """
        SELECT l.labeler, l.pair_id, l.choice, l.time, p.image, p.prompt, p.caption_a, p.caption_b
        FROM labels AS l JOIN pairs AS p ON p.pair_id = l.pair_id
        ORDER BY l.time, l.id
        """
    ).fetchall()
    return [LabelRow(**{**dict(row), "image": Path(row["image"])}) for row in rows]
