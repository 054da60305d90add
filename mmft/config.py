"""Recipe argument parsing shared by every recipe: defaults < YAML `--config` < command line."""

from __future__ import annotations

import math

import yaml


def pop_yaml_config(argv: list[str]) -> tuple[dict, list[str]]:
    """Read `--config FILE` out of `argv`: (the YAML mapping, or {}; the remaining argv)."""
    if "--config" not in argv:
        return {}, list(argv)
    i = argv.index("--config")
    with open(argv[i + 1]) as f:
        config = yaml.safe_load(f) or {}
    return config, argv[:i] + argv[i + 2:]


def parse_dataclasses(classes: tuple, argv: list[str], config: dict) -> tuple:
    """Parse `argv` into `classes` (HfArgumentParser) with `config` as defaults; a config key
    that no class has is an error naming it."""
    from transformers import HfArgumentParser

    known = {f for dc in classes for f in dc.__dataclass_fields__}
    unknown = sorted(set(config) - known)
    if unknown:
        raise SystemExit(f"Unknown key(s) in the YAML config: {unknown}.")
    parser = HfArgumentParser(classes)
    parser.set_defaults(**config)
    return parser.parse_args_into_dataclasses(args=argv)


def cpu_deepspeed_defaults(config: dict) -> dict:
    """`ddp_backend: gloo` for DeepSpeed ranks without CUDA (accelerate_configs/cpu_zero*.yaml),
    unless set: accelerate finds no backend for them otherwise and counts one process on
    every rank, and DeepSpeed rejects the batch size it derives (micro x accumulation x 1)."""
    import os

    import torch

    if (os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and not torch.cuda.is_available()
            and int(os.environ.get("WORLD_SIZE", "1")) > 1):
        return {"ddp_backend": "gloo", **config}
    return config


def every_n_steps(value: float | None, total_steps: int) -> int:
    """Steps between two events for `logging_steps`, `eval_steps` or `save_steps`: the value,
    or that share of `total_steps` if it is under 1 (as transformers' Trainer reads them);
    0 (never) when it is 0 or None."""
    if not value or value <= 0:
        return 0
    return int(value) if value >= 1 else max(1, math.ceil(value * total_steps))
