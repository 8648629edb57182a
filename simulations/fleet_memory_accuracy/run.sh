#!/usr/bin/env bash
# Fleet memory vs accuracy: every command the README lists, then the table generator.
# Runs whose metrics.json exists are kept. Usage: bash simulations/fleet_memory_accuracy/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
here=simulations/fleet_memory_accuracy
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
for method in sparserec sparserec_no_nmf dense; do
  out="$here/results/lastfm_$method"
  [ -f "$out/metrics.json" ] || fedsparse simulate configs/fleets/lastfm.toml \
      --set sparse.method="$method" --out "$out"
done
devices=$(python -c "import json; print(json.load(open('$here/results/lastfm_sparserec/metrics.json'))['devices'])")
[ -f "$here/results/bare_flower_lastfm/metrics.json" ] || \
  python "$here/bare_flower.py" --devices "$devices" --rounds 5 --name bare_flower_lastfm
python "$here/report.py"
