#!/usr/bin/env bash
# Centralized baselines: every command the README lists, then the table generator.
# Usage: bash simulations/centralized_baselines/run.sh [RUN ...]   (default: all runs)
set -euo pipefail
cd "$(dirname "$0")/../.."
here=simulations/centralized_baselines
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(lastfm_mf lastfm_lightgcn gowalla_mf gowalla_lightgcn)
for run in "${runs[@]}"; do
  fedsparse train "configs/centralized/$run.toml" --out "$here/results/$run" --quiet --set train.threads=1
done
python "$here/report.py"
