"""PTB-style tokenisation as pycocoevalcap applies it before scoring captions.

pycocoevalcap runs Stanford CoreNLP 3.4.1's ``PTBTokenizer -preserveLines -lowerCase`` and
then drops the punctuation tokens in `PUNCTUATIONS`. Two implementations:

- `ptb_tokenize`: pure Python, no Java; reproduces the Java tokens on all 40,460
  Flickr8k captions (measured by ``tests/reward_models/test_tokenize.py``; see
  ``docs_fragments/rewards.md`` for the rules that are approximated). The default of every reward.
- `JavaPTBTokenizer`: the real thing, one Java process per batch (``tokenizer="ptb"``).

Both return, per input text, the tokens joined by single spaces, which is the form
pycocoevalcap's metrics read (they split on whitespace again).

The punctuation list is pycocoevalcap's and is case-sensitive: after ``-lowerCase`` the
bracket tokens are ``-lrb-``/``-rrb-`` and therefore survive, exactly as in pycocoevalcap.
Per ppo_spec.md ("keep the end-of-sentence in candidates") nothing beyond this list is
stripped: a reward sees the same tokens the official metric sees.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

# pycocoevalcap/tokenizer/ptbtokenizer.py, verbatim (case-sensitive on purpose, see above).
PUNCTUATIONS: frozenset[str] = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Words CoreNLP keeps together with their final period (PTBLexer's abbreviation lists, the
# subset that can occur in captions). Single letters ("j.") and dotted acronyms ("u.s.") are
# recognised by pattern below.
_ABBREVIATIONS = frozenset(
    """mr mrs ms dr jr sr st mt ft vs etc inc ltd co corp jan feb mar apr jun jul aug sep sept oct
    nov dec ave blvd rd prof gen sgt capt lt col gov sen rep rev messrs mssrs no""".split()
)
_DOTTED = re.compile(r"^(?:[a-z]\.)+[a-z]$", re.IGNORECASE)
# Characters PTBLexer always splits off as their own token (wherever they occur in a word).
_ALWAYS_SPLIT = re.compile(r"""([;!?#$%&=+~^|\\_"(){}\[\]])""")
_OPEN_BRACKETS = {"(": "-LRB-", "[": "-LSB-", "{": "-LCB-"}
_CLOSE_BRACKETS = {")": "-RRB-", "]": "-RSB-", "}": "-RCB-"}
_CONTRACTION = re.compile(r"^(.+?)(n't|'s|'m|'d|'re|'ve|'ll)$", re.IGNORECASE)
# Informal forms PTBLexer splits into two tokens.
_SPLIT_WORDS = {
    "cannot": ("can", "not"),
    "gonna": ("gon", "na"),
    "wanna": ("wan", "na"),
    "gotta": ("got", "ta"),
}
# Words that start with an apostrophe and stay whole ("rock 'n' roll", "'90s").
_APOSTROPHE_WORD = re.compile(r"^(?:'(?:n'?|\d+s?|em|tis|twas|s|m|d|re|ve|ll)|n't)$", re.IGNORECASE)


def _split_word(word: str) -> list[str]:
    """Tokens of one chunk that holds no whitespace and no always-split symbol."""
    if not word:
        return []
    if set(word) == {"-"}:
        return [word]  # "-" and "--" are one punctuation token each
    head: list[str] = []
    tail: list[str] = []
    # A leading contraction glued to a hyphenated word ("'s-eye-view" -> 's - eye-view).
    m = re.match(r"^('s|'re|'ve|'ll|'m|'d)-(.+)$", word, re.IGNORECASE)
    if m:
        return [m.group(1), "-", *_split_word(m.group(2))]
    # A leading dash before a letter is punctuation ("-ependent").
    while len(word) > 1 and word[0] == "-" and word[1].isalpha():
        head.append("-")
        word = word[1:]
    # Opening quotes / apostrophes.
    while word and word[0] in "'`" and not _APOSTROPHE_WORD.match(word):
        head.append("`")
        word = word[1:]
    # Closing punctuation, innermost last.
    while word:
        if word.endswith("..."):
            tail.append("...")
            word = word[:-3]
        elif word[-1] == ".":
            stem = word[:-1]
            if stem and (
                len(stem) == 1 and stem.isalpha() or stem.lower() in _ABBREVIATIONS or _DOTTED.match(stem)
            ):
                break  # an abbreviation keeps its period
            tail.append(".")
            word = stem
        elif word[-1] in ",:":
            tail.append(word[-1])
            word = word[:-1]
        elif word[-1] in "'`" and not _APOSTROPHE_WORD.match(word):
            tail.append(word[-1])
            word = word[:-1]
        elif word[-1] == "-" and len(word) > 1:
            tail.append("-")
            word = word[:-1]
        else:
            break
    middle: list[str] = []
    if word:
        low = word.lower()
        if low in _SPLIT_WORDS:
            first, second = _SPLIT_WORDS[low]
            middle = [word[: len(first)], word[len(first) :]]
        else:
            m = _CONTRACTION.match(word)
            if m and m.group(2).lower() == "n't" and m.group(1).lower() in ("ca", "wo", "ai"):
                middle = [m.group(1), m.group(2)]
            elif m and not (m.group(2).lower() == "n't" and m.group(1).endswith("'")):
                middle = [m.group(1), m.group(2)]
            else:
                middle = [word]
    return head + middle + tail[::-1]


def ptb_tokens(text: str, lowercase: bool = True, remove_punctuation: bool = True) -> list[str]:
    """PTB tokens of ``text`` as pycocoevalcap's tokenizer produces them.

    Args:
        text: one caption (any casing, newlines allowed).
        lowercase: lowercase tokens (``-lowerCase``); pycocoevalcap always does.
        remove_punctuation: drop tokens in `PUNCTUATIONS` (pycocoevalcap always does).
    Returns:
        list of tokens, e.g. ``"A dog's ball (red)."`` -> ``["a", "dog", "'s", "ball", "-lrb-", "red", "-rrb-"]``.
    """
    tokens: list[str] = []
    for chunk in text.split():
        for piece in _ALWAYS_SPLIT.split(chunk):
            if not piece:
                continue
            if piece in _OPEN_BRACKETS:
                tokens.append(_OPEN_BRACKETS[piece])
            elif piece in _CLOSE_BRACKETS:
                tokens.append(_CLOSE_BRACKETS[piece])
            elif piece == '"':
                tokens.append("``" if not tokens or tokens[-1] in _OPEN_BRACKETS.values() else "''")
            elif _ALWAYS_SPLIT.fullmatch(piece):
                tokens.append(piece)
            else:
                tokens.extend(_split_word_commas(piece))
    if lowercase:
        tokens = [t.lower() for t in tokens]
    if remove_punctuation:
        tokens = [t for t in tokens if t not in PUNCTUATIONS]
    return tokens


def _split_word_commas(piece: str) -> list[str]:
    """Split a chunk on commas that are not digit group separators ("1,000" stays whole)."""
    if "," not in piece.rstrip(","):
        return _split_word(piece)
    out: list[str] = []
    for part in re.split(r"((?<!\d),|,(?!\d))", piece):
        if part == ",":
            out.append(",")
        elif part:
            out.extend(_split_word(part))
    return out


# Most captions are plain words with at most a final period: for those PTB tokenisation is
# lower-casing and dropping the period, unless the last word is an abbreviation that keeps it.
_SPLIT_WORD_RE = re.compile(r"(?i)\b(?:" + "|".join(_SPLIT_WORDS) + r")\b")
_PLAIN = re.compile(r"^\s*((?:[A-Za-z0-9]+\s+)*?[A-Za-z0-9]+)?\s*(\.)?\s*$")


@functools.lru_cache(maxsize=1 << 17)
def ptb_tokenize(text: str) -> str:
    """`ptb_tokens` joined by single spaces (lowercased, punctuation removed); cached because rewards
    see the same reference captions every epoch."""
    m = _PLAIN.match(text)
    if m is not None and not _SPLIT_WORD_RE.search(text):
        body = m.group(1) or ""
        if m.group(2) and body and not text.rstrip()[-2:-1].isspace():
            last = body.rsplit(None, 1)[-1]
            if len(last) == 1 or last.lower() in _ABBREVIATIONS:
                return " ".join(ptb_tokens(text))  # "... St." keeps its period: the general path
        return " ".join(body.lower().split())
    return " ".join(ptb_tokens(text))


def _java_executable() -> str:
    java = shutil.which("java")
    if java is None:
        raise RuntimeError(
            "the Java PTB tokenizer needs a `java` executable on PATH (Java 8 or newer, e.g. "
            "`apt-get install default-jre-headless`); or use the pure-Python tokenizer (tokenizer='python')"
        )
    return java


def pycocoevalcap_dir() -> Path:
    """Folder of the installed pycocoevalcap package (a namespace package: no ``__file__``)."""
    import pycocoevalcap

    return Path(list(pycocoevalcap.__path__)[0])


def java_executable() -> str:
    """Path of ``java``, or a RuntimeError saying how to get one."""
    return _java_executable()


def _corenlp_jar() -> Path:
    jar = pycocoevalcap_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    if not jar.is_file():
        raise FileNotFoundError(
            f"pycocoevalcap's CoreNLP jar is missing: expected {jar}; reinstall pycocoevalcap"
        )
    return jar


class JavaPTBTokenizer:
    """pycocoevalcap's PTB tokenisation run in one Java process per batch.

    Identical output to ``pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer`` but takes and returns
    plain lists and writes its temporary file outside site-packages.
    """

    def __call__(self, texts: Sequence[str]) -> list[str]:
        """Tokenise ``texts`` (shape (N,)) -> N space-joined token strings."""
        if not texts:
            return []
        cmd = [_java_executable(), "-cp", str(_corenlp_jar()), "edu.stanford.nlp.process.PTBTokenizer"]
        cmd += ["-preserveLines", "-lowerCase"]
        with tempfile.TemporaryDirectory(prefix="mmft-ptb-") as tmp:
            path = os.path.join(tmp, "captions.txt")
            with open(path, "w", encoding="utf-8") as f:
                # One caption per line; an empty caption becomes a line with one space so the
                # line count stays aligned.
                f.write("\n".join(t.replace("\n", " ").replace("\r", " ") or " " for t in texts))
            proc = subprocess.run(cmd + [path], capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"Java PTBTokenizer failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}"
            )
        lines = proc.stdout.decode("utf-8").split("\n")
        if len(lines) > len(texts) and all(not line for line in lines[len(texts) :]):
            lines = lines[: len(texts)]
        if len(lines) != len(texts):
            raise RuntimeError(f"Java PTBTokenizer returned {len(lines)} lines for {len(texts)} captions")
        return [
            " ".join(w for w in line.rstrip().split(" ") if w and w not in PUNCTUATIONS) for line in lines
        ]


def _whitespace(texts: Sequence[str]) -> list[str]:
    return list(texts)


def _python(texts: Sequence[str]) -> list[str]:
    return [ptb_tokenize(t) for t in texts]


class _CallableTokenizer:
    """Adapts a user callable ``str -> list[str] | str`` to the batch form."""

    def __init__(self, fn: Callable[[str], Sequence[str] | str]):
        self.fn = fn

    def __call__(self, texts: Sequence[str]) -> list[str]:
        out = []
        for t in texts:
            tok = self.fn(t)
            out.append(tok if isinstance(tok, str) else " ".join(tok))
        return out


BatchTokenizer = Callable[[Sequence[str]], list[str]]


def get_tokenizer(spec: str | Callable[[str], Sequence[str] | str] | None) -> tuple[str, BatchTokenizer]:
    """Resolve a tokenizer option to ``(name, batch_fn)``; ``batch_fn(texts) -> list[str]``.

    ``"python"`` (default): `ptb_tokenize`; ``"ptb"``: `JavaPTBTokenizer`; ``"none"``: input is
    already tokenised (whitespace-separated, used as is, as pycocoevalcap's scorers take it);
    a callable: ``str -> list[str]`` (or a joined string).
    """
    if spec is None or spec == "python":
        return "python", _python
    if spec == "ptb":
        return "ptb", JavaPTBTokenizer()
    if spec == "none":
        return "none", _whitespace
    if callable(spec):
        name = getattr(spec, "__qualname__", type(spec).__name__)
        return f"callable:{getattr(spec, '__module__', '?')}.{name}", _CallableTokenizer(spec)
    raise ValueError(
        f"unknown tokenizer {spec!r}; use 'python', 'ptb', 'none' or a callable str -> list[str]"
    )
