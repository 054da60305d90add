"""Shared fixtures: offline Hugging Face, the tiny-VLM zoo saved once per session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MMFT_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "mmft"))

import pytest  # noqa: E402

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
FLICKR8K = os.path.join(SHARED, "data", "flickr8k", "captions.txt")


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory):
    """`tiny_vlm_dir(arch, **kw)` -> folder of a saved tiny VLM (built once per session)."""
    from mmft.testing import make_tiny_vlm

    built = {}

    def get(arch: str = "llava", **kwargs) -> str:
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in built:
            path = tmp_path_factory.mktemp(f"tiny-{arch}")
            make_tiny_vlm(arch, path, **kwargs)
            built[key] = str(path)
        return built[key]

    return get
