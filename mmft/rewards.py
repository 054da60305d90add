"""Rewards for mmft trainers: one name -> factory registry, loading from configs, composition.

A reward is any callable with TRL's contract (see `reward_models`): called with ``prompts``,
``completions``, ``completion_ids`` and every dataset column by name, it returns one
``float | None`` per completion. mmft's own rewards live in `reward_models`; user code plugs in
by ``package.module:attr`` or ``path/to/file.py:attr``. No discovery by subclass scanning.

YAML (``rewards:`` section of a recipe config)::

    rewards:
      - {name: cider_d, weight: 1.0}                       # corpus: the training references
      - {name: length, weight: 0.1, kwargs: {target: 12}}
      - {name: my_pkg.rewards:KeywordReward, weight: 0.5, kwargs: {keyword: dog}}

``load_rewards(cfg["rewards"], corpus=train_ds["references"])`` builds a `RewardComposer`.
CIDEr-D needs the document frequencies of the *training* references (ppo_spec.md, "CIDEr-D as
an RL reward"), so the recipe passes that column as ``corpus``; it goes to every registry
entry that declares it needs one (only ``cider_d`` today).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reward_models import completion_to_text, completions_to_text

RewardFunc = Callable[..., list]

__all__ = [
    "REGISTRY",
    "ComposedRewards",
    "RewardComposer",
    "completion_to_text",
    "completions_to_text",
    "load_reward",
    "load_rewards",
    "reward_name",
]


# ------------------------------------------------------------------------------- registry
def _cider_d(corpus: Sequence[Sequence[str]], **kwargs: Any) -> RewardFunc:
    from reward_models import CiderD

    return CiderD(corpus, **kwargs)


def _bleu(**kwargs: Any) -> RewardFunc:
    from reward_models import Bleu

    return Bleu(**kwargs)


def _rouge_l(**kwargs: Any) -> RewardFunc:
    from reward_models import RougeL

    return RougeL(**kwargs)


def _meteor(**kwargs: Any) -> RewardFunc:
    from reward_models import Meteor

    return Meteor(**kwargs)


def _spice(**kwargs: Any) -> RewardFunc:
    from reward_models.spice import Spice

    return Spice(**kwargs)


def _clipscore(**kwargs: Any) -> RewardFunc:
    from reward_models.clipscore import ClipScore

    return ClipScore(**kwargs)


def _length(**kwargs: Any) -> RewardFunc:
    from reward_models import LengthReward

    return LengthReward(**kwargs)


def _repetition(**kwargs: Any) -> RewardFunc:
    from reward_models import RepetitionPenalty

    return RepetitionPenalty(**kwargs)


def _vocab_richness(**kwargs: Any) -> RewardFunc:
    from reward_models import VocabularyRichness

    return VocabularyRichness(**kwargs)


def _attribute(**kwargs: Any) -> RewardFunc:
    from reward_models import AttributeReward

    return AttributeReward(**kwargs)


def _learned(**kwargs: Any) -> RewardFunc:
    from reward_models.learned import LearnedReward

    return LearnedReward(**kwargs)


@dataclass(frozen=True)
class RegistryEntry:
    """A registered reward: ``factory(**kwargs)`` builds it; ``needs_corpus``: it takes the
    training set's reference lists as ``corpus``."""

    factory: Callable[..., RewardFunc]
    needs_corpus: bool = False
    help: str = ""


REGISTRY: dict[str, RegistryEntry] = {
    "cider_d": RegistryEntry(_cider_d, True, "CIDEr-D with corpus-level df (reward_models.CiderD)"),
    "bleu": RegistryEntry(_bleu, help="BLEU-n of the sample (reward_models.Bleu; kwargs n, order)"),
    "rouge_l": RegistryEntry(_rouge_l, help="ROUGE-L F (reward_models.RougeL)"),
    "meteor": RegistryEntry(_meteor, help="METEOR 1.5 via a persistent JVM (reward_models.Meteor)"),
    "spice": RegistryEntry(_spice, help="SPICE via pycocoevalcap's jar (reward_models.spice.Spice)"),
    "clipscore": RegistryEntry(_clipscore, help="CLIP-S / RefCLIP-S (reward_models.clipscore.ClipScore)"),
    "length": RegistryEntry(_length, help="length target or penalty (reward_models.LengthReward)"),
    "repetition": RegistryEntry(
        _repetition, help="repeated n-gram penalty (reward_models.RepetitionPenalty)"
    ),
    "vocab_richness": RegistryEntry(
        _vocab_richness, help="distinct words / words (reward_models.VocabularyRichness)"
    ),
    "attribute": RegistryEntry(_attribute, help="embedded-task attributes (reward_models.AttributeReward)"),
    "learned": RegistryEntry(
        _learned, help="image-aware reward model (reward_models.LearnedReward; kwargs path, uncertainty_penalty)"
    ),
}


def reward_name(func: Any) -> str:
    """The name a reward is logged under (``rewards/<name>``): its ``__name__``, as TRL uses."""
    return getattr(func, "__name__", type(func).__name__)


def _import_attr(spec: str) -> Any:
    """Resolve ``package.module:attr`` or ``path/to/file.py:attr``."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ValueError(f"reward spec {spec!r}: expected `package.module:attr` or `path/to/file.py:attr`")
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"reward spec {spec!r}: file {path} does not exist")
        # A stable module name per file, registered in sys.modules so objects defined there pickle
        # within this process (worker processes need an importable `package.module:attr` instead).
        module_name = f"mmft_user_rewards_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        module = sys.modules.get(module_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            try:
                loader_spec.loader.exec_module(module)
            except Exception as err:
                del sys.modules[module_name]
                raise ImportError(f"reward spec {spec!r}: executing {path} failed: {err!r}") from err
        where = str(path)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ImportError(f"reward spec {spec!r}: cannot import module {target!r}: {err}") from err
        where = f"module {target!r}"
    try:
        return getattr(module, attr)
    except AttributeError:
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise AttributeError(
            f"reward spec {spec!r}: {where} has no attribute {attr!r}; it defines {public}"
        ) from None


def load_reward(
    spec: str | Mapping[str, Any], corpus: Sequence[Sequence[str]] | None = None, **kwargs: Any
) -> RewardFunc:
    """Build one reward function.

    Args:
        spec: a registry name (``"cider_d"``), ``"package.module:attr"``, ``"path/to/file.py:attr"``,
            or a dict ``{"name": ..., "kwargs": {...}}`` (a ``weight`` key is ignored here).
            An attr that is a class is instantiated with ``kwargs``; a function is the reward
            itself when no kwargs are given, else a factory called with them.
        corpus: the training set's reference lists, for registry entries that need one.
        kwargs: constructor arguments (merged over the dict's ``kwargs``).
    Returns:
        a callable with a ``__name__``.
    """
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"name", "kwargs", "weight"}
        if "name" not in spec or unknown:
            raise ValueError(
                f"reward entry {dict(spec)!r}: expected keys name, weight, kwargs (unknown: {sorted(unknown)})"
            )
        return load_reward(spec["name"], corpus=corpus, **{**dict(spec.get("kwargs") or {}), **kwargs})
    if not isinstance(spec, str):
        raise TypeError(f"a reward spec must be a string or a dict, got {type(spec).__name__}")
    if ":" not in spec:
        entry = REGISTRY.get(spec)
        if entry is None:
            known = ", ".join(sorted(REGISTRY))
            raise ValueError(
                f"unknown reward {spec!r}; known rewards: {known}; or give `package.module:attr` or `path/to/file.py:attr`"
            )
        if entry.needs_corpus:
            kwargs.setdefault("corpus", corpus)
            if kwargs["corpus"] is None:
                raise ValueError(
                    f"reward {spec!r} needs `corpus`: the training set's reference lists (e.g. train_ds['references'])"
                )
        func = entry.factory(**kwargs)
    else:
        attr = _import_attr(spec)
        if inspect.isclass(attr) or kwargs:
            func = attr(**kwargs)
        else:
            func = attr
        if not callable(func):
            raise TypeError(f"reward spec {spec!r} resolved to a non-callable {type(func).__name__}")
        if not hasattr(func, "__name__"):
            # TRL and mmft log rewards under __name__; give instances the attr's name
            func.__name__ = spec.rpartition(":")[2]
    return func


def load_rewards(
    specs: Sequence[str | Mapping[str, Any]],
    corpus: Sequence[Sequence[str]] | None = None,
    normalize: bool = False,
    clip: float | None = None,
) -> RewardComposer:
    """Build a `RewardComposer` from a config's reward list (``{name, weight, kwargs}`` dicts or names)."""
    if not specs:
        raise ValueError("no rewards configured: give at least one {name, weight, kwargs} entry")
    funcs, weights = [], []
    for i, spec in enumerate(specs):
        weight = float(spec.get("weight", 1.0)) if isinstance(spec, Mapping) else 1.0
        try:
            funcs.append(load_reward(spec, corpus=corpus))
        except Exception as err:
            raise type(err)(f"rewards[{i}]: {err}") from err
        weights.append(weight)
    return RewardComposer(funcs, weights, normalize=normalize, clip=clip)


# ---------------------------------------------------------------------------- composition
@dataclass
class _Welford:
    """Running mean and variance (Welford 1962), for per-component reward normalisation."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, values: np.ndarray) -> None:
        for x in values.tolist():
            self.count += 1
            delta = x - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 0.0


@dataclass
class ComposedRewards:
    """Result of `RewardComposer.compute`.

    Attributes:
        total: (B,) weighted sum over the components that apply to each sample.
        components: name -> (B,) float64 raw values, NaN where the reward returned None.
        used: name -> (B,) values after optional normalisation and clipping (what was summed).
    """

    total: np.ndarray
    components: dict[str, np.ndarray]
    used: dict[str, np.ndarray] = field(default_factory=dict)

    def metrics(self, prefix: str = "rewards/") -> dict[str, float]:
        """Mean of each component over the samples it applies to, keyed ``rewards/<name>``."""
        out = {}
        for name, values in self.components.items():
            ok = ~np.isnan(values)
            if ok.any():
                out[f"{prefix}{name}"] = float(values[ok].mean())
        return out


class RewardComposer:
    """Weighted sum of reward functions, itself a reward function with TRL's contract.

    Args:
        reward_funcs: the rewards (each with a unique ``__name__``).
        weights: one weight per reward (default 1.0 each).
        normalize: standardise each component with its running mean/std (Welford, over all
            non-None values seen so far, this batch included) before weighting.
        clip: clip each (normalised) component to [-clip, clip].
        eps: added to the std when normalising.
        name: ``__name__`` of the composed reward.

    A component that returns None for a sample is left out of that sample's sum (TRL does the
    same with nansum); a sample for which every component returns None is an error. For TRL's
    trainers pass ``reward_funcs=composer.reward_funcs`` and ``reward_weights=composer.weights``
    to get per-reward logging, or the composer itself as one reward.
    """

    def __init__(
        self,
        reward_funcs: Sequence[RewardFunc],
        weights: Sequence[float] | None = None,
        normalize: bool = False,
        clip: float | None = None,
        eps: float = 1e-8,
        name: str = "composed",
    ):
        self.reward_funcs = list(reward_funcs)
        if not self.reward_funcs:
            raise ValueError("RewardComposer needs at least one reward function")
        self.weights = [1.0] * len(self.reward_funcs) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.reward_funcs):
            raise ValueError(f"{len(self.weights)} weights for {len(self.reward_funcs)} reward functions")
        self.names = [reward_name(f) for f in self.reward_funcs]
        duplicates = sorted({n for n in self.names if self.names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"reward names must be unique (they are logged as rewards/<name>); duplicated: {duplicates}"
            )
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be positive, got {clip}")
        self.normalize, self.clip, self.eps = normalize, clip, eps
        self.stats = {n: _Welford() for n in self.names}
        self.__name__ = name

    def _validate(self, name: str, values: Any, batch: int) -> np.ndarray:
        if not isinstance(values, (list, tuple, np.ndarray)):
            raise TypeError(
                f"reward function {name!r} returned {type(values).__name__}, expected a list of float | None"
            )
        if len(values) != batch:
            raise ValueError(
                f"reward function {name!r} returned {len(values)} values for {batch} completions"
            )
        out = np.empty(batch, dtype=np.float64)
        for i, v in enumerate(values):
            if v is None:
                out[i] = np.nan
                continue
            try:
                x = float(v)
            except (TypeError, ValueError):
                raise TypeError(
                    f"reward function {name!r} returned {v!r} for sample {i}; expected a float or None"
                ) from None
            if not math.isfinite(x):
                raise ValueError(
                    f"reward function {name!r} returned {x} for sample {i}; rewards must be finite (or None)"
                )
            out[i] = x
        return out

    def compute(self, prompts: Any = None, completions: Any = None, **kwargs: Any) -> ComposedRewards:
        """Call every reward and combine. Returns totals and per-component values (see `ComposedRewards`)."""
        if completions is None:
            raise TypeError("RewardComposer was called without `completions`")
        batch = len(completions)
        components, used = {}, {}
        total = np.zeros(batch)
        applies = np.zeros(batch, dtype=bool)
        for func, weight, name in zip(self.reward_funcs, self.weights, self.names):
            raw = self._validate(name, func(prompts=prompts, completions=completions, **kwargs), batch)
            components[name] = raw
            ok = ~np.isnan(raw)
            value = raw.copy()
            if self.normalize:
                self.stats[name].update(raw[ok])
                st = self.stats[name]
                value = (value - st.mean) / (st.std + self.eps)
            if self.clip is not None:
                value = np.clip(value, -self.clip, self.clip)
            used[name] = value
            total[ok] += weight * value[ok]
            applies |= ok
        if not applies.all():
            sample = int(np.flatnonzero(~applies)[0])
            raise ValueError(
                f"no reward applies to sample {sample}: every reward function ({', '.join(self.names)}) returned None for it"
            )
        return ComposedRewards(total, components, used)

    def __call__(self, prompts: Any = None, completions: Any = None, **kwargs: Any) -> list[float]:
        return self.compute(prompts=prompts, completions=completions, **kwargs).total.tolist()

    def state_dict(self) -> dict[str, dict[str, float]]:
        """Running normalisation statistics, for checkpoints."""
        return {n: {"count": s.count, "mean": s.mean, "m2": s.m2} for n, s in self.stats.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, float]]) -> None:
        for n, s in state.items():
            if n not in self.stats:
                raise KeyError(f"state for unknown reward {n!r}; this composer has {self.names}")
            self.stats[n] = _Welford(int(s["count"]), float(s["mean"]), float(s["m2"]))

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}*{w:g}" for n, w in zip(self.names, self.weights))
        return f"RewardComposer({parts}, normalize={self.normalize}, clip={self.clip})"
