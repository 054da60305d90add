"""SPICE (Anderson et al. 2016) through pycocoevalcap's spice-1.0.jar.

SPICE parses captions into scene graphs with Stanford CoreNLP 3.6.0, whose two jars are not
shipped with pycocoevalcap: its ``get_stanford_models`` downloads them on first use, which
fails without internet. `Spice` checks for them up front and raises `SpiceModelsMissing`
naming the files and the folder they must go in.

Each call runs one JVM over the whole batch (SPICE has no streaming mode) and loads the
CoreNLP models (tens of seconds), so SPICE suits evaluation and infrequent reward calls
better than per-step rewards.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reward_models._text import ReferenceReward
from reward_models.tokenize import java_executable, pycocoevalcap_dir

CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
CORENLP_ZIP = "http://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip"


class SpiceModelsMissing(FileNotFoundError):
    """The Stanford CoreNLP 3.6.0 jars that SPICE needs are not installed."""


def spice_dir() -> Path:
    return pycocoevalcap_dir() / "spice"


def missing_models(lib_dir: str | os.PathLike | None = None) -> list[Path]:
    """The CoreNLP jars absent from ``lib_dir`` (default: pycocoevalcap/spice/lib)."""
    lib = Path(lib_dir) if lib_dir is not None else spice_dir() / "lib"
    return [lib / name for name in CORENLP_JARS if not (lib / name).is_file()]


class Spice(ReferenceReward):
    """SPICE F-score per sample, as pycocoevalcap's ``Spice`` computes it (``All/f``).

    Args:
        lib_dir: folder holding ``stanford-corenlp-3.6.0.jar`` and
            ``stanford-corenlp-3.6.0-models.jar`` (default: pycocoevalcap/spice/lib, where
            pycocoevalcap's own downloader puts them).
        cache_dir: SPICE's parse cache (``-cache``); None disables it. The cache uses LMDB and
            fst serialisation, which can fail on Java 9+, hence off by default.
        max_memory: JVM heap, "8G" as in pycocoevalcap.
        name: the reward's ``__name__``.

    Raises:
        SpiceModelsMissing: at construction, when the CoreNLP jars are absent.
    """

    def __init__(
        self,
        lib_dir: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        max_memory: str = "8G",
        name: str = "spice",
    ):
        self.__name__ = name
        self.lib_dir = Path(lib_dir) if lib_dir is not None else spice_dir() / "lib"
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.max_memory = max_memory
        jar = spice_dir() / "spice-1.0.jar"
        if not jar.is_file():
            raise FileNotFoundError(f"{name}: SPICE jar not found at {jar}; reinstall pycocoevalcap")
        missing = missing_models(self.lib_dir)
        if missing:
            names = " and ".join(p.name for p in missing)
            raise SpiceModelsMissing(
                f"{name}: SPICE needs Stanford CoreNLP 3.6.0, but {names} "
                f"{'is' if len(missing) == 1 else 'are'} missing from {self.lib_dir}. "
                f"Copy {CORENLP_JARS[0]} and {CORENLP_JARS[1]} into {self.lib_dir} (or pass lib_dir=<folder "
                f"holding them>). Both are inside {CORENLP_ZIP} (folder stanford-corenlp-full-2015-12-09/); on "
                f'a machine with internet, `python -c "from pycocoevalcap.spice.get_stanford_models import '
                f'get_stanford_models; get_stanford_models()"` downloads them into pycocoevalcap/spice/lib.'
            )
        java_executable()  # fail now, not at the first reward call

    def _command(self, in_file: str, out_file: str) -> list[str]:
        spice = spice_dir()
        # an explicit class path, so the CoreNLP jars may live outside site-packages
        jars = [
            spice / "spice-1.0.jar",
            *sorted((spice / "lib").glob("*.jar")),
            *(self.lib_dir / n for n in CORENLP_JARS),
        ]
        cmd = [java_executable(), f"-Xmx{self.max_memory}", "-cp", os.pathsep.join(map(str, jars))]
        cmd += ["edu.anu.spice.SpiceScorer", in_file, "-out", out_file, "-subset", "-silent"]
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            cmd += ["-cache", str(self.cache_dir)]
        return cmd

    def compute(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[dict]:
        """SPICE's full per-sample output: one dict of categories -> {pr, re, f, ...} per sample."""
        if len(candidates) != len(references):
            raise ValueError(
                f"{self.__name__}: {len(candidates)} candidates but {len(references)} reference lists"
            )
        if not len(candidates):
            return []
        with tempfile.TemporaryDirectory(prefix="mmft-spice-") as tmp:
            in_file, out_file = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
            with open(in_file, "w", encoding="utf-8") as f:
                json.dump(
                    [
                        {"image_id": i, "test": c, "refs": list(r)}
                        for i, (c, r) in enumerate(zip(candidates, references))
                    ],
                    f,
                )
            proc = subprocess.run(
                self._command(in_file, out_file), cwd=spice_dir(), capture_output=True, check=False
            )
            if proc.returncode != 0:
                raise RuntimeError(
                    f"{self.__name__}: SPICE exited with {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}"
                )
            with open(out_file, encoding="utf-8") as f:
                results = json.load(f)
        by_id = {item["image_id"]: item["scores"] for item in results}
        return [by_id[i] for i in range(len(candidates))]

    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """Per-sample SPICE F (``All/f``), (B,) float64; NaN where SPICE gives none (no tuples at all)."""
        out = []
        for scores in self.compute(candidates, references):
            f = scores["All"]["f"]
            out.append(float(f) if f is not None else math.nan)
        return np.asarray(out, dtype=np.float64)

    def __call__(self, prompts=None, completions=None, references=None, **kwargs) -> list[float | None]:
        # NaN (no scene-graph tuples on either side) becomes None: the reward does not apply
        return [
            None if v is None or math.isnan(v) else v
            for v in super().__call__(prompts, completions, references, **kwargs)
        ]

    def _score_texts(self, candidates: list[str], references: list[list[str]]) -> np.ndarray:
        return self.score(candidates, references)
