"""The JSON API against a real server process: auth, bad input, idempotency, skip, undo, images."""

from __future__ import annotations

import itertools
import re

import httpx
import pytest

from mmft.label.storage import add_labeler

from .conftest import db_labels

_names = itertools.count()


@pytest.fixture
def client(module_server):
    """An httpx client logged in as a fresh labeler (so tests sharing the server do not interact)."""
    name = f"labeler{next(_names)}"
    token = add_labeler(module_server.db, name)
    with httpx.Client(
        base_url=module_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as http:
        http.labeler, http.token = name, token
        yield http


def test_every_api_route_needs_a_valid_token(module_server, client):
    routes = [
        ("GET", "/api/next", None),
        ("GET", "/api/pairs?limit=2", None),
        ("GET", "/api/image/p000", None),
        ("POST", "/api/label", {"pair_id": "p000", "choice": "A"}),
        ("POST", "/api/labels", {"labels": [{"pair_id": "p000", "choice": "A"}]}),
        ("POST", "/api/skip", {"pair_id": "p000"}),
        ("POST", "/api/undo", {}),
    ]
    before = db_labels(module_server.db)
    with httpx.Client(base_url=module_server.url, timeout=10) as anonymous:
        for method, path, body in routes:
            for headers in (
                {},
                {"Authorization": "Bearer not-a-token"},
                {"Authorization": f"Basic {client.token}"},
            ):
                response = anonymous.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/api/image/p000", params={"token": "wrong"}).status_code == 401
        # Authentication comes before the body is judged: a bad token with a bad body is 401.
        bad = anonymous.post("/api/label", content=b"{", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
    assert db_labels(module_server.db) == before
    # The valid token works on the same routes.
    assert client.get("/api/next").json()["pair_id"] == "p000"


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b'{"pair_id": "p000", "choice": "A"', {}, 400),  # truncated JSON
        (b"\xff\xfe not utf-8", {}, 400),
        (b'["p000", "A"]', {}, 400),  # not an object
        (b'{"pair_id": "p000"}', {}, 422),  # choice missing
        (b'{"pair_id": "p000", "choice": "C"}', {}, 422),  # unknown choice
        (b'{"pair_id": "p000", "choice": "a"}', {}, 422),  # choices are case-sensitive
        (b'{"pair_id": "p000", "choice": 1}', {}, 422),
        (b'{"pair_id": "p000", "choice": "A", "labeler": "someone-else"}', {}, 422),  # extra key
        (b'{"pair_id": "nope", "choice": "A"}', {}, 404),  # unknown pair
        (b'{"pair_id": "p000", "choice": "A", "pad": "' + b"x" * 5000 + b'"}', {}, 413),  # declared length
    ],
)
def test_bad_label_requests_are_rejected_and_change_nothing(module_server, client, body, headers, status):
    before = db_labels(module_server.db)
    response = client.post(
        "/api/label", content=body, headers={"Content-Type": "application/json", **headers}
    )
    assert response.status_code == status, response.text
    assert "detail" in response.json()
    assert db_labels(module_server.db) == before
    assert client.get("/api/next").json()["progress"] == {"done": 0, "total": 10}


def test_oversized_body_without_content_length_is_rejected(module_server, client):
    """A chunked upload declares no size; the server stops reading at 4 KiB instead of buffering it."""
    before = db_labels(module_server.db)

    def chunks():
        yield b'{"pair_id": "p000", "choice": "A", "pad": "'
        for _ in range(64):
            yield b"x" * 1024
        yield b'"}'

    response = client.post("/api/label", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert db_labels(module_server.db) == before


def test_bad_skip_and_undo_requests_change_nothing(module_server, client):
    assert client.post("/api/label", json={"pair_id": "p000", "choice": "A"}).status_code == 200
    before = db_labels(module_server.db)
    assert client.post("/api/skip", json={"pair_id": "missing"}).status_code == 404
    assert client.post("/api/skip", json={"pair": "p001"}).status_code == 422
    assert client.post("/api/undo", content=b"{not json").status_code == 400
    assert client.post("/api/undo", json={"pair_id": "p000"}).status_code == 422
    assert db_labels(module_server.db) == before
    assert client.get("/api/next").json()["pair_id"] == "p001"  # the failed skip did not reorder


def test_repeated_submission_keeps_one_row_with_the_last_choice(module_server, client):
    for choice in ("A", "A", "B"):
        response = client.post("/api/label", json={"pair_id": "p003", "choice": choice})
        assert response.status_code == 200
        assert response.json()["progress"] == {"done": 1, "total": 10}
    assert db_labels(module_server.db, client.labeler) == {(client.labeler, "p003"): "B"}


def test_next_walks_the_pairs_in_file_order_and_reports_done(module_server, client):
    seen = []
    for expected_done in range(10):
        pair = client.get("/api/next").json()
        assert pair["done"] is False
        assert pair["progress"] == {"done": expected_done, "total": 10}
        assert pair["labeler"] == client.labeler
        assert pair["image_url"] == f"/api/image/{pair['pair_id']}"
        seen.append(pair["pair_id"])
        assert (
            client.post("/api/label", json={"pair_id": pair["pair_id"], "choice": "tie"}).status_code == 200
        )
    assert seen == [f"p{i:03d}" for i in range(10)]
    assert pair["caption_a"] == "caption A of image 9" and pair["prompt"] == "Describe image 9."
    assert client.get("/api/next").json() == {
        "done": True,
        "labeler": client.labeler,
        "progress": {"done": 10, "total": 10},
    }


def test_undo_removes_the_last_label_and_makes_its_pair_next(module_server, client):
    assert client.post("/api/undo").status_code == 409  # nothing yet
    for pair_id, choice in (("p000", "A"), ("p001", "B"), ("p002", "both_bad")):
        assert client.post("/api/label", json={"pair_id": pair_id, "choice": choice}).status_code == 200
    # Re-labelling p000 makes it the most recent label.
    assert client.post("/api/label", json={"pair_id": "p000", "choice": "tie"}).status_code == 200

    undone = client.post("/api/undo")
    assert undone.status_code == 200
    assert undone.json() == {"ok": True, "pair_id": "p000", "choice": "tie"}
    assert db_labels(module_server.db, client.labeler) == {
        (client.labeler, "p001"): "B",
        (client.labeler, "p002"): "both_bad",
    }
    assert client.get("/api/next").json()["pair_id"] == "p000"

    assert client.post("/api/undo", json={}).json()["pair_id"] == "p002"
    # The most recently undone pair comes first, even though p000 is earlier in the file.
    assert client.get("/api/next").json()["pair_id"] == "p002"
    assert client.post("/api/label", json={"pair_id": "p002", "choice": "A"}).status_code == 200
    assert client.get("/api/next").json()["pair_id"] == "p000"
    assert db_labels(module_server.db, client.labeler) == {
        (client.labeler, "p001"): "B",
        (client.labeler, "p002"): "A",
    }


def test_skip_defers_a_pair_to_the_end_without_losing_it(module_server, client):
    assert client.post("/api/skip", json={"pair_id": "p000"}).status_code == 200
    assert client.post("/api/skip", json={"pair_id": "p001"}).status_code == 200
    order = []
    while not (pair := client.get("/api/next").json())["done"]:
        order.append(pair["pair_id"])
        assert client.post("/api/label", json={"pair_id": pair["pair_id"], "choice": "A"}).status_code == 200
    assert order == [f"p{i:03d}" for i in range(2, 10)] + ["p000", "p001"]
    assert len(db_labels(module_server.db, client.labeler)) == 10
    assert pair["progress"] == {"done": 10, "total": 10}


def test_batches_follow_next_and_store_all_labels_in_one_request(module_server, client):
    """GET /api/pairs gives the pairs /api/next would give one by one (an undone pair first,
    skipped ones last); POST /api/labels stores a batch, the last choice per pair counting."""
    for pair_id, choice in (("p000", "A"), ("p001", "B")):
        assert client.post("/api/label", json={"pair_id": pair_id, "choice": choice}).status_code == 200
    assert client.post("/api/undo").json()["pair_id"] == "p001"
    assert client.post("/api/skip", json={"pair_id": "p002"}).status_code == 200

    batch = client.get("/api/pairs", params={"limit": 4}).json()
    assert [p["pair_id"] for p in batch["pairs"]] == ["p001", "p003", "p004", "p005"]
    assert batch["done"] is False and batch["progress"] == {"done": 1, "total": 10}
    assert batch["pairs"][1] == {"pair_id": "p003", "prompt": "Describe image 3.", "caption_a": "caption A of image 3",
                                 "caption_b": "caption B of image 3", "image_url": "/api/image/p003"}
    # The whole remaining order in one batch: the skipped p002 comes last.
    everything = client.get("/api/pairs", params={"limit": 1000}).json()["pairs"]
    assert [p["pair_id"] for p in everything] == ["p001"] + [f"p{i:03d}" for i in range(3, 10)] + ["p002"]

    stored = client.post("/api/labels", json={"labels": [
        {"pair_id": "p001", "choice": "tie"}, {"pair_id": "p003", "choice": "A"},
        {"pair_id": "p001", "choice": "both_bad"},  # a repeat within the batch: the last counts
    ]})
    assert stored.status_code == 200, stored.text
    assert stored.json() == {"ok": True, "stored": 3, "progress": {"done": 3, "total": 10}}
    # Retrying the same batch changes nothing.
    assert client.post("/api/labels", json={"labels": [{"pair_id": "p003", "choice": "A"}]}).status_code == 200
    assert client.get("/api/next").json()["pair_id"] == "p004"
    rest = [p["pair_id"] for p in client.get("/api/pairs", params={"limit": 10}).json()["pairs"]]
    assert client.post("/api/labels", json={"labels": [{"pair_id": i, "choice": "B"} for i in rest]}).status_code == 200
    assert client.get("/api/pairs", params={"limit": 5}).json() == {
        "done": True, "labeler": client.labeler, "progress": {"done": 10, "total": 10}, "pairs": []}
    labels = db_labels(module_server.db, client.labeler)
    assert len(labels) == 10
    assert labels[client.labeler, "p000"] == "A" and labels[client.labeler, "p001"] == "both_bad"
    assert labels[client.labeler, "p003"] == "A" and labels[client.labeler, "p002"] == "B"


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"labels": [{"pair_id": "p000", "choice": "A"}, {"pair_id": "nope", "choice": "A"}]}, 404, "label 1"),
        ({"labels": [{"pair_id": "p000", "choice": "A"}, {"pair_id": "p001", "choice": "C"}]}, 422, "label 1"),
        ({"labels": [{"pair_id": "p000", "choice": "A"}, {"pair_id": "p001"}]}, 422, "labels[1]"),
        ({"labels": [{"pair_id": "p000", "choice": "A"}, ["p001", "A"]]}, 422, "labels[1]"),
        ({"labels": [{"pair_id": "p000", "choice": "A", "labeler": "x"}]}, 422, "labels[0]"),
        ({"labels": []}, 422, "1 to 1000"),
        ({"labels": [{"pair_id": "p000", "choice": "A"}] * 1001}, 422, "1 to 1000"),
        ({"labels": {"pair_id": "p000", "choice": "A"}}, 422, "list"),
        ({"pair_id": "p000", "choice": "A"}, 422, "labels"),
        ({"labels": [{"pair_id": "p000", "choice": "A", "pad": "x" * (1 << 20)}]}, 413, "bytes"),
    ],
)
def test_a_bad_label_batch_is_rejected_whole(module_server, client, body, status, detail):
    """One bad item rejects the batch: nothing of it is stored, and the error names the item."""
    before = db_labels(module_server.db)
    response = client.post("/api/labels", json=body)
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    assert db_labels(module_server.db) == before
    assert client.get("/api/next").json()["progress"] == {"done": 0, "total": 10}


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "two", ""])
def test_pairs_batch_size_must_be_1_to_1000(client, limit):
    response = client.get("/api/pairs", params={"limit": limit})
    assert response.status_code == 422
    assert "limit" in response.json()["detail"]


def test_image_route_serves_the_pair_image_with_header_or_query_token(module_server, client):
    expected = (module_server.pairs.parent / "images" / "4.png").read_bytes()
    by_header = client.get("/api/image/p004")
    assert by_header.status_code == 200
    assert by_header.headers["content-type"] == "image/png"
    assert by_header.content == expected
    with httpx.Client(base_url=module_server.url, timeout=10) as anonymous:
        assert anonymous.get("/api/image/p004", params={"token": client.token}).content == expected
    assert client.get("/api/image/p999").status_code == 404
    assert client.get("/api/image/..%2F..%2Fpairs.jsonl").status_code == 404


def test_page_and_assets_are_self_contained(module_server):
    page = httpx.get(module_server.url + "/")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text
        response = httpx.get(module_server.url + asset)
        assert response.status_code == 200
        assert "http://" not in response.text and "https://" not in response.text  # no CDN
    # The browser test checks the rendering; this catches an HTML sink added anywhere in the script.
    script = httpx.get(module_server.url + "/static/app.js").text
    assert not re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write", script)
    assert httpx.get(module_server.url + "/docs").status_code == 404  # the docs page would load a CDN
