"""Fixtures for the labelling app: pairs files with small PNGs, and a real server process.

The server runs as `python -m mmft.label serve` in a subprocess on a free 127.0.0.1 port,
exactly as a user starts it, so tests see real HTTP, real uvicorn and real SQLite files.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_pairs(folder: Path, n: int, overrides: dict[int, dict] | None = None) -> Path:
    """Write `n` pairs (ids p000, p001, ...) with 16x16 PNGs under `folder`; return the jsonl path.

    Images use relative paths, as users write them. `overrides[i]` replaces fields of pair i.
    """
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / "pairs.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            Image.new("RGB", (16, 16), (i * 37 % 256, i * 91 % 256, 200)).save(folder / "images" / f"{i}.png")
            record = {
                "pair_id": f"p{i:03d}",
                "image": f"images/{i}.png",
                "prompt": f"Describe image {i}.",
                "caption_a": f"caption A of image {i}",
                "caption_b": f"caption B of image {i}",
                "source": "test",
            }
            record.update((overrides or {}).get(i, {}))
            out.write(json.dumps(record) + "\n")
    return path


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LabelServer:
    """`python -m mmft.label serve` in a subprocess, logging to a file beside the database."""

    def __init__(self, pairs: Path, db: Path):
        self.pairs, self.db = pairs, db
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = db.parent / f"server-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mmft.label",
                    "serve",
                    "--pairs",
                    str(pairs),
                    "--db",
                    str(db),
                    "--port",
                    str(self.port),
                ],
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_until_ready(self, timeout: float = 90.0) -> None:
        # Generous: a server normally answers within 2 s, but on a 2-core machine shared with
        # training jobs Python's imports alone have taken 15 s.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"label server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"label server did not answer within {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flush; what is on disk is all that survives."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def db_labels(db: Path, labeler: str | None = None) -> dict[tuple[str, str], str]:
    """{(labeler, pair_id): choice} read straight from the SQLite file."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT labeler, pair_id, choice FROM labels").fetchall()
    return {(who, pair): choice for who, pair, choice in rows if labeler in (None, who)}


@pytest.fixture
def start_server(tmp_path):
    """Factory: start_server(pairs, db) -> LabelServer; every server is stopped at teardown."""
    servers: list[LabelServer] = []

    def start(pairs: Path, db: Path) -> LabelServer:
        servers.append(LabelServer(pairs, db))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    """One server over 10 pairs for a whole test module; tests isolate by using their own labelers."""
    folder = tmp_path_factory.mktemp("label-module")
    server = LabelServer(write_pairs(folder, 10), folder / "labels.sqlite")
    yield server
    server.stop()
