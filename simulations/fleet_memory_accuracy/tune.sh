#!/usr/bin/env bash
# Every tuning run the README's tuning table lists (validation data only; tune.py), in the order
# they were tried. A run whose metrics.json exists is kept.
# Usage: bash simulations/fleet_memory_accuracy/tune.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
dataset=lastfm
tune() {  # tune METHOD ROUNDS [KEY=VALUE ...], on $dataset; $budgets: tier budgets, smallest first
  local method=$1 rounds=$2; shift 2
  local name="rounds=$rounds" sets=()
  for assignment in "$@"; do name+="+${assignment#fl.}"; sets+=(--set "$assignment"); done
  if [ -n "${budgets:-}" ]; then
    name+="+budgets=${budgets// /_}"; sets+=(--tier-budgets $budgets)
  fi
  [ -f "simulations/fleet_memory_accuracy/results/tuning/${dataset}_$method/$name/metrics.json" ] ||
    python simulations/fleet_memory_accuracy/tune.py --dataset "$dataset" --method "$method" \
        --rounds "$rounds" "${sets[@]}"
}
# 1. The old recipe (fl.l2 = 1e-4, server_lr = 10), then L2 and the two step sizes, on dense FedAvg.
tune dense 40
tune dense 40 fl.l2=0.001
tune dense 40 fl.l2=0.01
tune dense 40 fl.l2=0.01 fl.server_lr=3
tune dense 40 fl.l2=0.01 fl.lr=0.01
# 2. The same settings on the sparse methods.
for method in sparserec nested_dims sparserec_no_nmf; do
  tune "$method" 40
  tune "$method" 40 fl.l2=0.01
  tune "$method" 40 fl.l2=0.01 fl.server_lr=3
done
tune dense 40 fl.l2=0.01 fl.server_lr=1
tune sparserec 40 fl.l2=0.01 fl.server_lr=1
tune nested_dims 40 fl.l2=0.01 fl.server_lr=1
# 3. More local work per round (fewer rounds to convergence), each method at its best of 1-2.
tune dense 40 fl.l2=0.01 fl.server_lr=3 fl.local_epochs=3
tune sparserec 40 fl.l2=0.01 fl.local_epochs=3
tune sparserec 40 fl.l2=0.01 fl.server_lr=3 fl.local_epochs=3
# 4. Convergence: the common recipe (fl.l2 = 0.01, fl.server_lr = 3, 1 local epoch), 150 rounds.
for method in dense sparserec sparserec_no_nmf nested_dims; do
  tune "$method" 150 fl.l2=0.01 fl.server_lr=3
done
# 5. The devices' learning rate decayed over the rounds (cosine), on the two methods whose
#    tiers hold different item entries.
for method in sparserec nested_dims; do
  tune "$method" 150 fl.l2=0.01 fl.server_lr=3 fl.lr_schedule=cosine
done
# 6. The schedule of the recipe before step 9 (cosine over 100 rounds), every method.
for method in dense sparserec sparserec_no_nmf nested_dims; do
  tune "$method" 100 fl.l2=0.01 fl.server_lr=3 fl.lr_schedule=cosine
done
# 7. The same budget for every method (9 runs each): what only some methods had, for the others.
tune sparserec_no_nmf 40 fl.l2=0.01 fl.server_lr=1
tune nested_dims 40 fl.l2=0.01 fl.local_epochs=3
tune nested_dims 40 fl.l2=0.01 fl.server_lr=3 fl.local_epochs=3
tune sparserec_no_nmf 40 fl.l2=0.01 fl.local_epochs=3
tune sparserec_no_nmf 40 fl.l2=0.01 fl.server_lr=3 fl.local_epochs=3
for method in sparserec_no_nmf nested_dims; do
  tune "$method" 150 fl.l2=0.01 fl.server_lr=3 fl.lr_schedule=cosine
done
# 8. The server's step as per-entry Adam on the mean delta (fl.server_optimizer = "adam"), two
#    step sizes, on federated SparseRec with the final schedule.
for lr in 0.01 0.03; do
  tune sparserec 100 fl.l2=0.01 fl.server_lr=$lr fl.lr_schedule=cosine fl.server_optimizer=adam
done
# 9. The knobs the recipe had not varied, one at a time on the final recipe (100 rounds, cosine):
#    local batch size and negatives per positive for every method; moved fraction and mask
#    interval for the two DST methods; NMF rounds for federated SparseRec.
final=(fl.l2=0.01 fl.server_lr=3 fl.lr_schedule=cosine)
for method in sparserec nested_dims; do tune "$method" 100 "${final[@]}" fl.batch_size=16; done
for method in sparserec nested_dims; do tune "$method" 100 "${final[@]}" fl.negatives=8; done
for method in sparserec nested_dims; do tune "$method" 100 "${final[@]}" fl.batch_size=4; done
for method in sparserec nested_dims; do tune "$method" 100 "${final[@]}" fl.negatives=2; done
tune sparserec 100 "${final[@]}" sparse.initial_fraction=0.1
tune sparserec 100 "${final[@]}" sparse.initial_fraction=0.5
tune sparserec 100 "${final[@]}" fl.mask_interval=5
tune sparserec 100 "${final[@]}" fl.nmf_rounds=30
for method in sparserec_no_nmf dense; do
  for knob in fl.batch_size=16 fl.negatives=8 fl.batch_size=4 fl.negatives=2; do
    tune "$method" 100 "${final[@]}" "$knob"
  done
done
for knob in sparse.initial_fraction=0.1 sparse.initial_fraction=0.5 fl.mask_interval=5; do
  tune sparserec_no_nmf 100 "${final[@]}" "$knob"
done
#    Then the two best single changes together, every method; with moved fraction 0.1 on the DST
#    methods; with 30 NMF iterations on federated SparseRec.
for method in sparserec nested_dims sparserec_no_nmf dense; do
  tune "$method" 100 "${final[@]}" fl.batch_size=4 fl.negatives=2
done
for method in sparserec sparserec_no_nmf; do
  tune "$method" 100 "${final[@]}" fl.batch_size=4 fl.negatives=2 sparse.initial_fraction=0.1
done
tune sparserec 100 "${final[@]}" fl.batch_size=4 fl.negatives=2 sparse.initial_fraction=0.1 \
    fl.nmf_rounds=30
# 10. The retuned knobs over 150 rounds (the cosine stretched), every method: the final recipe
#     (configs/fleets/lastfm.toml), whose test runs are the README's LastFM fleet.
tune_retuned() {  # tune_retuned METHOD ROUNDS [KEY=VALUE ...]: the final recipe's knobs (moved
  local knobs=(fl.batch_size=4 fl.negatives=2)         # fraction: DST only) and any others
  case $1 in sparserec*) knobs+=(sparse.initial_fraction=0.1) ;; esac
  tune "$1" "$2" "${final[@]}" "${knobs[@]}" "${@:3}"
}
for method in sparserec nested_dims sparserec_no_nmf dense; do tune_retuned "$method" 150; done
#     Over 200 rounds for the two methods that gained more than 0.002 over the last fifth of
#     the 150 (federated SparseRec and nested dimensions): does a longer schedule move the end?
for method in sparserec nested_dims; do tune_retuned "$method" 200; done
#     Over 250 rounds for federated SparseRec, the one method still gaining more than 0.002 over
#     the last fifth of the 200 (nested dimensions ended lower at 200 than at 150).
tune_retuned sparserec 250
# 11. The Quickstart (configs/quickstart.toml: the final recipe over fewer rounds, under secure
#     summation): the fewest rounds within 0.01 of the 150-round recipe (40, 50, 60), and with 5
#     NMF iterations instead of 10; then, at 50 rounds, a larger step on the server and on the
#     devices.
for rounds in 40 50 60; do tune_retuned sparserec $rounds; done
tune_retuned sparserec 50 fl.nmf_rounds=5
tune_retuned sparserec 50 fl.server_lr=5
tune_retuned sparserec 50 fl.lr=0.1
#     At the devices' rate 0.1 (50 rounds of it ended 0.0103 below the 150-round recipe on
#     test): with the larger server step too (the Quickstart now), a larger rate still, and 60
#     rounds.
tune_retuned sparserec 50 fl.lr=0.1 fl.server_lr=5
tune_retuned sparserec 50 fl.lr=0.15
tune_retuned sparserec 60 fl.lr=0.1
# 12. The devices' rate 0.1 on the 150-round recipe, every method (60 rounds at 0.1 ended above
#     the 150 rounds at 0.05 on validation, step 11). Every method ends higher; the test runs
#     are still at 0.05.
for method in sparserec nested_dims sparserec_no_nmf dense; do tune_retuned "$method" 150 fl.lr=0.1; done

# Full Gowalla: the LastFM recipe with 10,000 devices a round and sampled NMF, then a larger
# server step.
dataset=gowalla
gowalla=(fl.lr_schedule=cosine fl.clients_per_round=10000 fl.nmf_devices=3000 fl.nmf_rounds=10)
tune sparserec 90 fl.l2=0.01 fl.server_lr=3 "${gowalla[@]}"
tune sparserec 90 fl.l2=0.01 fl.server_lr=10 "${gowalla[@]}"
# The same device work (900,000 device-rounds: each device trains in about 30 rounds) in more,
# smaller rounds: 3,000 devices a round over 300 rounds, so the server steps 3.3 times as often
# per pass over the data; masks still move about every 0.7 passes (every 7 rounds), evaluated
# every 30 rounds.
smaller=(fl.lr_schedule=cosine fl.clients_per_round=3000 fl.nmf_devices=3000 fl.nmf_rounds=10
         fl.mask_interval=7 fl.eval_every=30)
tune sparserec 300 fl.l2=0.01 fl.server_lr=3 "${smaller[@]}"
# And 1,000 devices a round over 900 rounds (masks every 21 rounds, evaluated every 90).
smallest=(fl.lr_schedule=cosine fl.clients_per_round=1000 fl.nmf_devices=3000 fl.nmf_rounds=10
          fl.mask_interval=21 fl.eval_every=90)
tune sparserec 900 fl.l2=0.01 fl.server_lr=3 "${smallest[@]}"
# The other methods at 1,000 devices a round.
tune nested_dims 900 fl.l2=0.01 fl.server_lr=3 "${smallest[@]}"
tune sparserec_no_nmf 900 fl.l2=0.01 fl.server_lr=3 "${smallest[@]}"
# A lower device learning rate (0.02, LastFM's 0.05 before), at 1,000 devices a round.
tune sparserec 900 fl.l2=0.01 fl.server_lr=3 fl.lr=0.02 "${smallest[@]}"
# Dense FedAvg at 1,000 devices a round.
tune dense 900 fl.l2=0.01 fl.server_lr=3 "${smallest[@]}"
# Twice the rounds at 1,000 devices a round (1,800: each device trains in about 60 rounds), the
# cosine over the whole run, masks still every 21 rounds, evaluated every 180.
longer=(fl.lr_schedule=cosine fl.clients_per_round=1000 fl.nmf_devices=3000 fl.nmf_rounds=10
        fl.mask_interval=21 fl.eval_every=180)
tune sparserec 1800 fl.l2=0.01 fl.server_lr=3 "${longer[@]}"
# The same 1,800 rounds for nested dimensions, the method furthest below 1.5 x popularity.
tune nested_dims 1800 fl.l2=0.01 fl.server_lr=3 "${longer[@]}"
# A smaller server step (1 against 3; LastFM chose 3 with every device every round) at 1,000
# devices a round, where most item rows are updated by a few devices a round.
tune sparserec 900 fl.l2=0.01 fl.server_lr=1 "${smallest[@]}"
# The server's step as per-entry Adam (LastFM's better step, 0.03) at 1,000 devices a round: each
# entry's step no longer scales with a mean delta that a few devices make.
tune sparserec 900 fl.l2=0.01 fl.server_lr=0.03 fl.server_optimizer=adam "${smallest[@]}"
# Server Adam ended level with the step 3 and nearer flat (+0.0029 over the last fifth against
# +0.0093): the same over 1,800 rounds, to see whether it converges there.
tune sparserec 1800 fl.l2=0.01 fl.server_lr=0.03 fl.server_optimizer=adam "${longer[@]}"
# Server Adam for nested dimensions too (900 rounds), the method SparseRec must beat per tier.
tune nested_dims 900 fl.l2=0.01 fl.server_lr=0.03 fl.server_optimizer=adam "${smallest[@]}"
# Length is the one setting that has moved the endpoint (900 -> 1,800 rounds: 0.0695 -> 0.0786):
# 3,600 rounds at 1,000 devices a round (each device trains in about 120 rounds), the cosine over
# the whole run, masks still every 21 rounds, evaluated every 360.
longest=(fl.lr_schedule=cosine fl.clients_per_round=1000 fl.nmf_devices=3000 fl.nmf_rounds=10
         fl.mask_interval=21 fl.eval_every=360)
tune sparserec 3600 fl.l2=0.01 fl.server_lr=3 "${longest[@]}"
# Dense FedAvg at a smaller server step (1 against 3; its local loss rose for about 180 rounds at
# step 3, the furthest from converged of the 900-round runs), 1,000 devices a round.
tune dense 900 fl.l2=0.01 fl.server_lr=1 "${smallest[@]}"
# Two local epochs at 1,000 devices a round over 900 rounds: the device work of the 1,800-round
# run (each device trains in about 30 rounds, two passes each) at half its server rounds.
tune sparserec 900 fl.l2=0.01 fl.server_lr=3 fl.local_epochs=2 "${smallest[@]}"
# Masks moved three times as often (every 7 rounds, about every 0.23 passes) at 1,000 devices a
# round over 900 rounds: what the fleet has over the fixed-mask tier mix is masks that move.
tune sparserec 900 fl.l2=0.01 fl.server_lr=3 "${smallest[@]}" fl.mask_interval=7
# The LastFM knobs of step 9 (batches of 4, 2 negatives, moved fraction 0.1), which lifted every
# LastFM method, at 1,000 devices a round over 900 rounds.
tune sparserec 900 fl.l2=0.01 fl.server_lr=3 "${smallest[@]}" fl.batch_size=4 fl.negatives=2 \
    sparse.initial_fraction=0.1
# The same knobs over 1,800 rounds (0.0786 with the old ones), the length that moved the end.
tune sparserec 1800 fl.l2=0.01 fl.server_lr=3 "${longer[@]}" fl.batch_size=4 fl.negatives=2 \
    sparse.initial_fraction=0.1
# The 1,800-round schedule for random-init DST, the third method with a constrained model (its
# test run so far: 900 rounds), so that it has the length SparseRec and nested dimensions had.
tune sparserec_no_nmf 1800 fl.l2=0.01 fl.server_lr=3 "${longer[@]}"
# Half the round size: 500 devices a round over 1,800 rounds, the device work of the 900-round
# runs (each device trains in about 30 rounds) with the server stepping twice as often per pass
# (from 10,000 to 3,000 to 1,000 devices a round each gained at that work), masks every 42
# rounds (still about every 0.7 passes), evaluated every 180.
half=(fl.lr_schedule=cosine fl.clients_per_round=500 fl.nmf_devices=3000 fl.nmf_rounds=10
      fl.mask_interval=42 fl.eval_every=180)
tune sparserec 1800 fl.l2=0.01 fl.server_lr=3 "${half[@]}"
# Each device refits its user row to its own training interactions against its tier's final
# slice before it ranks (fl.refit_steps, fl.refit_lr; the slice frozen).
# refit_grid ROUNDS EVAL_EVERY "STEPS" "RATES": the recipe's run of ROUNDS again (tune.py keeps
# no model.npz; the rerun ends with the same metrics), its final evaluation repeated per
# (steps, rate) into refit.json.
refit_grid() {
  local rounds=$1 eval_every=$2 steps=$3 rates=$4
  local run="simulations/fleet_memory_accuracy/results/tuning/gowalla_sparserec/rounds=$rounds"
  run+="+l2=0.01+server_lr=3+lr_schedule=cosine+clients_per_round=1000+nmf_devices=3000"
  run+="+nmf_rounds=10+mask_interval=21+eval_every=$eval_every"
  [ -f "$run/refit.json" ] ||
    python simulations/fleet_memory_accuracy/tune.py --dataset gowalla --method sparserec \
        --rounds "$rounds" --set fl.l2=0.01 --set fl.server_lr=3 --set fl.lr_schedule=cosine \
        --set fl.clients_per_round=1000 --set fl.nmf_devices=3000 --set fl.nmf_rounds=10 \
        --set fl.mask_interval=21 --set fl.eval_every="$eval_every" \
        --refit-steps $steps --refit-lr $rates
}
refit_grid 900 90 "10 20 40" "0.003 0.01 0.03"
# The same on the 3,600-round run, whose rows trained about 120 times against the 900-round
# run's 30: fewer steps and lower rates beside the 900-round grid's corners.
refit_grid 3600 360 "5 10 20" "0.001 0.003 0.01 0.03"
# The devices' item step as plain SGD (fl.item_optimizer = "sgd"): Adam's moments, fresh each
# round, make a device's first steps about fl.lr on every entry with a gradient, whatever its
# size; SGD's delta follows the gradient. At the Adam tiers' densities (the budgets less the two
# moments per entry SGD does not hold), so the fleets differ only in the step; rate 3.
budgets="1371513 2140743 3537705" tune sparserec 900 fl.l2=0.01 fl.server_lr=3 "${smallest[@]}" \
    fl.item_optimizer=sgd fl.item_lr=3
#     Then rate 10 (LastFM's SGD runs chose 30 of 1 / 3 / 10 / 30 / 100).
budgets="1371513 2140743 3537705" tune sparserec 900 fl.l2=0.01 fl.server_lr=3 "${smallest[@]}" \
    fl.item_optimizer=sgd fl.item_lr=10
# LastFM: the devices' item step as plain SGD at the recipe's budgets (300 / 700 / 1,500 KB), on
# federated SparseRec and on nested dimensions (whose d_t grows by the same rule); rates 1 / 3 /
# 10, then 30 and 100 (each the best so far for federated SparseRec when the next was added).
dataset=lastfm
for method in sparserec nested_dims; do
  for rate in 1 3 10 30 100; do
    tune_retuned "$method" 150 fl.item_optimizer=sgd fl.item_lr=$rate
  done
done
# The same SGD grid for dense FedAvg (the whole table on every device, the unconstrained
# reference). Random-init DST gets none: with the densest tier at density 1.0 its first mask is
# the full one, as federated SparseRec's (initial_top_mask), and the two methods differ in
# nothing else, so its runs would be federated SparseRec's.
for rate in 1 3 10 30 100; do
  tune_retuned dense 150 fl.item_optimizer=sgd fl.item_lr=$rate
done
# Gowalla, the SGD item step at rate 10 over 1,800 rounds: its 900-round run still gained 0.0041
# over its last fifth on validation (0.0764 at round 720, 0.0805 at 900), so the convergence rule
# asks for a longer run; the same budgets, the cosine over all the rounds, evaluated every 180.
dataset=gowalla
budgets="1371513 2140743 3537705" tune sparserec 1800 fl.l2=0.01 fl.server_lr=3 "${longer[@]}" \
    fl.item_optimizer=sgd fl.item_lr=10
# Nested dimensions with the same step at the same budgets over 1,800 rounds, the equal-bytes
# alternative to the run above (its d_t sized for SGD's state, by the rule of its Adam runs).
budgets="1371513 2140743 3537705" tune nested_dims 1800 fl.l2=0.01 fl.server_lr=3 "${longer[@]}" \
    fl.item_optimizer=sgd fl.item_lr=10
# Random-init DST with the same step, budgets and length: every constrained method of the
# recipe (configs/fleets/gowalla_full.toml) with a validation run on it.
budgets="1371513 2140743 3537705" tune sparserec_no_nmf 1800 fl.l2=0.01 fl.server_lr=3 \
    "${longer[@]}" fl.item_optimizer=sgd fl.item_lr=10
