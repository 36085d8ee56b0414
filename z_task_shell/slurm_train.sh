#!/usr/bin/env bash
# Train on a SLURM cluster with one torchrun per node and a c10d rendezvous on the job's first node.
#   [GPUS=16] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] \
#     bash z_task_shell/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [more main.py flags]
# GPUS: processes in all; GPUS_PER_NODE: processes per node; CPUS_PER_TASK: data-loading cores per process.
# SMOKE=1 runs the same per-node command here without srun: one node, one process, the smoke data
# (PARTITION and JOB_NAME are then ignored).
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] $0 PARTITION JOB_NAME CONFIG WORK_DIR [main.py flags]" >&2
  exit 2
fi
PARTITION=$1; JOB_NAME=$2; CONFIG=$3; WORK_DIR=$4; shift 4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
PORT=${PORT:-29500}
NODES=$(( (GPUS + GPUS_PER_NODE - 1) / GPUS_PER_NODE ))
cd "$(dirname "$0")/.."
PYTHON_BIN=${PYTHON_BIN:-$(pwd)/.venv/bin/python}
# What each node runs: torchrun with a rendezvous on the job's first node (MASTER, when set, instead).
# shellcheck disable=SC2016  # expanded by the shell that runs it on each node
NODE_COMMAND='MASTER=${MASTER:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
  exec "$0" -m torch.distributed.run --nnodes="$1" --nproc_per_node="$2" --rdzv_backend=c10d \
    --rdzv_id="$SLURM_JOB_ID" --rdzv_endpoint="$MASTER:$3" \
    main.py --train --config "$4" --output "$5" "${@:6}"'
if [ "${SMOKE:-0}" = 1 ]; then
  source z_task_shell/common.sh
  PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  MASTER=127.0.0.1 SLURM_JOB_ID=smoke bash -c "$NODE_COMMAND" "$PYTHON_BIN" 1 1 "$PORT" "$CONFIG" "$WORK_DIR" \
    --data "$SMOKE_DATA" --no_progress "$@" "${SMOKE_ARGS[@]}"
  exit
fi
srun -p "$PARTITION" --job-name="$JOB_NAME" --nodes="$NODES" --ntasks="$NODES" --ntasks-per-node=1 \
  --gres="gpu:$GPUS_PER_NODE" --cpus-per-task=$(( CPUS_PER_TASK * GPUS_PER_NODE )) --kill-on-bad-exit=1 \
  ${SRUN_ARGS:-} \
  bash -c "$NODE_COMMAND" "$PYTHON_BIN" "$NODES" "$GPUS_PER_NODE" "$PORT" "$CONFIG" "$WORK_DIR" "$@"
