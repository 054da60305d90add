"""Reward plug-ins for mmft: caption metrics, shaping terms and learned-model scores.

Every reward is a picklable callable object with a ``__name__`` and TRL's reward-function
contract: ``reward(prompts=..., completions=..., completion_ids=..., **dataset_columns)`` returns
one ``float`` (or ``None`` where the reward does not apply) per completion, so it works unchanged
in TRL's GRPOTrainer/RLOOTrainer and in mmft's PPO and SCST trainers. This package never imports
``mmft``.
"""

from reward_models._text import ReferenceReward, completion_to_text, completions_to_text
from reward_models.bleu import Bleu
from reward_models.cider import CiderD
from reward_models.clipscore import ClipScore
from reward_models.meteor import Meteor
from reward_models.rouge import RougeL
from reward_models.shaping import AttributeReward, LengthReward, RepetitionPenalty, VocabularyRichness
from reward_models.spice import Spice, SpiceModelsMissing
from reward_models.tokenize import JavaPTBTokenizer, ptb_tokenize, ptb_tokens

__all__ = [
    "AttributeReward",
    "LengthReward",
    "RepetitionPenalty",
    "VocabularyRichness",
    "Bleu",
    "CiderD",
    "ClipScore",
    "JavaPTBTokenizer",
    "LearnedReward",
    "LearnedRewardStd",
    "Meteor",
    "ReferenceReward",
    "RougeL",
    "Spice",
    "SpiceModelsMissing",
    "completion_to_text",
    "completions_to_text",
    "ptb_tokenize",
    "ptb_tokens",
]


def __getattr__(name: str):
    # LearnedReward scores with mmft's reward-model code; importing it lazily keeps
    # `import reward_models` free of mmft (and of torch/transformers).
    if name in ("LearnedReward", "LearnedRewardStd"):
        from reward_models import learned

        return getattr(learned, name)
    raise AttributeError(f"module 'reward_models' has no attribute {name!r}")
