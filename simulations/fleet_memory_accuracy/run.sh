#!/usr/bin/env bash
# Fleet memory vs accuracy: every command the README lists, then the table generator.
# Runs whose metrics.json exists are kept. Usage: bash simulations/fleet_memory_accuracy/run.sh
# (the tuning runs that chose the recipe: tune.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
here=simulations/fleet_memory_accuracy
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
# lastfm_run OUT METHOD SEED [--set ...]: one LastFM fleet run into OUT unless it finished
# there (secure summation, the default protocol), each device tier's cross-tier ranking, then
# the model and checkpoints go (too large to keep).
lastfm_run() {
  local out=$1 method=$2 seed=$3
  shift 3
  if [ ! -f "$out/metrics.json" ]; then
    fedsparse simulate configs/fleets/lastfm.toml --set sparse.method="$method" \
        --set seed="$seed" "$@" --out "$out"
    python "$here/cross_tier.py" "$out"
    rm -rf "$out/model.npz" "$out/checkpoint"
  fi
}
# LastFM: the converged recipe of configs/fleets/lastfm.toml, seeds 0 and 1, every method.
for seed in 0 1; do
  for method in sparserec sparserec_no_nmf nested_dims dense; do
    lastfm_run "$here/results/lastfm_${method}_seed$seed" "$method" "$seed"
  done
done
# Federated SparseRec over 200 rounds (its cosine stretched), the length at which its
# validation run still gained (tune.sh step 10): README, "LastFM: each method at its length on
# validation".
for seed in 0 1; do
  lastfm_run "$here/results/rounds200/lastfm_sparserec_seed$seed" sparserec "$seed" \
      --set fl.rounds=200
done
# Federated SparseRec, nested dimensions and dense FedAvg with the devices' item step as plain
# SGD at the recipe's budgets, each at its best rate on validation (tune.sh: 30 for all three;
# random-init DST's runs would be federated SparseRec's), seeds 0 and 1: README, "LastFM: the
# devices' item step as plain SGD".
for seed in 0 1; do
  for method in sparserec nested_dims dense; do
    lastfm_run "$here/results/item_sgd/lastfm_${method}_seed$seed" "$method" "$seed" \
        --set fl.item_optimizer=sgd --set fl.item_lr=30
  done
done
# The recipe before tune.sh steps 9 and 10 (local batch size 8, 4 negatives per positive, moved
# fraction 0.3, 100 rounds): README, "LastFM: the previous recipe".
previous=(--set fl.rounds=100 --set fl.batch_size=8 --set fl.negatives=4
          --set sparse.initial_fraction=0.3)
for seed in 0 1; do
  for method in sparserec sparserec_no_nmf nested_dims dense; do
    lastfm_run "$here/results/previous/lastfm_${method}_seed$seed" "$method" "$seed" \
        "${previous[@]}"
  done
  # The same over 150 rounds (its cosine stretched), for the methods whose validation runs
  # gained from 150 rounds with the decay (tune.sh).
  for method in sparserec nested_dims sparserec_no_nmf; do
    lastfm_run "$here/results/longer/lastfm_${method}_seed$seed" "$method" "$seed" \
        "${previous[@]}" --set fl.rounds=150
  done
done
# Centralized references at each tier's memory, on the test split, seeds 0 and 1; and at the
# memory of the previous recipe's tiers (4 negatives: a larger growth buffer, a little less
# density per budget).
python "$here/references.py" --dataset lastfm --split test --seeds 0 1 --threads 1
python "$here/references.py" --dataset lastfm --split test --seeds 0 1 --threads 1 \
    "${previous[@]}" --tag previous
# The same at the tiers of the SGD item step (no optimizer state per entry: more density per
# budget, a wider d_t).
python "$here/references.py" --dataset lastfm --split test --seeds 0 1 --threads 1 \
    --set fl.item_optimizer=sgd --tag item_sgd
# Diagnostic (the flagship tier's gap, README), at the previous recipe: the LastFM fleet with
# one tier, every device given the flagship budget, on validation; and the centralized
# references on validation.
for method in sparserec nested_dims; do
  out="$here/results/diagnostics/lastfm_${method}_all_flagship_val"
  if [ ! -f "$out/metrics.json" ]; then
    fedsparse simulate configs/fleets/lastfm.toml --set sparse.method="$method" \
        --set data.split=val --set fl.privacy.training=plain \
        --set fl.tiers.wot.budget_bytes=1500000 --set fl.tiers.phone.budget_bytes=1500000 \
        --set fl.tiers.wot.growth_topk=2 "${previous[@]}" --out "$out"
    rm -rf "$out/model.npz" "$out/checkpoint"
  fi
done
python "$here/references.py" --dataset lastfm --split val --seeds 0 "${previous[@]}" \
    --tag previous
# Diagnostic (the same question without federation): centralized MF under the fleet's tiers
# (LastFM: the previous recipe's), each user with its tier's item entries or every user with
# the densest tier's (tier_mix.py; it skips the runs it has).
python "$here/tier_mix.py" --dataset lastfm --split val --seeds 0 1 "${previous[@]}" \
    --tag previous
# Gowalla's at the tiers of the devices' Adam item step at 2 / 4 / 8 MB (on the test split the
# same item densities as the recipe's SGD tiers).
adam=(--set fl.item_optimizer=adam --set fl.tiers.wot.budget_bytes=2000000
      --set fl.tiers.phone.budget_bytes=4000000 --set fl.tiers.flagship.budget_bytes=8000000)
python "$here/tier_mix.py" --dataset gowalla --split val --seeds 0 "${adam[@]}" --tag adam
python "$here/tier_mix.py" --dataset gowalla --split test --seeds 0 --variants tier_mix one_tier \
    "${adam[@]}" --tag adam
# Full Gowalla (configs/fleets/gowalla_full.toml: every user a device, every place an item),
# seed 0, plain training replies (secure summation costs about 35 CPU-seconds a round here:
# README), every method; then its centralized references.
# gowalla_run OUT METHOD [--set ...]: one Gowalla fleet run into OUT unless it finished there,
# its cross-tier ranking (and with $refit set, refit.py with those arguments), then the model
# and checkpoints go.
gowalla_run() {
  local out=$1 method=$2
  shift 2
  if [ ! -f "$out/metrics.json" ]; then
    fedsparse simulate configs/fleets/gowalla_full.toml --set sparse.method="$method" \
        --set fl.privacy.training=plain "$@" --out "$out"
    python "$here/cross_tier.py" "$out"
    if [ -n "${refit:-}" ]; then python "$here/refit.py" "$out" $refit; fi
    rm -rf "$out/model.npz" "$out/checkpoint"
  fi
}
# The recipe: every constrained method with the SGD item step at rate 10 over 1,800 rounds at
# 1.43 / 2.20 / 3.61 MB (tune.sh); dense FedAvg below.
for method in sparserec nested_dims sparserec_no_nmf; do
  gowalla_run "$here/results/gowalla_${method}_seed0" "$method"
done
# The recipe before the SGD item step (README, "Gowalla: the Adam item step over 900 rounds").
adam900=("${adam[@]}" --set fl.rounds=900 --set fl.eval_every=90)
# Federated SparseRec's final evaluation again with each device refitting its user row first,
# at the setting best on validation (tune.sh): README, "Gowalla: devices refit their user row".
refit="--setting 10:0.03" gowalla_run "$here/results/adam900/gowalla_sparserec_seed0" sparserec \
    "${adam900[@]}"
for method in nested_dims sparserec_no_nmf; do
  gowalla_run "$here/results/adam900/gowalla_${method}_seed0" "$method" "${adam900[@]}"
done
# Dense FedAvg at server step 1, its better step on validation at 1,000 devices a round
# (tune.sh: 0.0987 against 0.0942 at the recipe's step 3), with its validated Adam item step
# over 900 rounds: the unconstrained reference beside the recipe's runs too.
gowalla_run "$here/results/adam900/gowalla_dense_seed0" dense "${adam900[@]}" \
    --set fl.server_lr=1
# The Adam item step over 1,800 rounds (its cosine stretched, evaluated every 180 rounds), for
# the methods tuned at 1,800 rounds on validation (tune.sh).
longer=(--set fl.rounds=1800 --set fl.eval_every=180)
for method in sparserec nested_dims sparserec_no_nmf; do
  gowalla_run "$here/results/longer/gowalla_${method}_seed0" "$method" "${adam[@]}" \
      "${longer[@]}"
done
# Federated SparseRec with LastFM's knobs (local batches of 4, 2 negatives per positive, moved
# fraction 0.1) over 1,800 rounds, which beat the Adam recipe's knobs there on validation
# (tune.sh), beside the 1,800-round runs above: README, "Gowalla: LastFM's knobs over 1,800
# rounds". Its references sit at its tiers (2 negatives: a smaller growth buffer, more density
# per budget).
lastfm_knobs=(--set fl.batch_size=4 --set fl.negatives=2 --set sparse.initial_fraction=0.1)
gowalla_run "$here/results/lastfm_knobs/gowalla_sparserec_seed0" sparserec "${adam[@]}" \
    "${longer[@]}" "${lastfm_knobs[@]}"
# Federated SparseRec over 3,600 rounds, its longest validation run with the Adam item step
# (0.0812 against 0.0786 at 1,800 rounds, tune.sh): README, "Gowalla: 3,600 rounds"; its final
# evaluation again with each device refitting its user row first, at the settings best on the
# 900-round and the 3,600-round validation runs (tune.sh): README, "Gowalla: devices refit
# their user row".
refit="--setting 10:0.03 --setting 10:0.01" \
    gowalla_run "$here/results/rounds3600/gowalla_sparserec_seed0" \
    sparserec "${adam[@]}" --set fl.rounds=3600 --set fl.eval_every=360
# Federated SparseRec with the SGD item step over 900 rounds at rate 3, then at rate 10, better
# on validation (tune.sh): README, "Gowalla: the devices' item step as plain SGD" and "Gowalla:
# the SGD item step at rate 10".
gowalla_run "$here/results/item_sgd/gowalla_sparserec_seed0" sparserec \
    --set fl.rounds=900 --set fl.eval_every=90 --set fl.item_lr=3
gowalla_run "$here/results/item_sgd_rate10/gowalla_sparserec_seed0" sparserec \
    --set fl.rounds=900 --set fl.eval_every=90
# The centralized references at the recipe's tiers (SparseRec at each tier's density, dense MF
# at nested dimensions' d_t: 2 / 7 / 15), at the Adam item step's (the same densities, d_t 1 / 6
# / 14) and at those of LastFM's knobs.
python "$here/references.py" --dataset gowalla --split test --seeds 0
python "$here/references.py" --dataset gowalla --split test --seeds 0 "${adam[@]}" --tag adam
python "$here/references.py" --dataset gowalla --split test --seeds 0 "${adam[@]}" \
    "${lastfm_knobs[@]}" --tag lastfm_knobs
# The Quickstart as the README runs it (with its centralized reference), timed, alone on the
# machine, and at the recipe's steps before tune.sh step 11 raised them (the devices' rate, then
# the server's step): README, "LastFM: the recipe, tuned on validation data" (its last
# bullet). Large files are dropped.
quickstart_run() {  # quickstart_run OUT [KEY=VALUE ...]
  local out=$1; shift
  [ -f "$out/metrics.json" ] && return
  /usr/bin/time -f "%e s wall" -o "$out.time" fedsparse simulate configs/quickstart.toml \
      "${@/#/--set=}" --out "$out"
  mv "$out.time" "$out/wall_seconds.txt"
  rm -rf "$out/model.npz" "$out/checkpoint" "$out/memory_vs_accuracy.png" "$out/reference/model.npz"
}
quickstart_run "$here/results/quickstart/lr0.1_server_lr5_rounds50"
quickstart_run "$here/results/quickstart/lr0.1_rounds50" fl.server_lr=3
quickstart_run "$here/results/quickstart/lr0.05_rounds50" fl.lr=0.05 fl.server_lr=3
python "$here/report.py"
