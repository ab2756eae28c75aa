#!/bin/sh
# One resumable slice of the study (issue 13): two processes (shards 1/2 and 2/2, one torch thread each) go through
# the four grids (robust, compute-matched controls, standard, quirks) seed by seed, except that the robust cells get all three seeds (the
# study's minimum) before the standard and quirk cells get their second and third; no new cell starts after
# MINUTES (default 60). Re-run until nothing is left: complete cells are skipped, interrupted ones resume, and a
# failing sweep does not stop the slice (its error is in the log). Logs: runs/study/sweep-<shard>.log.
# Usage: recipes/study/run.sh [MINUTES]   (SHARDS="1" runs one shard only)
cd "$(dirname "$0")/../.."
ROLI=${ROLI:-.venv/bin/roli}
end=$(( $(date +%s) + 60 * ${1:-60} ))
ORDER="grid:0 grid_standard:0 grid_quirks:0 grid:1 grid:2 grid_matched:0 grid_matched:1 grid_matched:2 grid_standard:1 grid_quirks:1 grid_standard:2 grid_quirks:2"
mkdir -p runs/study
slice() {
  rc=0
  for step in $ORDER; do
    left=$(( (end - $(date +%s)) / 60 ))
    [ "$left" -gt 0 ] || break
    "$ROLI" sweep "recipes/study/${step%:*}.yaml" --seeds "${step#*:}" --shard "$1/2" --stop-after "$left" || rc=1
  done
  return $rc
}
rc=0 pids=""
for s in ${SHARDS:-1 2}; do
  slice "$s" >> "runs/study/sweep-$s.log" 2>&1 &
  pids="$pids $!"
done
for p in $pids; do wait "$p" || rc=1; done
for s in ${SHARDS:-1 2}; do grep -h "^sweep shard" "runs/study/sweep-$s.log" | tail -n 3; done
exit $rc
