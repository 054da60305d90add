#!/bin/bash
# PPO on several GPU nodes under DeepSpeed ZeRO-2 (recipes/accelerate_configs/multi_node.yaml).
# Submit from the repository root:
#   sbatch scripts/slurm_multi_node.sh
#   sbatch --nodes 4 scripts/slurm_multi_node.sh --max_steps 200   # 4 nodes; arguments go to the recipe
# Arguments after the script name go to recipes/caption_ppo.py after --config, so they win;
# CONFIG=other.yaml (or ACCELERATE_CONFIG=...) in the environment of sbatch picks another config.
# srun starts one task per node; each runs `accelerate launch`, which starts one process per
# GPU of its node and joins the others at MASTER_ADDR:MASTER_PORT (the first node of the job).
# Not run here (the development machines have no SLURM and no GPU); `bash -n` and the paths
# it names are checked by tests/scripts/test_slurm_launch.py.
#SBATCH --job-name=mmft-ppo
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail

# The job starts in the submission directory (the repository root); use its environment.
cd "${SLURM_SUBMIT_DIR:-.}"
if [ -f .venv/bin/activate ]; then
    source .venv/bin/activate
fi

export CONFIG=${CONFIG:-recipes/configs/qwen2_5_vl_coco_ppo.yaml}
export ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-recipes/accelerate_configs/multi_node.yaml}
export GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}
export NUM_PROCESSES=$((SLURM_NNODES * GPUS_PER_NODE))
# Rendezvous on the first node of the allocation. sed reads every line: `head -n 1` would
# exit after the first, and scontrol writing the rest gets SIGPIPE, which pipefail makes fatal.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-29500}
# NCCL: name the interface if the nodes have several (e.g. NCCL_SOCKET_IFNAME=ib0) and
# export NCCL_DEBUG=INFO when a rank hangs at start.

echo "nodes: $SLURM_JOB_NODELIST, master: $MASTER_ADDR:$MASTER_PORT, processes: $NUM_PROCESSES"

# Single quotes: $SLURM_NODEID must be expanded inside each srun task (0, 1, ...), not once
# here in the batch script, where it is 0 on every node.
srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c '
    accelerate launch --config_file "$ACCELERATE_CONFIG" \
        --num_machines "$SLURM_NNODES" --num_processes "$NUM_PROCESSES" \
        --machine_rank "$SLURM_NODEID" \
        --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
        recipes/caption_ppo.py --config "$CONFIG" "$@"
' slurm_multi_node "$@"
