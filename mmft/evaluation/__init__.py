"""Caption evaluation: official metrics, slices, reports, gallery and training curves (`mmft eval`).

    from mmft.evaluation import evaluate_captions, write_outputs, plot_curves

Names are imported on first use, so `mmft.evaluation.metrics` (read by the trainers) and
`mmft --help` do not pull in torch, datasets or matplotlib.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EvalResult": "mmft.evaluation.evaluate",
    "evaluate_captions": "mmft.evaluation.evaluate",
    "generate_captions": "mmft.evaluation.evaluate",
    "score_generated": "mmft.evaluation.evaluate",
    "caption_metrics": "mmft.evaluation.metrics",
    "score_captions": "mmft.evaluation.metrics",
    "attribute_slices": "mmft.evaluation.slices",
    "bias_report": "mmft.evaluation.slices",
    "plot_curves": "mmft.evaluation.curves",
    "write_outputs": "mmft.evaluation.report",
    "write_gallery": "mmft.evaluation.report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mmft.evaluation' has no attribute {name!r}")
