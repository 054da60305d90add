"""Pairs-file validation, the store's guard against relabelled text, and the `mmft label` CLI."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

from mmft.cli import build_parser
from mmft.label import storage
from mmft.label.pairs import PairsFileError, load_pairs

from .conftest import write_pairs


def _run_cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_load_pairs_resolves_relative_images_and_keeps_extra_fields(tmp_path):
    path = write_pairs(
        tmp_path, 3, overrides={1: {"image": str(tmp_path / "images" / "1.png"), "score": 0.5}}
    )
    pairs = load_pairs(path)
    assert [pair.pair_id for pair in pairs] == ["p000", "p001", "p002"]
    assert pairs[0].image == (tmp_path / "images" / "0.png").resolve()
    assert pairs[1].image == tmp_path / "images" / "1.png"  # absolute paths stay as given
    assert pairs[1].metadata == {"source": "test", "score": 0.5}
    assert [pair.line for pair in pairs] == [1, 2, 3]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"pair_id": "x", "image": ', "invalid JSON"),
        ('["not", "an", "object"]', "expected a JSON object, got list"),
        (
            '{"pair_id": "x", "image": "images/0.png", "prompt": "p", "caption_a": "a"}',
            "missing field(s) caption_b",
        ),
        (
            '{"pair_id": "x", "image": "images/0.png", "prompt": 3, "caption_a": "a", "caption_b": "b"}',
            "prompt must be",
        ),
        (
            '{"pair_id": "p000", "image": "images/0.png", "prompt": "p", "caption_a": "a", "caption_b": "b"}',
            "duplicate pair_id 'p000' (first used on line 1)",
        ),
        (
            '{"pair_id": "x", "image": "images/none.png", "prompt": "p", "caption_a": "a", "caption_b": "b"}',
            "image file not found",
        ),
    ],
)
def test_load_pairs_names_file_and_line_of_each_problem(tmp_path, bad_line, message):
    path = write_pairs(tmp_path, 2)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "", bad_line, lines[1]]) + "\n")  # line 2 blank, bad line 3
    with pytest.raises(PairsFileError) as err:
        load_pairs(path)
    assert f"{path}:3: " in str(err.value)
    assert message in str(err.value)


def test_load_pairs_reports_all_bad_lines_and_empty_or_missing_files(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("{}\nnot json\n")
    with pytest.raises(PairsFileError, match=r"2 problem\(s\)") as err:
        load_pairs(path)
    assert f"{path}:1: missing field(s)" in str(err.value) and f"{path}:2: invalid JSON" in str(err.value)
    path.write_text("\n")
    with pytest.raises(PairsFileError, match="no pairs"):
        load_pairs(path)
    with pytest.raises(PairsFileError, match="not found"):
        load_pairs(tmp_path / "missing.jsonl")


def test_pairs_sharing_an_image_are_each_checked(tmp_path):
    # load_pairs resolves an image once for all its pairs: a missing one is still reported on
    # every line that names it, and the pairs of a present one share its resolved path.
    missing = {"image": "images/none.png"}
    path = write_pairs(tmp_path, 5, overrides={1: missing, 2: {"image": "images/0.png"}, 4: missing})
    with pytest.raises(PairsFileError, match=r"2 problem\(s\)") as err:
        load_pairs(path)
    assert f"{path}:2: image file not found" in str(err.value)
    assert f"{path}:5: image file not found" in str(err.value)
    path = write_pairs(tmp_path, 3, overrides={2: {"image": "images/0.png"}})
    pairs = load_pairs(path)
    assert pairs[0].image == pairs[2].image == (tmp_path / "images" / "0.png").resolve()
    assert pairs[1].image == (tmp_path / "images" / "1.png").resolve()


def test_changing_the_text_of_a_labelled_pair_is_refused(tmp_path):
    db = tmp_path / "labels.sqlite"
    path = write_pairs(tmp_path, 2)
    storage.add_labeler(db, "ann")
    with closing(storage.connect(db)) as conn:
        storage.sync_pairs(conn, load_pairs(path), path)
        storage.record_label(conn, "ann", "p000", "A")
    write_pairs(tmp_path, 2, overrides={0: {"caption_a": "different text"}, 1: {"caption_b": "also changed"}})
    with closing(storage.connect(db)) as conn:
        with pytest.raises(storage.LabelStoreError, match=rf"{path}:1: pair 'p000' already has labels"):
            storage.sync_pairs(conn, load_pairs(path), path)
        # The failed sync rolled back: p001 (unlabelled) kept its old text too.
        assert (
            conn.execute("SELECT caption_b FROM pairs WHERE pair_id = 'p001'").fetchone()[0]
            == "caption B of image 1"
        )
        # A pairs file without p000 serves only p001; p000 and its label stay in the database.
        (tmp_path / "other.jsonl").write_text(path.read_text().splitlines()[1] + "\n")
        storage.sync_pairs(conn, load_pairs(tmp_path / "other.jsonl"), tmp_path / "other.jsonl")
        assert storage.progress(conn, "ann") == storage.Progress(done=0, total=1)
        assert conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 1
        with pytest.raises(storage.UnknownPairError):
            storage.record_label(conn, "ann", "p000", "B")
        assert storage.undo_last(conn, "ann") is None  # ann's only label is on an unserved pair: kept
        assert conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 1


def test_add_labeler_cli_prints_a_token_stored_only_as_a_hash(tmp_path, capsys):
    db = tmp_path / "sub" / "labels.sqlite"
    assert _run_cli(["label", "add-labeler", "alice", "--db", str(db)]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 32
    with closing(storage.connect(db)) as conn:
        assert storage.labeler_for_token(conn, token) == "alice"
        assert storage.labeler_for_token(conn, token + "x") is None
        stored = conn.execute("SELECT token_sha256 FROM labelers").fetchone()[0]
        assert token not in stored
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: fsync at every commit
    assert _run_cli(["label", "add-labeler", "alice", "--db", str(db)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_cli_reports_user_errors_without_traceback(tmp_path, capsys):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"pair_id": 1}\n')
    db = tmp_path / "labels.sqlite"
    assert _run_cli(["label", "serve", "--pairs", str(bad), "--db", str(db), "--port", "9"]) == 1
    assert f"{bad}:1: missing field(s)" in capsys.readouterr().err
    assert (
        _run_cli(["label", "export", "--db", str(tmp_path / "none.sqlite"), "--output", str(tmp_path / "o")])
        == 1
    )
    assert "database not found" in capsys.readouterr().err
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t (x)").connection.close()
    assert (
        _run_cli(["label", "export", "--db", str(tmp_path / "other.sqlite"), "--output", str(tmp_path / "o")])
        == 1
    )
    assert "not a labelling database" in capsys.readouterr().err


def test_label_subcommands_are_registered(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["label", "--help"])
    out = capsys.readouterr().out
    for command in ("serve", "add-labeler", "export"):
        assert command in out
