#!/bin/sh
# The study's learning rates (recipes/study/tuned/): `roli tune` per method x init x backbone, successive halving
# over four or five log-spaced rates (2 epochs, then 4 for the better half), selected on validation PGD accuracy only. The same grid
# and budget for RanLI and RoLI; RoLI trials share one stage 1 (the `--out` folder). Resumable: re-run it after a
# kill; a recipe with a tuned file is skipped. ~5 min a recipe on one core. Usage: recipes/study/tune.sh [STEM...]
set -e
cd "$(dirname "$0")/../.."
ROLI=${ROLI:-.venv/bin/roli}
S=recipes/study
stems=${*:-$(cd $S && ls robust_*_r*li.yaml standard_*_ranli.yaml | sed 's/\.yaml$//')}
for s in $stems; do
  case $s in  # the first grids (one rate less each) chose an edge rate: widened on that side, the same for all inits
    *full_finetune*) lr=1e-4,3e-4,1e-3,3e-3 ;;
    *linear_probe*) lr=0.003,0.01,0.03,0.1 ;;
    *vpt_deep*) lr=3e-4,0.001,0.003,0.01,0.03 ;;   # RoLI chose the smallest rate, RanLI the largest
    *) lr=0.001,0.003,0.01,0.03 ;;
  esac
  [ -f "$S/tuned/$s.tuned.yaml" ] && [ -z "$RETUNE" ] && continue   # RETUNE=1: redo the records (trials reused)
  "$ROLI" tune "$S/$s.yaml" --lr "$lr" --epochs 2 --out runs/study/tune --record $S/tuned
done
