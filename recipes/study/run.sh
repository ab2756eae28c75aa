#!/bin/sh
# One resumable slice of the study (issue 13): two processes (shards 1/2 and 2/2, one torch thread each) go seed by
# seed through the three grids (robust, standard, quirks), so every cell has seed 0 before any has seed 1; no new
# cell starts after MINUTES (default 60). Re-run until nothing is left; complete cells are skipped, interrupted ones
# resume. Logs: runs/study/sweep-<shard>.log. Usage: recipes/study/run.sh [MINUTES]
cd "$(dirname "$0")/../.."
ROLI=${ROLI:-.venv/bin/roli}
end=$(( $(date +%s) + 60 * ${1:-60} ))
mkdir -p runs/study
slice() {
  for seed in 0 1 2; do
    for g in grid grid_standard grid_quirks; do
      left=$(( (end - $(date +%s)) / 60 ))
      [ "$left" -gt 0 ] || return 0
      "$ROLI" sweep "recipes/study/$g.yaml" --seeds "$seed" --shard "$1/2" --stop-after "$left" || return 1
    done
  done
}
slice 1 > runs/study/sweep-1.log 2>&1 & p1=$!
slice 2 > runs/study/sweep-2.log 2>&1 & p2=$!
wait $p1; r1=$?
wait $p2; r2=$?
grep -h "^sweep shard" runs/study/sweep-1.log runs/study/sweep-2.log
[ $r1 = 0 ] && [ $r2 = 0 ]
