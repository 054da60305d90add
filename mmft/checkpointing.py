"""Checkpoint plumbing shared by the trainers (PPO/SCST and the reward model).

A checkpoint is a folder `OUTPUT_DIR/checkpoint-STEP` written under a temporary name and
renamed when complete, so an interrupted save never replaces the last complete checkpoint
with half of one; `trainer_state.json` is the mark of a complete checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from mmft.config import every_n_steps
from mmft.distributed import barrier, distributed

TRAINER_STATE = "trainer_state.json"
TRAINABLE_STATE = "trainable_state.pt"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def save_interval(args, total_steps: int) -> int:
    """Steps between checkpoints: `save_steps`, or that share of `total_steps` if under 1;
    0 (none) when it is 0 or `save_strategy` is not "steps"."""
    return every_n_steps(args.save_steps, total_steps) if args.save_strategy == "steps" else 0


@contextlib.contextmanager
def checkpoint_folder(directory: str | os.PathLike) -> Iterator[str]:
    """Yields a fresh temporary folder on every rank; when the body has run on all of them,
    the main process renames it to `directory` (replacing an older folder of that name).
    Collective: every rank enters and leaves together."""
    directory = str(directory)
    tmp = directory + ".tmp"
    main = distributed()[0] == 0
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier()
    yield tmp
    barrier()
    if main:
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    barrier()


def save_rng_state(directory: str | os.PathLike) -> None:
    """This rank's Python, NumPy, torch (and CUDA) generator states."""
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, os.path.join(directory, f"rng_state_{distributed()[0]}.pt"))


def load_rng_state(directory: str | os.PathLike) -> None:
    rng = torch.load(os.path.join(directory, f"rng_state_{distributed()[0]}.pt"), weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete `checkpoint-N` folders of `output_dir`, oldest (lowest N) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _CHECKPOINT.match(p.name)) and (p / TRAINER_STATE).exists()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(resume_from_checkpoint: str | os.PathLike | bool | None, output_dir: str) -> str | None:
    """`resume_from_checkpoint` as TRL/transformers read it: a folder, or True for the
    latest complete checkpoint in `output_dir` (an error when there is none)."""
    if resume_from_checkpoint in (None, False, ""):
        return None
    if resume_from_checkpoint is True or str(resume_from_checkpoint).lower() == "true":
        found = complete_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"resume_from_checkpoint=True but {output_dir} holds no complete checkpoint-N "
                                    f"folder (one with {TRAINER_STATE}); pass a checkpoint folder instead.")
        return str(found[-1])
    if not Path(resume_from_checkpoint, TRAINER_STATE).exists():
        raise FileNotFoundError(f"{resume_from_checkpoint} is not a complete mmft checkpoint (no {TRAINER_STATE}).")
    return str(resume_from_checkpoint)


def rotate_checkpoints(output_dir: str | os.PathLike, keep: int | None) -> list[Path]:
    """Deletes all but the newest `keep` complete checkpoints (None or 0: keep all); main
    process only. Returns the deleted folders."""
    if not keep or keep <= 0 or distributed()[0] != 0:
        return []
    old = complete_checkpoints(output_dir)[:-keep]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old
