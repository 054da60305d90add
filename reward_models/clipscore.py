"""CLIPScore and RefCLIPScore (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric
for Image Captioning") with any Hugging Face CLIP or SigLIP checkpoint.

CLIP-S(c, v)       = w * max(cos(E_text(c), E_image(v)), 0),   w = 2.5
RefCLIP-S(c, R, v) = harmonic mean of CLIP-S(c, v) and max_{r in R} w * max(cos(E_text(c), E_text(r)), 0)

The paper prefixes candidate (and reference) text with "A photo depicts"; ``prefix`` keeps that
default. Scores use the projected embeddings (``get_image_features`` / ``get_text_features``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from reward_models._text import completions_to_text, normalize_references


def _first_image(value: Any) -> Any:
    """The image of a row: a PIL image, or the first of a list of them (None if there is none)."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


class ClipScore:
    """CLIP-S (``mode="clip_s"``) or RefCLIP-S (``mode="refclip_s"``) as a reward.

    Args:
        model_name_or_path: a CLIP or SigLIP checkpoint (hub id or local folder), loaded with
            ``AutoModel`` and ``AutoProcessor`` on first use.
        mode: "clip_s" (reads ``image``) or "refclip_s" (reads ``image`` and ``references``).
        w: the rescaling weight (2.5 in the paper).
        prefix: text put before every caption ("A photo depicts", as the paper; "" for none).
        batch_size: images / texts per forward pass.
        device: torch device (default: CUDA if available, else CPU).
        name: the reward's ``__name__`` (default: the mode).

    The model is loaded lazily and is not pickled (a clone reloads it), so the object can be
    shipped to worker processes. Rows without an image get ``None``.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike,
        mode: str = "clip_s",
        w: float = 2.5,
        prefix: str = "A photo depicts",
        batch_size: int = 64,
        device: str | None = None,
        name: str | None = None,
    ):
        if mode not in ("clip_s", "refclip_s"):
            raise ValueError(f"ClipScore: mode must be 'clip_s' or 'refclip_s', got {mode!r}")
        self.model_name_or_path = str(model_name_or_path)
        self.mode, self.w, self.prefix, self.batch_size = mode, float(w), prefix, int(batch_size)
        self.device = device
        self.__name__ = name or mode
        self._model = None
        self._processor = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_model"] = state["_processor"] = None
        return state

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModel, AutoProcessor

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._processor = AutoProcessor.from_pretrained(self.model_name_or_path)
        self._model = AutoModel.from_pretrained(self.model_name_or_path).to(device).eval()
        # SigLIP was trained on max-length padded text; CLIP pools at the EOS token, so plain padding
        self._padding = "max_length" if "siglip" in self._model.config.model_type else True

    @staticmethod
    def _unit(features: Any):
        import torch

        if not isinstance(features, torch.Tensor):  # transformers 5 returns a ModelOutput
            features = features.pooler_output
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, (N, D); the prefix is applied here."""
        import torch

        self._load()
        texts = [f"{self.prefix} {t}".strip() if self.prefix else t for t in texts]
        out = []
        for lo in range(0, len(texts), self.batch_size):
            inputs = self._processor(
                text=list(texts[lo : lo + self.batch_size]),
                padding=self._padding,
                truncation=True,
                return_tensors="pt",
            ).to(self._model.device)
            with torch.inference_mode():
                out.append(self._unit(self._model.get_text_features(**inputs)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """L2-normalised image embeddings of PIL images, (N, D)."""
        import torch

        self._load()
        out = []
        for lo in range(0, len(images), self.batch_size):
            inputs = self._processor(images=list(images[lo : lo + self.batch_size]), return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(self._model.device, self._model.dtype)
            with torch.inference_mode():
                out.append(
                    self._unit(self._model.get_image_features(pixel_values=pixel_values)).cpu().numpy()
                )
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

    def score(
        self,
        candidates: Sequence[str],
        images: Sequence[Any],
        references: Sequence[Sequence[str]] | None = None,
    ) -> np.ndarray:
        """Scores per candidate, (B,) float64: CLIP-S, or RefCLIP-S when mode is "refclip_s".

        Args:
            candidates: (B,) captions.
            images: (B,) PIL images (the same object repeated is embedded once).
            references: (B,) reference lists, required for RefCLIP-S.
        """
        if len(candidates) != len(images):
            raise ValueError(f"{self.__name__}: {len(candidates)} candidates but {len(images)} images")
        # GRPO repeats every image num_generations times: embed each distinct object once
        slot: dict[int, int] = {}
        distinct = []
        for im in images:
            if id(im) not in slot:
                slot[id(im)] = len(distinct)
                distinct.append(im)
        image_emb = self.embed_images(distinct)[[slot[id(im)] for im in images]]
        cand_emb = self.embed_texts(list(candidates))
        clip_s = self.w * np.maximum((cand_emb * image_emb).sum(axis=1).astype(np.float64), 0.0)
        if self.mode == "clip_s":
            return clip_s
        if references is None:
            raise ValueError(f"{self.__name__}: RefCLIP-S needs references")
        flat = [r for refs in references for r in refs]
        ref_emb = self.embed_texts(flat)
        owner = np.repeat(np.arange(len(references)), [len(r) for r in references])
        sims = self.w * np.maximum((cand_emb[owner] * ref_emb).sum(axis=1).astype(np.float64), 0.0)
        ref_s = np.full(len(candidates), -np.inf)
        np.maximum.at(ref_s, owner, sims)
        ref_s = np.maximum(ref_s, 0.0)  # a sample without references scores 0 on this side
        total = clip_s + ref_s
        return np.where(total > 0, 2 * clip_s * ref_s / np.where(total > 0, total, 1.0), 0.0)

    def __call__(
        self,
        prompts: Any = None,
        completions: Any = None,
        image: Sequence[Any] | None = None,
        references: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        if image is None:
            raise KeyError(
                f"reward {self.__name__!r} needs an `image` column (PIL images, or lists of them: the first is used)"
            )
        texts = completions_to_text(completions)
        if len(image) != len(texts):
            raise ValueError(f"reward {self.__name__!r}: {len(image)} images for {len(texts)} completions")
        refs = None
        if self.mode == "refclip_s":
            if references is None:
                raise KeyError(f"reward {self.__name__!r} (RefCLIP-S) needs a `references` column")
            refs = normalize_references(references, self.__name__, len(texts))
        images = [_first_image(im) for im in image]
        rows = [i for i, im in enumerate(images) if im is not None and (refs is None or refs[i])]
        out: list[float | None] = [None] * len(texts)
        if rows:
            values = self.score(
                [texts[i] for i in rows],
                [images[i] for i in rows],
                None if refs is None else [refs[i] for i in rows],
            )
            for i, v in zip(rows, values.tolist()):
                out[i] = float(v)
        return out

    def __repr__(self) -> str:
        return f"ClipScore(__name__={self.__name__!r}, model={self.model_name_or_path!r}, mode={self.mode!r}, w={self.w})"
