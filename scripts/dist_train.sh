#!/usr/bin/env bash
# Data-parallel launcher for either training stage: a thin wrapper around torchrun.
#
#   scripts/dist_train.sh <nproc_per_node> <script.py> [script arguments ...]
#
# One node, 4 GPUs:
#   scripts/dist_train.sh 4 scripts/train_daclip.py -c configs/daclip.yml
#   scripts/dist_train.sh 4 scripts/train_ir.py -c configs/universal_ir.yml
# Several nodes: run the same command on every node with NNODES, NODE_RANK (0 .. NNODES-1),
# MASTER_ADDR (the address of node 0, reachable from all nodes) and MASTER_PORT (a free port):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 scripts/dist_train.sh 8 scripts/train_daclip.py -c configs/daclip.yml
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 scripts/dist_train.sh 8 scripts/train_daclip.py -c configs/daclip.yml
# train.batch_size is per process (GPU): the global batch is batch_size x nproc_per_node x NNODES.
set -euo pipefail

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
}

if [ "$#" -lt 2 ]; then
    usage
    exit 2
fi
NPROC="$1"
shift
case "$NPROC" in
    '' | *[!0-9]* | 0) echo "error: <nproc_per_node> must be a positive integer, got '$NPROC'" >&2; exit 2 ;;
esac
if [ ! -f "$1" ]; then
    echo "error: training script not found: $1" >&2
    exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
NNODES="${NNODES:-1}"

if [ "$NNODES" -eq 1 ]; then
    # --standalone: a local rendezvous on a free port, so two jobs on one machine do not clash.
    exec torchrun --standalone --nnodes=1 --nproc_per_node="$NPROC" "$@"
fi
: "${NODE_RANK:?set NODE_RANK (0 .. NNODES-1) for a multi-node run}"
: "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0 for a multi-node run}"
MASTER_PORT="${MASTER_PORT:-29500}"
exec torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --master_port="$MASTER_PORT" --nproc_per_node="$NPROC" "$@"
