"""METEOR: same numbers as pycocoevalcap's wrapper, one reused JVM, restart after a crash."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import threading
import time

import numpy as np
import pytest

from reward_models import Meteor

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs `java` on PATH")


@pytest.fixture(scope="module")
def meteor():
    m = Meteor()
    yield m
    m.close()


def test_meteor_matches_pycocoevalcap_and_survives_a_killed_jvm(meteor, leave_one_out):
    from pycocoevalcap.meteor.meteor import Meteor as CocoMeteor

    images, cands, refs = leave_one_out
    cands, refs, images = cands[:50], refs[:50], images[:50]
    coco = CocoMeteor()  # starts its JVM now; ours starts on first use, so the two load in parallel
    corpus, per_image = meteor.compute(cands, refs)
    coco_corpus, coco_per_image = coco.compute_score(
        {i: r for i, r in zip(images, refs)}, {i: [c] for i, c in zip(images, cands)}
    )
    assert corpus == coco_corpus
    np.testing.assert_array_equal(per_image, coco_per_image)
    assert 0.1 < corpus < 0.5

    pid = meteor.pid
    assert pid is not None
    meteor.score(cands[:5], refs[:5])
    assert meteor.pid == pid  # one process, reused across calls

    # thread-safe: concurrent calls are serialised and each gets its own answer
    out = {}
    threads = [
        threading.Thread(target=lambda k=k: out.__setitem__(k, meteor.score(cands[k::5], refs[k::5])))
        for k in range(5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(5):
        np.testing.assert_array_equal(out[k], np.asarray(per_image)[k::5])

    os.kill(pid, signal.SIGKILL)  # the JVM we started
    time.sleep(0.2)
    again = meteor(completions=cands, references=refs)
    np.testing.assert_array_equal(again, per_image)
    assert meteor.pid not in (None, pid)


def test_meteor_pickles_without_its_process(meteor):
    clone = pickle.loads(pickle.dumps(meteor))
    assert clone.__name__ == "meteor" and clone.pid is None  # starts lazily in the new owner


def test_meteor_jvm_that_cannot_start_is_a_clear_error():
    broken = Meteor(max_memory="1k")  # the JVM refuses a 1 KB heap
    with pytest.raises(RuntimeError, match=r"reward 'meteor': the METEOR JVM .* failed twice"):
        broken.score(["a dog"], [["a dog runs"]])
    assert broken.pid is None
