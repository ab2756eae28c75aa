#!/usr/bin/env bash
# The GPU study in resumable slices on however many GPUs this node has: one `roli sweep --shard i/N` per GPU, each
# pinned to its own device; re-run the same command to resume (complete cells are skipped, partial ones resume).
# On several nodes: give each node its own SHARDS range, e.g. node k of K with 8 GPUs runs shards 8k+1..8k+8 of 8K:
#   NGPU=8 FIRST=$((8*k+1)) TOTAL=$((8*K)) recipes/gpu_study/run.sh
# Then: roli report runs/gpu_study --out runs/gpu_study/report   (the analysis of docs/gpu_study.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
FIRST=${FIRST:-1}
TOTAL=${TOTAL:-$NGPU}
if [ "$NGPU" -lt 1 ]; then echo "run.sh: no GPU found (set NGPU=...)" >&2; exit 2; fi
pids=()
for i in $(seq 0 $((NGPU - 1))); do
  shard=$((FIRST + i))
  CUDA_VISIBLE_DEVICES=$i roli sweep recipes/gpu_study/grid.yaml --shard "$shard/$TOTAL" \
    > "gpu_study_shard${shard}.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
