"""Package boundaries: reward_models stands alone (no mmft, no torch at import)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_importing_reward_models_pulls_in_neither_mmft_nor_torch():
    code = (
        "import sys, reward_models\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mmft', 'torch', 'transformers'))\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
