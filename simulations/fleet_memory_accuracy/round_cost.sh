#!/usr/bin/env bash
# What a LastFM fleet round costs per method, item step and reply protocol, every run on the
# same machine one after the other (the timings of the README's other tables come from the
# machine each run happened to get, about 4x apart between sessions): the recipe of
# configs/fleets/lastfm.toml for ROUNDS rounds (test split, evaluated at the end only) with the
# devices' item step as Adam or as plain SGD at rate 30 (README, "LastFM: the devices' item step
# as plain SGD"), under secure summation (the recipe's) and with plain replies. Nothing else
# may run on the machine meanwhile. Runs whose metrics.json exists are kept; then report.py.
# Usage: bash simulations/fleet_memory_accuracy/round_cost.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
here=simulations/fleet_memory_accuracy
rounds=${1:-15}
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
cost_run() {  # cost_run METHOD STEP REPLIES: STEP adam|sgd, REPLIES secure_sum|plain
  local method=$1 step=$2 replies=$3 sets=()
  [ "$step" = sgd ] && sets=(--set fl.item_optimizer=sgd --set fl.item_lr=30)
  local out="$here/results/round_cost/lastfm_${method}_${step}_${replies}_rounds$rounds"
  if [ ! -f "$out/metrics.json" ]; then
    fedsparse simulate configs/fleets/lastfm.toml --set sparse.method="$method" \
        --set fl.rounds="$rounds" --set fl.eval_every=0 \
        --set fl.privacy.training="$replies" "${sets[@]}" --out "$out"
    rm -rf "$out/model.npz" "$out/checkpoint" "$out/memory_vs_accuracy.png"
  fi
}
for method in sparserec nested_dims dense; do
  for step in adam sgd; do
    for replies in secure_sum plain; do
      cost_run "$method" "$step" "$replies"
    done
  done
done
python "$here/report.py"
