#!/usr/bin/env bash
# Fleet memory vs accuracy: every command the README lists, then the table generator.
# Runs whose metrics.json exists are kept. Usage: bash simulations/fleet_memory_accuracy/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
here=simulations/fleet_memory_accuracy
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
for dataset in lastfm gowalla; do
  for method in sparserec sparserec_no_nmf dense; do
    out="$here/results/${dataset}_$method"
    # plain training replies, as these results were measured (before secure summation)
    [ -f "$out/metrics.json" ] || fedsparse simulate "configs/fleets/$dataset.toml" \
        --set sparse.method="$method" --set fl.privacy.training=plain --out "$out"
  done
  run="$here/results/${dataset}_sparserec"
  read -r devices per_round < <(python -c "import json, pandas as pd; \
print(json.load(open('$run/metrics.json'))['devices'], \
      int(pd.read_csv('$run/history.csv')['sampled'].median()))")
  [ -f "$here/results/bare_flower_$dataset/metrics.json" ] || \
    python "$here/bare_flower.py" --devices "$devices" --per-round "$per_round" --rounds 5 \
        --name "bare_flower_$dataset"
done
python "$here/report.py"
