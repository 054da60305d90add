"""The multi-node SLURM example and the accelerate configs it builds on: syntax, the paths
they name, and the per-node commands the script produces (SLURM's `srun`/`scontrol` and
`accelerate` replaced by recorders, two nodes simulated)."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "slurm_multi_node.sh"
CONFIGS = ROOT / "recipes" / "accelerate_configs"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def test_script_parses_and_names_existing_paths():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    assert "sbatch scripts/slurm_multi_node.sh" in "".join(text.splitlines(keepends=True)[:4])
    named = set(re.findall(r"(?<![\w/])(?:recipes|scripts|tests)/[\w/.-]+\.(?:py|yaml|sh)", text))
    assert {"recipes/caption_ppo.py", "recipes/accelerate_configs/multi_node.yaml",
            "recipes/configs/qwen2_5_vl_coco_ppo.yaml"} <= named
    assert [p for p in named if not (ROOT / p).exists()] == []
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
    assert sbatch["ntasks-per-node"] == "1" and int(sbatch["nodes"]) >= 2 and "gpus-per-node" in sbatch


def _recorder(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_each_node_launches_with_its_own_machine_rank(tmp_path):
    """srun runs the task once per node with that node's SLURM_NODEID, as SLURM does: each
    `accelerate launch` must get its own --machine_rank and the same rendezvous."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    _recorder(bin_dir / "scontrol", 'printf "gpu-a17\\ngpu-b03\\n"\n')
    _recorder(bin_dir / "srun", 'while [[ "$1" == --* ]]; do shift; done\n'
                                'for ((n = 0; n < SLURM_NNODES; n++)); do SLURM_NODEID=$n "$@"; done\n')
    _recorder(bin_dir / "accelerate", f'echo "$*" >> {log}\n')
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu-[a17,b03]",
           "SLURM_GPUS_ON_NODE": "4", "SLURM_SUBMIT_DIR": str(tmp_path), "HOME": str(tmp_path)}
    subprocess.run(["bash", str(SCRIPT), "--max_steps", "7"], env=env, check=True, capture_output=True,
                   text=True, timeout=60)
    calls = log.read_text().splitlines()
    assert len(calls) == 2
    for rank, call in enumerate(calls):
        args = call.split()
        opt = {k: args[i + 1] for i, k in enumerate(args[:-1]) if k.startswith("--")}
        assert opt["--machine_rank"] == str(rank)
        assert opt["--main_process_ip"] == "gpu-a17" and opt["--num_machines"] == "2"
        assert opt["--num_processes"] == "8" and opt["--config_file"].endswith("multi_node.yaml")
        assert args[args.index("recipes/caption_ppo.py"):] == [
            "recipes/caption_ppo.py", "--config", "recipes/configs/qwen2_5_vl_coco_ppo.yaml", "--max_steps", "7"]


def test_a_long_node_list_does_not_stop_the_job(tmp_path):
    """Only the first host name is read, but the script must not close the pipe on the rest:
    under pipefail, `scontrol ... | head -n 1` failed with SIGPIPE (exit 141), every time
    here with 20,000 names and now and then with 2."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    _recorder(bin_dir / "scontrol", 'for ((i = 0; i < 20000; i++)); do echo "gpu-$i"; done\n')
    _recorder(bin_dir / "srun", 'while [[ "$1" == --* ]]; do shift; done\nSLURM_NODEID=0 "$@"\n')
    _recorder(bin_dir / "accelerate", f'echo "$*" >> {log}\n')
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_NNODES": "20000", "SLURM_JOB_NODELIST": "gpu-[0-19999]",
           "SLURM_GPUS_ON_NODE": "8", "SLURM_SUBMIT_DIR": str(tmp_path), "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--main_process_ip gpu-0 " in log.read_text()


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_accelerate_config_opens_with_its_launch_command(name):
    text = (CONFIGS / name).read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any(f"--config_file recipes/accelerate_configs/{name}" in line or "slurm_multi_node.sh" in line
               for line in header[:6]), header
    config = yaml.safe_load(text)
    assert config["distributed_type"] in ("NO", "MULTI_GPU", "DEEPSPEED")
    assert config["num_processes"] >= 1 and config["num_machines"] >= 1
    if config["distributed_type"] == "DEEPSPEED":
        assert config["deepspeed_config"]["zero_stage"] in (2, 3)
    if name.startswith("cpu_"):  # what the distributed tests launch: 2 processes, one machine
        assert config["num_processes"] == 2 and config["num_machines"] == 1
