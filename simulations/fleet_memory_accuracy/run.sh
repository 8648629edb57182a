#!/usr/bin/env bash
# Fleet memory vs accuracy: every command the README lists, then the table generator.
# Runs whose metrics.json exists are kept. Usage: bash simulations/fleet_memory_accuracy/run.sh
# (the tuning runs that chose the recipe: tune.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
here=simulations/fleet_memory_accuracy
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
# LastFM: the converged recipe of configs/fleets/lastfm.toml (secure summation, the default
# protocol), seeds 0 and 1, every method; each device tier's cross-tier ranking, then the
# model and checkpoints go (too large to keep).
for seed in 0 1; do
  for method in sparserec sparserec_no_nmf nested_dims dense; do
    out="$here/results/lastfm_${method}_seed$seed"
    if [ ! -f "$out/metrics.json" ]; then
      fedsparse simulate configs/fleets/lastfm.toml --set sparse.method="$method" \
          --set seed="$seed" --out "$out"
      python "$here/cross_tier.py" "$out"
      rm -rf "$out/model.npz" "$out/checkpoint"
    fi
  done
done
# Centralized references at each tier's memory, on the test split, seeds 0 and 1.
python "$here/references.py" --dataset lastfm --split test --seeds 0 1 --threads 1
# Gowalla (the 5,000 busiest places; plain replies, as these results were measured before
# secure summation; to be rerun at full scale)
for method in sparserec sparserec_no_nmf dense; do
  out="$here/results/gowalla_$method"
  [ -f "$out/metrics.json" ] || fedsparse simulate configs/fleets/gowalla.toml \
      --set sparse.method="$method" --set fl.privacy.training=plain --out "$out"
done
for dataset in gowalla; do   # LastFM's cohorts against bare Flower: simulations/fleet_throughput/
  run=$(ls -d "$here/results/${dataset}_sparserec"* | head -1)
  read -r devices per_round < <(python -c "import json, pandas as pd; \
print(json.load(open('$run/metrics.json'))['devices'], \
      int(pd.read_csv('$run/history.csv')['sampled'].median()))")
  [ -f "$here/results/bare_flower_$dataset/metrics.json" ] || \
    python "$here/bare_flower.py" --devices "$devices" --per-round "$per_round" --rounds 5 \
        --name "bare_flower_$dataset"
done
python "$here/report.py"
