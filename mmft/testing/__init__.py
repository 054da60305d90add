"""Test fixtures that ship with mmft: the tiny-VLM zoo."""

from mmft.testing.zoo import ARCHS, list_archs, make_tiny_vlm

__all__ = ["ARCHS", "list_archs", "make_tiny_vlm"]
