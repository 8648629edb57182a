#!/usr/bin/env bash
# Equal bytes: every command the README lists, then the table generator. Runs whose
# metrics.json exists are kept; two runs at a time, one torch thread each (2 cores).
# Usage: bash simulations/equal_bytes/run.sh [GRID ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
here=simulations/equal_bytes
for grid in "${@:-lastfm_mf}"; do
  python "$here/sweep.py" "$grid" --split val --set train.threads=1 --jobs 2   # tuning, seed 0
  python "$here/sweep.py" "$grid" --split test --set train.threads=1 --jobs 2  # seeds 0 and 1
done
python "$here/report.py"
