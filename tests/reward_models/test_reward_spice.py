"""SPICE: a clear error when the CoreNLP models are absent; same numbers as pycocoevalcap when present."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from reward_models.spice import CORENLP_JARS, Spice, SpiceModelsMissing, missing_models, spice_dir


def test_missing_models_error_names_files_and_folder(tmp_path):
    (tmp_path / CORENLP_JARS[0]).write_bytes(b"")  # one of the two present
    with pytest.raises(SpiceModelsMissing) as info:
        Spice(lib_dir=tmp_path)
    message = str(info.value)
    assert f"stanford-corenlp-3.6.0-models.jar is missing from {tmp_path}" in message
    assert "stanford-corenlp-full-2015-12-09.zip" in message and "lib_dir=" in message
    assert missing_models(tmp_path) == [tmp_path / CORENLP_JARS[1]]


def test_default_location_is_checked():
    missing = missing_models()
    if missing:
        with pytest.raises(SpiceModelsMissing, match=str(spice_dir() / "lib")):
            Spice()
    else:
        assert Spice().lib_dir == spice_dir() / "lib"


@pytest.mark.skipif(
    bool(missing_models()) or shutil.which("java") is None,
    reason=f"SPICE scoring needs java and {CORENLP_JARS[0]} + {CORENLP_JARS[1]} in {spice_dir() / 'lib'} (not installed here)",
)
def test_spice_matches_pycocoevalcap(leave_one_out):
    from pycocoevalcap.spice.spice import Spice as CocoSpice

    _, cands, refs = leave_one_out
    cands, refs = cands[:5], refs[:5]
    # integer ids: pycocoevalcap returns scores in sorted id order
    _, coco = CocoSpice().compute_score(dict(enumerate(refs)), {i: [c] for i, c in enumerate(cands)})
    mine = Spice().score(cands, refs)
    np.testing.assert_allclose(mine, [s["All"]["f"] for s in coco], atol=1e-9)
    assert all(0 <= v <= 1 for v in Spice()(completions=cands, references=refs))
