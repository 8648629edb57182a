#!/usr/bin/env bash
# Fleet throughput on the bundled LastFM fleet: one device per SuperNode against auto cohorts
# (the fleet spread over the client actors), the same config otherwise, one run after the
# other with nothing else on the machine. Results (without model.npz and checkpoints) go to
# simulations/fleet_throughput/results/<name>/; then `python simulations/fleet_throughput/report.py`.
set -euo pipefail
cd "$(dirname "$0")/../.."
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
out=${OUT:-/tmp/fleet_throughput}
results=simulations/fleet_throughput/results
rm -rf "$out"; mkdir -p "$out" "$results"
run() {   # name, rounds, devices per node
  fedsparse simulate configs/fleets/lastfm.toml --out "$out/$1" --set "fl.rounds=$2" \
      --set "fl.devices_per_node=$3" --set fl.nmf_rounds=2
  mkdir -p "$results/$1"
  cp "$out/$1"/{metrics.json,history.csv,runtime.json,config.toml} "$results/$1/"
}
run lastfm_auto 10 0
run lastfm_one_per_node 3 1
