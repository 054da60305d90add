"""mmft.rewards: registry, loading by name / module:attr / file.py:attr, weighted composition."""

from __future__ import annotations

import pickle
import textwrap

import numpy as np
import pytest
import yaml

from mmft.rewards import REGISTRY, RewardComposer, completions_to_text, load_reward, load_rewards
from reward_models import Bleu, CiderD, LengthReward

CORPUS = [["a dog runs on the grass", "a brown dog running"], ["a man rides a bike", "a cyclist on the road"]]


def test_registry_names_and_unknown_name():
    assert {
        "cider_d",
        "bleu",
        "rouge_l",
        "meteor",
        "spice",
        "clipscore",
        "length",
        "repetition",
        "vocab_richness",
        "attribute",
    } <= set(REGISTRY)
    with pytest.raises(ValueError, match=r"unknown reward 'cidr'; known rewards: .*cider_d.*vocab_richness"):
        load_reward("cidr")


def test_load_registry_entries_with_kwargs_and_corpus():
    cider = load_reward({"name": "cider_d", "weight": 2.0, "kwargs": {"cache_dir": False}}, corpus=CORPUS)
    assert isinstance(cider, CiderD) and cider.num_documents == 2 and cider.__name__ == "cider_d"
    bleu = load_reward("bleu", order=2)
    assert isinstance(bleu, Bleu) and bleu.order == 2 and bleu.__name__ == "bleu2"
    with pytest.raises(ValueError, match="'cider_d' needs `corpus`"):
        load_reward("cider_d")


def test_load_by_module_attr_and_by_file(tmp_path):
    cls = load_reward("reward_models.shaping:LengthReward", target=3)
    assert isinstance(cls, LengthReward) and cls(completions=["a b c"]) == [0.0]
    path = tmp_path / "my_rewards.py"
    path.write_text(
        textwrap.dedent(
            """
            def has_dog(prompts, completions, **kwargs):
                return [1.0 if "dog" in c else 0.0 for c in completions]

            def keyword(word):
                def reward(prompts, completions, **kwargs):
                    return [float(word in c) for c in completions]
                reward.__name__ = f"keyword_{word}"
                return reward

            class Shout:
                def __init__(self, bonus=1.0):
                    self.bonus = bonus
                def __call__(self, prompts, completions, **kwargs):
                    return [self.bonus * c.isupper() for c in completions]
            """
        )
    )
    fn = load_reward(f"{path}:has_dog")
    assert fn.__name__ == "has_dog" and fn(prompts=None, completions=["a dog", "a cat"]) == [1.0, 0.0]
    factory = load_reward(f"{path}:keyword", word="cat")
    assert factory.__name__ == "keyword_cat" and factory(prompts=None, completions=["a cat"]) == [1.0]
    shout = load_reward({"name": f"{path}:Shout", "kwargs": {"bonus": 2.0}})
    assert shout.__name__ == "Shout" and shout(prompts=None, completions=["HI", "hi"]) == [2.0, 0.0]
    with pytest.raises(FileNotFoundError, match="nope.py does not exist"):
        load_reward(f"{tmp_path}/nope.py:x")
    with pytest.raises(AttributeError, match="has no attribute 'missing'.*has_dog"):
        load_reward(f"{path}:missing")
    with pytest.raises(ImportError, match="cannot import module 'no_such_pkg.rewards'"):
        load_reward("no_such_pkg.rewards:thing")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ImportError, match=r"executing .*broken.py failed"):
        load_reward(f"{broken}:x")


def test_load_rewards_from_yaml_config():
    cfg = yaml.safe_load(
        """
        rewards:
          - {name: cider_d, weight: 1.0, kwargs: {cache_dir: false}}
          - {name: length, weight: 0.5, kwargs: {target: 5}}
          - name: reward_models.shaping:RepetitionPenalty
            kwargs: {n: 2}
        """
    )
    composer = load_rewards(cfg["rewards"], corpus=CORPUS)
    assert composer.names == ["cider_d", "length", "repetition"] and composer.weights == [1.0, 0.5, 1.0]
    with pytest.raises(ValueError, match=r"rewards\[1\]: unknown reward 'lenght'"):
        load_rewards([{"name": "length", "kwargs": {"target": 2}}, {"name": "lenght"}])


def _const(name, values):
    def reward(prompts=None, completions=None, **kwargs):
        return list(values)

    reward.__name__ = name
    return reward


def test_composer_weights_none_and_components():
    a = _const("a", [1.0, None, 2.0])
    b = _const("b", [10.0, 20.0, None])
    composer = RewardComposer([a, b], [0.5, 2.0])
    out = composer.compute(prompts=["p"] * 3, completions=["x", "y", "z"])
    np.testing.assert_allclose(out.total, [0.5 + 20.0, 40.0, 1.0])  # None left out of the sum
    np.testing.assert_array_equal(np.isnan(out.components["a"]), [False, True, False])
    assert out.metrics() == {"rewards/a": 1.5, "rewards/b": 15.0}
    assert composer(prompts=None, completions=["x", "y", "z"]) == out.total.tolist()


def test_composer_validation_names_reward_and_sample():
    x = ["x", "y"]
    with pytest.raises(ValueError, match="no reward applies to sample 1"):
        RewardComposer([_const("a", [1.0, None]), _const("b", [None, None])])(completions=x)
    with pytest.raises(ValueError, match=r"'bad' returned nan for sample 0"):
        RewardComposer([_const("bad", [float("nan"), 1.0])])(completions=x)
    with pytest.raises(ValueError, match=r"'bad' returned inf for sample 1"):
        RewardComposer([_const("bad", [0.0, float("inf")])])(completions=x)
    with pytest.raises(ValueError, match="'short' returned 1 values for 2 completions"):
        RewardComposer([_const("short", [1.0])])(completions=x)

    def scalar(**kwargs):
        return 1.0

    with pytest.raises(TypeError, match="'scalar' returned float"):
        RewardComposer([scalar])(completions=x)
    with pytest.raises(TypeError, match="'text' returned 'high' for sample 0"):
        RewardComposer([_const("text", ["high", 1.0])])(completions=x)
    with pytest.raises(ValueError, match="duplicated: \\['a'\\]"):
        RewardComposer([_const("a", []), _const("a", [])])


def test_composer_running_normalisation_and_clip():
    batches = [[1.0, 2.0, 3.0], [10.0, None, 4.0], [0.0, 5.0, 6.0]]
    state = {"i": 0}

    def stream(prompts=None, completions=None, **kwargs):
        state["i"] += 1
        return batches[state["i"] - 1]

    stream.__name__ = "stream"
    composer = RewardComposer([stream, _const("zero", [0.0] * 3)], [1.0, 0.0], normalize=True, clip=1.5)
    seen = []
    for batch in batches:
        out = composer.compute(completions=["c"] * 3)
        seen += [v for v in batch if v is not None]
        mean, std = np.mean(seen), np.std(seen)
        want = np.clip(
            (np.array([np.nan if v is None else v for v in batch]) - mean) / (std + 1e-8), -1.5, 1.5
        )
        np.testing.assert_allclose(out.used["stream"], want, rtol=1e-12)
    assert composer.stats["stream"].count == 8
    clone = RewardComposer([stream, _const("zero", [0.0] * 3)], normalize=True)
    clone.load_state_dict(composer.state_dict())
    assert clone.stats["stream"].mean == pytest.approx(np.mean(seen))


def test_composer_pickles_and_decodes_conversations():
    composer = load_rewards(
        [{"name": "bleu", "kwargs": {"order": 1}}, {"name": "length", "weight": 0.1, "kwargs": {"target": 3}}]
    )
    completions = [[{"role": "assistant", "content": [{"type": "text", "text": "a dog runs"}]}]]
    assert completions_to_text(completions) == ["a dog runs"]
    out = pickle.loads(pickle.dumps(composer))(completions=completions, references=[["a dog runs"]])
    assert out == pytest.approx([1.0])
