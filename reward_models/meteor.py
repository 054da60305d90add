"""METEOR 1.5 through pycocoevalcap's jar, in one persistent Java process per `Meteor` object.

Same command line and protocol as ``pycocoevalcap.meteor.meteor.Meteor`` (``-stdio -l en
-norm``, one ``SCORE`` line per sample, then one ``EVAL`` line), so the numbers are identical.
Differences that matter for training: the JVM starts lazily on the first call (so the object
pickles cheaply into dataloader or trainer workers: the process is not part of its state),
calls are serialised by a lock, a process that died is restarted (and the batch retried
once), and the process is closed when the object is collected or the interpreter exits.
"""

from __future__ import annotations

import subprocess
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reward_models._text import ReferenceReward
from reward_models.tokenize import java_executable, pycocoevalcap_dir

# Lines written before reading the replies back: keeps both pipe buffers far from full, which
# would otherwise deadlock the two processes.
_CHUNK = 256


def _close(holder: dict) -> None:
    proc = holder.get("proc")
    holder["proc"] = None
    if proc is not None and proc.poll() is None:
        try:
            proc.stdin.close()
        except OSError:
            pass
        proc.kill()
        proc.wait(timeout=10)


class Meteor(ReferenceReward):
    """METEOR reward (pycocoevalcap's meteor-1.5.jar) against the ``references`` column.

    Args:
        max_memory: JVM heap (``-Xmx``), "2G" as in pycocoevalcap.
        name: the reward's ``__name__``.

    Inputs are used as given (pycocoevalcap tokenises with PTB first; pass tokenised text for
    official numbers). Newlines are replaced by spaces since the protocol is line based.
    """

    def __init__(self, max_memory: str = "2G", name: str = "meteor"):
        self.__name__ = name
        self.max_memory = max_memory
        self._setup()

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._holder: dict = {"proc": None}
        self._finalizer = weakref.finalize(self, _close, self._holder)

    def __getstate__(self) -> dict:
        return {"__name__": self.__name__, "max_memory": self.max_memory}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._setup()

    @property
    def jar(self) -> Path:
        return pycocoevalcap_dir() / "meteor" / "meteor-1.5.jar"

    @property
    def pid(self) -> int | None:
        """Process id of the running JVM (None before the first call)."""
        proc = self._holder["proc"]
        return proc.pid if proc is not None and proc.poll() is None else None

    def _process(self) -> subprocess.Popen:
        proc = self._holder["proc"]
        if proc is None or proc.poll() is not None:
            jar = self.jar
            if not jar.is_file():
                raise FileNotFoundError(
                    f"{self.__name__}: METEOR jar not found at {jar}; reinstall pycocoevalcap"
                )
            cmd = [
                java_executable(),
                "-jar",
                f"-Xmx{self.max_memory}",
                jar.name,
                "-",
                "-",
                "-stdio",
                "-l",
                "en",
                "-norm",
            ]
            proc = subprocess.Popen(
                cmd, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
            self._holder["proc"] = proc
        return proc

    def close(self) -> None:
        """Stop the JVM now (it restarts on the next call)."""
        with self._lock:
            _close(self._holder)

    def _readline(self, proc: subprocess.Popen) -> str:
        line = proc.stdout.readline()
        if not line:
            raise BrokenPipeError("METEOR process closed its output")
        return line.decode("utf-8").strip()

    def _run(
        self, candidates: Sequence[str], references: Sequence[Sequence[str]]
    ) -> tuple[float, list[float]]:
        proc = self._process()
        stats: list[str] = []
        for lo in range(0, len(candidates), _CHUNK):
            lines = []
            for hyp, refs in zip(candidates[lo : lo + _CHUNK], references[lo : lo + _CHUNK]):
                # pycocoevalcap's _stat: the hypothesis loses "|||" and double spaces
                hyp = hyp.replace("|||", "").replace("  ", " ")
                # a "|||" inside a reference would shift the fields (pycocoevalcap does not guard it)
                line = " ||| ".join(("SCORE", " ||| ".join(r.replace("|||", "") for r in refs), hyp))
                lines.append(line.replace("\n", " ").replace("\r", " ") + "\n")
            proc.stdin.write("".join(lines).encode("utf-8"))
            proc.stdin.flush()
            stats.extend(self._readline(proc) for _ in lines)
        proc.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode("utf-8"))
        proc.stdin.flush()
        scores = [float(self._readline(proc)) for _ in stats]
        return float(self._readline(proc)), scores

    def compute(
        self, candidates: Sequence[str], references: Sequence[Sequence[str]]
    ) -> tuple[float, list[float]]:
        """(corpus METEOR, per-sample METEOR) as pycocoevalcap's ``compute_score`` returns them."""
        if len(candidates) != len(references):
            raise ValueError(
                f"{self.__name__}: {len(candidates)} candidates but {len(references)} reference lists"
            )
        if not len(candidates):
            return 0.0, []
        with self._lock:
            try:
                return self._run(candidates, references)
            except (BrokenPipeError, ValueError, OSError):
                # the JVM died (killed, out of memory) or replied garbage: start afresh, retry once
                _close(self._holder)
                try:
                    return self._run(candidates, references)
                except (BrokenPipeError, ValueError, OSError) as err:
                    proc = self._holder["proc"]
                    code = None if proc is None else proc.poll()
                    _close(self._holder)
                    raise RuntimeError(
                        f"reward {self.__name__!r}: the METEOR JVM (java -Xmx{self.max_memory} -jar {self.jar}) failed "
                        f"twice (exit code {code}): {err!r}. Check that Java runs and has {self.max_memory} of memory "
                        f"(Meteor(max_memory=...))"
                    ) from err

    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """Per-sample METEOR, (B,) float64."""
        return np.asarray(self.compute(candidates, references)[1], dtype=np.float64)

    def _score_texts(self, candidates: list[str], references: list[list[str]]) -> np.ndarray:
        return self.score(candidates, references)
