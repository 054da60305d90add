"""The labelling web app: a static page at `/` and the JSON API it calls under `/api`.

Every `/api` route needs `Authorization: Bearer TOKEN` (the image route also takes
`?token=TOKEN`, for plain `<img>` tags). See docs_fragments/label.md for the API.

Write routes answer 200 only after the label is committed (synchronous=FULL, see
storage.py), so a client that got 200 can forget the label.

Run with `serve(...)` or `mmft label serve`; one uvicorn worker is enough, and SQLite
connections are opened per request, so FastAPI's thread pool can run requests in parallel.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from mmft.label import storage
from mmft.label.pairs import load_pairs

# Requests are a pair_id and a choice; anything near this size is a mistake or an attack.
MAX_BODY_BYTES = 4096
# Batches (GET /api/pairs, POST /api/labels) for scripted and model labelers: at most this many
# pairs a request, and a labels body at most this size (about 1 KiB a label).
MAX_BATCH = 1000
MAX_BATCH_BODY_BYTES = 1 << 20
STATIC_DIR = Path(__file__).parent / "static"

# The page loads only its own files; images come from fetch() as blob: URLs. Even if a
# caption were ever inserted as HTML, inline script and event handlers would not run.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

T = TypeVar("T")


def _bearer_token(request: Request, allow_query: bool = False) -> str:
    """The token from `Authorization: Bearer ...` (or `?token=` when allowed); 401 if absent."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if allow_query and request.query_params.get("token"):
        return request.query_params["token"]
    raise HTTPException(
        401, "missing token: send 'Authorization: Bearer TOKEN'", {"WWW-Authenticate": "Bearer"}
    )


async def _read_json_object(request: Request, allow_empty: bool = False,
                            max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request body as a JSON object, at most `max_bytes`; 413 or 400 otherwise.

    The body is read in chunks and abandoned once over the limit, so a huge upload is never
    held in memory whole, whether or not it declared its Content-Length.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"request body over {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise HTTPException(413, f"request body over {max_bytes} bytes")
    if not body.strip() and allow_empty:
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "request body must be a JSON object")
    return data


def _fields(data: dict[str, Any], names: tuple[str, ...], where: str = "") -> list[str]:
    """The string values of exactly the keys `names`; 422 for missing, extra or non-string keys.
    `where` prefixes the message (the item of a batch)."""
    if not isinstance(data, dict):
        raise HTTPException(422, f"{where}expected a JSON object with the keys {', '.join(names)}")
    extra = sorted(set(data) - set(names))
    missing = [name for name in names if name not in data]
    if extra or missing:
        raise HTTPException(
            422, f"{where}expected exactly the keys {', '.join(names)}; missing {missing}, unexpected {extra}"
        )
    wrong = [name for name in names if not isinstance(data[name], str)]
    if wrong:
        raise HTTPException(422, f"{where}{', '.join(wrong)} must be a string")
    return [data[name] for name in names]


def _batch_size(request: Request) -> int:
    """`?limit=N` of GET /api/pairs: an integer from 1 to MAX_BATCH; 422 otherwise."""
    raw = request.query_params.get("limit", "")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_BATCH:
        raise HTTPException(422, f"limit must be an integer from 1 to {MAX_BATCH}, got {raw!r}")
    return int(raw)


def create_app(db_path: str | Path) -> FastAPI:
    """The FastAPI app over an initialised database whose pairs were synced (see `serve`).

    Args:
        db_path: the labelling database.
    """
    db_path = Path(db_path)
    # No /docs: the interactive docs pull scripts from a CDN, and the API is in label.md.
    app = FastAPI(title="mmft preference labelling", docs_url=None, redoc_url=None, openapi_url=None)

    def authenticate(request: Request, allow_query: bool = False) -> str:
        """The labeler holding the request's token; 401 when it is missing or unknown.

        Runs before the body is read, so nothing about a request is judged for strangers.
        """
        token = _bearer_token(request, allow_query)
        with closing(storage.connect(db_path)) as conn:
            labeler = storage.labeler_for_token(conn, token)
        if labeler is None:
            raise HTTPException(401, "invalid token", {"WWW-Authenticate": "Bearer"})
        return labeler

    def in_store(action: Callable[[sqlite3.Connection], T]) -> T:
        """Run `action(conn)` on a fresh connection, mapping store errors to 404 and 422.

        Runs on a pool thread: sqlite3 calls block, and the fsync at COMMIT takes milliseconds.
        """
        with closing(storage.connect(db_path)) as conn:
            try:
                return action(conn)
            except storage.UnknownPairError as err:
                raise HTTPException(404, str(err)) from None
            except storage.LabelStoreError as err:
                raise HTTPException(422, str(err)) from None

    # Per labeler, a position before which every served pair is visited (storage.next_pair's
    # `start`): each next-pair query then skips the pairs already labelled instead of scanning
    # them all (8 ms per query at 11,000 labelled pairs without it). Kept in memory: a
    # restarted server starts from 0, which is always correct.
    frontier: dict[str, int] = {}

    def next_pairs(conn: sqlite3.Connection, labeler: str, limit: int) -> dict[str, Any]:
        """The labeler's next `limit` pairs (as the page shows them) and progress."""
        pairs = storage.next_pairs(conn, labeler, frontier.get(labeler, 0), limit)
        unvisited = [pair.position for pair in pairs if pair.unvisited]
        if unvisited:  # the first: the later ones are not visited yet
            frontier[labeler] = unvisited[0]
        return {
            "done": not pairs,
            "labeler": labeler,
            "progress": asdict(storage.progress(conn, labeler)),
            "pairs": [
                {
                    "pair_id": pair.pair_id,
                    "prompt": pair.prompt,
                    "caption_a": pair.caption_a,
                    "caption_b": pair.caption_b,
                    "image_url": f"/api/image/{quote(pair.pair_id, safe='')}",
                }
                for pair in pairs
            ],
        }

    def next_payload(conn: sqlite3.Connection, labeler: str) -> dict[str, Any]:
        payload = next_pairs(conn, labeler, 1)
        pairs = payload.pop("pairs")
        if pairs:
            payload.update(pairs[0])
        return payload

    # GET routes are plain functions (FastAPI runs them on its thread pool); POST routes are
    # async to read the body with a size cap, and hand the database work to the pool.

    @app.get("/api/next")
    def get_next(request: Request) -> dict[str, Any]:
        """The labeler's next pair, or {"done": true, ...} when every pair is labelled."""
        labeler = authenticate(request)
        return in_store(lambda conn: next_payload(conn, labeler))

    @app.get("/api/pairs")
    def get_pairs(request: Request) -> dict[str, Any]:
        """`?limit=N`: the labeler's next N pairs, in the order /api/next would give them
        if each were labelled in turn (for scripted and model labelers; see /api/labels)."""
        labeler = authenticate(request)
        limit = _batch_size(request)
        return in_store(lambda conn: next_pairs(conn, labeler, limit))

    @app.get("/api/image/{pair_id:path}")
    def get_image(pair_id: str, request: Request) -> FileResponse:
        """The image of a served pair."""
        authenticate(request, allow_query=True)
        path = in_store(lambda conn: storage.image_path(conn, pair_id))
        if not path.is_file():
            raise HTTPException(404, f"image file of pair {pair_id!r} is missing on the server")
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/label")
    async def post_label(request: Request) -> dict[str, Any]:
        """Store {"pair_id", "choice"}; a repeat for the same pair replaces the choice."""
        labeler = await run_in_threadpool(authenticate, request)
        pair_id, choice = _fields(await _read_json_object(request), ("pair_id", "choice"))

        def action(conn: sqlite3.Connection) -> dict[str, Any]:
            storage.record_label(conn, labeler, pair_id, choice)
            progress = asdict(storage.progress(conn, labeler))
            return {"ok": True, "pair_id": pair_id, "choice": choice, "progress": progress}

        return await run_in_threadpool(in_store, action)

    @app.post("/api/labels")
    async def post_labels(request: Request) -> dict[str, Any]:
        """Store {"labels": [{"pair_id", "choice"}, ...]} (1 to MAX_BATCH) in one transaction:
        all of them, or none when one is invalid (the error names its index)."""
        labeler = await run_in_threadpool(authenticate, request)
        data = await _read_json_object(request, max_bytes=MAX_BATCH_BODY_BYTES)
        if set(data) != {"labels"} or not isinstance(data["labels"], list):
            raise HTTPException(422, 'expected exactly the key labels: a list of {"pair_id", "choice"} objects')
        if not 1 <= len(data["labels"]) <= MAX_BATCH:
            raise HTTPException(422, f"labels must hold 1 to {MAX_BATCH} items, got {len(data['labels'])}")
        labels = [tuple(_fields(item, ("pair_id", "choice"), f"labels[{i}]: "))
                  for i, item in enumerate(data["labels"])]

        def action(conn: sqlite3.Connection) -> dict[str, Any]:
            storage.record_labels(conn, labeler, labels)
            return {"ok": True, "stored": len(labels), "progress": asdict(storage.progress(conn, labeler))}

        return await run_in_threadpool(in_store, action)

    @app.post("/api/skip")
    async def post_skip(request: Request) -> dict[str, Any]:
        """Defer {"pair_id"} to the back of this labeler's queue (nothing is stored as a label)."""
        labeler = await run_in_threadpool(authenticate, request)
        (pair_id,) = _fields(await _read_json_object(request), ("pair_id",))
        await run_in_threadpool(in_store, lambda conn: storage.skip_pair(conn, labeler, pair_id))
        return {"ok": True, "pair_id": pair_id}

    @app.post("/api/undo")
    async def post_undo(request: Request) -> JSONResponse:
        """Remove this labeler's last label; its pair becomes the next one. 409 if none."""
        labeler = await run_in_threadpool(authenticate, request)
        _fields(await _read_json_object(request, allow_empty=True), ())
        undone = await run_in_threadpool(in_store, lambda conn: storage.undo_last(conn, labeler))
        if undone is None:
            return JSONResponse({"ok": False, "detail": "nothing to undo"}, status_code=409)
        return JSONResponse({"ok": True, "pair_id": undone[0], "choice": undone[1]})

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={**_PAGE_HEADERS, "Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)  # no icon; answering spares the browser a 404 in its console

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if request.url.path.startswith("/api/") and not request.url.path.startswith("/api/image/"):
            response.headers["Cache-Control"] = "no-store"  # labels and progress are per-user and live
        return response

    return app


def prepare_database(pairs_path: str | Path, db_path: str | Path) -> int:
    """Validate the pairs file, create the database if needed and sync the pairs into it.

    Returns:
        The number of pairs served.

    Raises:
        PairsFileError: a bad pairs file (message names file and line).
        LabelStoreError: a labelled pair changed its text.
    """
    pairs = load_pairs(pairs_path)
    with closing(storage.connect(db_path, create=True)) as conn:
        storage.sync_pairs(conn, pairs, pairs_path)
    return len(pairs)


def serve(pairs_path: str | Path, db_path: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Sync `pairs_path` into `db_path` and run the app with uvicorn until interrupted."""
    import uvicorn

    count = prepare_database(pairs_path, db_path)
    with closing(storage.connect(db_path)) as conn:
        labelers = storage.count_labelers(conn)
    print(f"serving {count} pairs from {pairs_path}; database {db_path}; {labelers} labeler(s)", flush=True)
    if labelers == 0:
        print(f"no labelers yet: add one with `mmft label add-labeler NAME --db {db_path}`", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {host} over plain HTTP; tokens cross the network unencrypted", flush=True
        )
    print(f"open http://{host}:{port}/", flush=True)
    uvicorn.run(app=create_app(db_path), host=host, port=port, workers=1, log_level="info")
