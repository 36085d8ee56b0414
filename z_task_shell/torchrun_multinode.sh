#!/usr/bin/env bash
# Multi-machine training with torchrun: run this same command on every machine, NODE_RANK=0 on the one
# whose address is MASTER_ADDR. NNODES x GPUS_PER_NODE processes in all; each trains on its share of
# every epoch (DistributedSampler), gradients are all-reduced (NCCL on GPUs, Gloo on CPUs). Add
# --lr_scale linear to scale the LR with the global batch.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 [MASTER_PORT=29500] [GPUS_PER_NODE=8] \
#     bash z_task_shell/torchrun_multinode.sh CONFIG [main.py flags]
# SMOKE=1: one machine, one process, a rendezvous on localhost.
source "$(dirname "$0")/common.sh"
CONFIG=${1:-z_task_shell/configs/digits_resnet18.yaml}; shift $(( $# > 0 ? 1 : 0 ))
NNODES=${NNODES:-1}; NODE_RANK=${NODE_RANK:-0}; MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}; GPUS_PER_NODE=${GPUS_PER_NODE:-8}
EXTRA=()
if [ "$SMOKE" = 1 ]; then
  NNODES=1; NODE_RANK=0; MASTER_ADDR=127.0.0.1; GPUS_PER_NODE=1
  MASTER_PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  EXTRA=(--data "$SMOKE_DATA")
fi
show_run "$PY" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$GPUS_PER_NODE" \
  --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
  main.py --train --config "$CONFIG" --output "$OUTPUT" --no_progress \
  ${EXTRA[@]+"${EXTRA[@]}"} "$@" ${SMOKE_ARGS[@]+"${SMOKE_ARGS[@]}"}
