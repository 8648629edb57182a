#!/usr/bin/env bash
# Fleet throughput, one run after the other with nothing else on the machine:
# - the bundled LastFM fleet (1,878 devices, every device every round): auto cohorts (the
#   fleet spread over the client actors) and one device per SuperNode, the same config;
# - Gowalla at full scale (configs/fleets/gowalla_full.toml: 29,858 devices, 40,981 items):
#   sampled rounds of 3,000 devices, and one round of every device;
# - bare Flower (empty messages) at the SuperNode counts of those runs.
# Every run under peak_rss.py (peak resident memory of all its processes). Results (without
# model.npz and checkpoints) go to simulations/fleet_throughput/results/<name>/; then
# `python simulations/fleet_throughput/report.py`.
set -euo pipefail
cd "$(dirname "$0")/../.."
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
here=simulations/fleet_throughput
out=${OUT:-/tmp/fleet_throughput}
rm -rf "$out"; mkdir -p "$out" "$here/results"
run() {   # name, config, then --set overrides; plain training replies, as the table was
  local name=$1 config=$2; shift 2  # measured (before secure summation became the default)
  mkdir -p "$here/results/$name"
  python "$here/peak_rss.py" "$here/results/$name/peak_rss.json" -- \
      fedsparse simulate "$config" --out "$out/$name" --set fl.privacy.training=plain "$@"
  cp "$out/$name"/{metrics.json,history.csv,runtime.json,config.toml} "$here/results/$name/"
}
bare() {  # name, SuperNodes
  python simulations/fleet_memory_accuracy/bare_flower.py --devices "$2" --rounds 5 \
      --out "$here/results/$1"
}
run lastfm_auto configs/fleets/lastfm.toml --set fl.rounds=10 --set fl.nmf_rounds=2
run lastfm_one_per_node configs/fleets/lastfm.toml --set fl.rounds=3 --set fl.nmf_rounds=2 \
    --set fl.devices_per_node=1
# Gowalla as measured: the devices' Adam item step at 2 / 4 / 8 MB (the recipe before its SGD
# item step).
adam=(--set fl.item_optimizer=adam --set fl.tiers.wot.budget_bytes=2000000
      --set fl.tiers.phone.budget_bytes=4000000 --set fl.tiers.flagship.budget_bytes=8000000)
run gowalla_sampled configs/fleets/gowalla_full.toml --set fl.rounds=5 --set fl.nmf_rounds=1 \
    --set fl.clients_per_round=3000 --set fl.mask_interval=2 --set fl.eval_every=0 "${adam[@]}"
run gowalla_all configs/fleets/gowalla_full.toml --set fl.rounds=1 --set fl.nmf_rounds=1 \
    --set fl.clients_per_round=0 --set fl.mask_interval=2 --set fl.eval_every=10 "${adam[@]}"
bare bare_flower_2 2
bare bare_flower_1878 1878
