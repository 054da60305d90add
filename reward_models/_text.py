"""Helpers shared by the text rewards: completions to text and the reward-contract base class.

TRL calls a reward function as ``f(prompts=..., completions=..., completion_ids=..., **columns)``.
``completions`` is either a list of strings (standard format) or, for conversational data,
a list of message lists such as ``[{"role": "assistant", "content": "a dog runs"}]`` whose
``content`` may itself be a list of parts ``[{"type": "text", "text": "..."}]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def content_to_text(content: Any) -> str:
    """Text of one message ``content``: a string, or a list of ``{"type": "text", "text": ...}`` parts.

    Non-text parts (images, tool calls) carry no caption text and are skipped; text parts are
    concatenated without a separator, as chat templates render them.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise TypeError(f"message content must be a string or a list of parts, got {type(content).__name__}")


def completion_to_text(completion: Any) -> str:
    """Text of one completion: the string itself, or the assistant messages' text joined by newlines.

    A conversational completion holds only generated messages; if none is marked ``assistant``
    every message is used, so tool-free custom formats still decode.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):  # a single message instead of a list of them
        completion = [completion]
    if isinstance(completion, Sequence):
        messages = [m for m in completion if isinstance(m, dict)]
        if len(messages) != len(completion):
            raise TypeError("a conversational completion must be a list of message dicts")
        chosen = [m for m in messages if m.get("role") == "assistant"] or messages
        return "\n".join(content_to_text(m.get("content")) for m in chosen)
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


def completions_to_text(completions: Sequence[Any]) -> list[str]:
    """Decode a batch of completions (standard or conversational) to plain strings, shape (B,)."""
    return [completion_to_text(c) for c in completions]


def normalize_references(references: Sequence[Any], name: str, batch_size: int) -> list[list[str]]:
    """Check the ``references`` column (one list of reference strings per sample) and return it as lists.

    A bare string counts as a single reference. Raises naming the reward and the sample when a
    row has the wrong type or the column has the wrong length.
    """
    if len(references) != batch_size:
        raise ValueError(
            f"reward {name!r}: the `references` column has {len(references)} rows but there are "
            f"{batch_size} completions; pass one list of reference captions per completion"
        )
    out: list[list[str]] = []
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            refs = [refs]
        if isinstance(refs, np.ndarray):
            refs = refs.tolist()
        if not isinstance(refs, Sequence) or not all(isinstance(r, str) for r in refs):
            raise TypeError(
                f"reward {name!r}: references of sample {i} must be a list of strings, got {refs!r:.200}"
            )
        out.append(list(refs))
    return out


class ReferenceReward:
    """Base class of the caption-metric rewards: score each completion against its ``references`` row.

    Subclasses set ``self.__name__`` and implement ``_score_texts(candidates, references)`` returning
    an array of shape (B,). Samples with an empty reference list get ``None`` (the reward does not
    apply), which TRL and `mmft.rewards.RewardComposer` exclude from the weighted sum.
    """

    __name__: str = "reference_reward"

    def _score_texts(self, candidates: list[str], references: list[list[str]]) -> np.ndarray:
        raise NotImplementedError

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] | None = None,
        references: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        if completions is None:
            raise TypeError(f"reward {self.__name__!r} was called without `completions`")
        if references is None:
            columns = sorted(
                k for k in kwargs if k not in ("completion_ids", "trainer_state", "log_extra", "log_metric")
            )
            raise KeyError(
                f"reward {self.__name__!r} needs a `references` column (list[list[str]], the reference "
                f"captions of each sample); the batch has columns {columns}"
            )
        texts = completions_to_text(completions)
        refs = normalize_references(references, self.__name__, len(texts))
        rows = [i for i, r in enumerate(refs) if r]
        out: list[float | None] = [None] * len(texts)
        if rows:
            values = self._score_texts([texts[i] for i in rows], [refs[i] for i in rows])
            for i, v in zip(rows, values.tolist()):
                out[i] = float(v)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(__name__={self.__name__!r})"
