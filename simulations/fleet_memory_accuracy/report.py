"""Write the README's tables (and the comparison plot) from results/*/ (never typed by hand).

Runs are ``results/<dataset>_<method>_seed<s>/`` (``fedsparse simulate`` results directories),
the same for the other test runs of ``run.sh`` (:data:`EXTRA_RUNS`: ``results/previous/``,
``results/longer/``, ``results/rounds200/``, ``results/lastfm_knobs/``,
``results/rounds3600/``, ``results/item_sgd/``, ``results/item_sgd_rate10/``,
``results/adam900/``), with an overview of issue 15's targets over all of them;
``results/round_cost/`` (``round_cost.sh``), ``results/tuning/<dataset>_<method>/<setting>/``
(``tune.py``), ``results/references/<dataset>_<split>[_<tag>]/`` (``references.py``) and
``results/tier_mix/<dataset>_<split>[_<tag>]/`` (``tier_mix.py``).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from fedsparse.config import load_config
from fedsparse.data import load_dataset
from fedsparse.federated.fleet import fleet_users
from fedsparse.metrics.ranking import evaluate_embeddings
from fedsparse.report.tables import replace_block
from references import FLEETS, results_dir  # this directory's references.py
from tier_mix import VARIANTS, variant_label  # this directory's tier_mix.py

HERE = Path(__file__).resolve().parent
#: Below this Recall@20 on both sides a comparison says nothing (LastFM's fleets reach 0.09+).
NOISE_RECALL = 0.01
METHODS = {"sparserec": "federated SparseRec", "sparserec_no_nmf": "random-init federated DST",
           "nested_dims": "nested dimensions", "dense": "dense FedAvg"}


#: The tag (``references.py``/``tier_mix.py --tag``) of the runs at the tiers of LastFM's recipe
#: before tune.sh steps 9 and 10 (4 negatives: a larger growth buffer, a little less density).
PREVIOUS = "previous"
#: The tag of the references at the tiers of Gowalla's fleet with LastFM's knobs (2 negatives:
#: a smaller growth buffer, more density per budget).
LASTFM_KNOBS = "lastfm_knobs"
#: The tag of the references at the tiers of LastFM's fleet with the devices' item step as plain
#: SGD (no optimizer state per entry: more density per budget).
ITEM_SGD = "item_sgd"
#: The tag of the references and diagnostics at the tiers of Gowalla's fleet with the devices'
#: Adam item step at 2 / 4 / 8 MB (the recipe before the SGD item step): the same densities as
#: the recipe's on the test split, a narrower d_t (1 / 6 / 14 against 2 / 7 / 15).
ADAM = "adam"
#: Per dataset, the directory whose runs stand in for the methods the main runs lack: Gowalla's
#: dense FedAvg keeps its validated Adam item step at server step 1 over 900 rounds (the
#: unconstrained reference).
MAIN_STAND_INS = {"gowalla": HERE / "results" / "adam900"}
#: Test runs beside the main ones (run.sh), by the README block prefix that tables them: their
#: directory; per dataset, the tag of their centralized references (none: the final configs'
#: tiers); per dataset, the directory whose runs stand in for the methods they lack. LastFM's
#: previous recipe over 100 rounds, and stretched to 150; Gowalla's Adam-step runs stretched to
#: 1,800 rounds; LastFM's federated SparseRec over 200 rounds (its length on validation) beside the
#: other methods' main runs (150 rounds, theirs); Gowalla's federated SparseRec with LastFM's
#: knobs over 1,800 rounds beside the other methods' 1,800-round runs; Gowalla's federated
#: SparseRec over 3,600 rounds (its longest validation run) beside the 1,800-round runs; the
#: devices' item step as plain SGD: LastFM's federated SparseRec, nested dimensions and dense
#: FedAvg at the recipe's budgets (references at the SGD tiers, tag :data:`ITEM_SGD`) beside
#: random-init DST's main run; Gowalla's federated SparseRec over 900 rounds at the SGD rates 3
#: and 10 beside the Adam item step's 900-round runs (references at the Adam item step's tiers,
#: the same densities, nested dimensions' d_t there); Gowalla's recipe before the SGD item step
#: (the Adam item step at 2 / 4 / 8 MB over 900 rounds, references tagged :data:`ADAM`), the
#: same over 1,800 rounds, and federated SparseRec over 3,600 rounds beside those.
_ADAM_900 = HERE / "results" / "adam900"
EXTRA_RUNS = {"adam900": (_ADAM_900, {"gowalla": ADAM}, {}),
              "previous": (HERE / "results" / "previous", {"lastfm": PREVIOUS}, {}),
              "longer": (HERE / "results" / "longer", {"lastfm": PREVIOUS, "gowalla": ADAM}, {}),
              "rounds200": (HERE / "results" / "rounds200", {}, {"lastfm": HERE / "results"}),
              LASTFM_KNOBS: (HERE / "results" / LASTFM_KNOBS, {"gowalla": LASTFM_KNOBS},
                             {"gowalla": HERE / "results" / "longer"}),
              "rounds3600": (HERE / "results" / "rounds3600", {"gowalla": ADAM},
                             {"gowalla": HERE / "results" / "longer"}),
              "item-sgd": (HERE / "results" / "item_sgd", {"lastfm": ITEM_SGD, "gowalla": ADAM},
                           {"lastfm": HERE / "results", "gowalla": _ADAM_900}),
              "item-sgd-rate10": (HERE / "results" / "item_sgd_rate10", {"gowalla": ADAM},
                                  {"gowalla": _ADAM_900})}
#: Per dataset, the tag of the diagnostics' references and tier-mix runs (none: the final
#: configs' tiers): LastFM's ran at the previous recipe, Gowalla's at the Adam item step's tiers.
DIAGNOSTIC_TAGS = {"lastfm": PREVIOUS, "gowalla": ADAM}


def run_dirs(dataset: str, method: str, root: Path = HERE / "results") -> list[Path]:
    """A method's finished runs on ``dataset``: ``<root>/<dataset>_<method>_seed<s>/``."""
    return [path.parent for path in
            sorted(root.glob(f"{dataset}_{method}_seed*/metrics.json"))]


def load_runs(dataset: str, root: Path = HERE / "results") -> dict[str, dict]:
    """metrics.json of each method's runs on ``dataset`` under ``root`` that exist: numbers
    averaged over the seeds (first seed's for the rest), the seeds' directories under
    ``"dirs"``."""
    runs = {}
    for method in METHODS:
        dirs = run_dirs(dataset, method, root)
        if not dirs:
            continue
        seeds = [json.loads((out / "metrics.json").read_text()) for out in dirs]
        runs[method] = {**_mean_of(seeds), "dirs": dirs}
    return runs


def run_set(dataset: str, root: Path, stand_in_roots: dict[str, Path]) -> dict[str, dict]:
    """:func:`load_runs` under ``root``, the methods it lacks from ``stand_in_roots[dataset]``
    (if any), in the order of :data:`METHODS`; empty when ``root`` holds no run of
    ``dataset``."""
    runs = load_runs(dataset, root)
    if not runs or dataset not in stand_in_roots:
        return runs
    stand_ins = load_runs(dataset, stand_in_roots[dataset])
    return {method: runs.get(method, stand_ins.get(method)) for method in METHODS
            if method in runs or method in stand_ins}


def _mean_of(values: list):
    """The seeds' mean of every number in a nested dict (booleans: all of them)."""
    first = values[0]
    if isinstance(first, dict):
        return {key: _mean_of([value[key] for value in values]) for key in first}
    if isinstance(first, bool):
        return all(values)
    if isinstance(first, (int, float)):
        return float(np.mean(values))
    return first


def tier_table(runs: dict[str, dict]) -> str:
    rows = []
    for method, metrics in runs.items():
        for tier, values in metrics["tiers"].items():
            rows.append({"method": METHODS[method], "tier": tier,
                         "devices": values["devices"],
                         "budget (KB)": values["budget_bytes"] / 1000,
                         "density": values["density"],
                         "model bytes, max (KB)": values["model_bytes_max"] / 1000,
                         "train bytes, max (KB)": values["train_bytes_max"] / 1000,
                         "Recall@20": values["recall@20"], "NDCG@20": values["ndcg@20"],
                         "up / device-round (KB)": values["up_bytes_per_device_round"] / 1000,
                         "down / message (KB)": values["down_bytes_per_message"] / 1000})
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=("", "", ".0f", ".0f", ".4f",
                                                                 ".1f", ".1f", ".4f", ".4f",
                                                                 ".1f", ".1f"))


def fleet_table(runs: dict[str, dict]) -> str:
    rows = []
    for method, metrics in runs.items():
        sampled = _history(metrics["dirs"][0])["sampled"]
        # seconds of the first seed's run, which ran alone on the machine
        first = json.loads((metrics["dirs"][0] / "runtime.json").read_text())
        row = {"method": METHODS[method], "seeds": len(metrics["dirs"]),
               "devices": metrics["devices"], "devices / round": int(sampled.median()),
               "rounds": metrics["rounds"], "Recall@20": metrics["recall@20"],
               "NDCG@20": metrics["ndcg@20"],
               "up / round (MB)": metrics["up_bytes_per_round"] / 1e6,
               "down / round (MB)": metrics["down_bytes_per_round"] / 1e6,
               "all within budget": "yes" if metrics["within_budget"] else "no",
               "init (s)": first["init_seconds"], "s / round": first["seconds_per_round"]}
        rows.append(row)
    formats = ("", ".0f", ".0f", ".0f", ".0f", ".4f", ".4f", ".2f", ".1f", "", ".1f", ".1f")
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=formats)


def curve_table(runs: dict[str, dict]) -> str:
    """Fleet Recall@20 after each evaluated round (mean over seeds), one row per method, the
    rounds of every run in order (blank where a run was not evaluated)."""
    means = {METHODS[method]: pd.concat([_curve(out) for out in metrics["dirs"]],
                                        axis=1).mean(axis=1)
             for method, metrics in runs.items()}
    table = pd.DataFrame(means).sort_index().T  # (method, evaluated round)
    table.columns = [f"round {r}" for r in table.columns]
    table = table.rename_axis("method").reset_index()
    return _blank_missing(table).to_markdown(index=False, floatfmt=".4f")


#: Rounds shown for every tuning run (the convergence runs' whole curves: convergence_table).
TUNING_ROUNDS = (10, 20, 30, 40)
#: A run has converged when validation Recall@20 gains less than this over its last fifth.
CONVERGED_GAIN = 0.002


@functools.cache
def _history(out: Path) -> pd.DataFrame:
    """A run's ``history.csv`` (read once; callers do not modify it)."""
    return pd.read_csv(out / "history.csv")


def _curve(out: Path) -> pd.Series:
    """Recall@20 by evaluated round of a run."""
    history = _history(out).dropna(subset=["recall@20"])
    return history.set_index(history["round"].astype(int))["recall@20"]


def last_fifth_gain(curve: pd.Series) -> tuple[float, int]:
    """Recall@20 gained from the evaluated round nearest 4/5 of the last one, and that round."""
    last = int(curve.index.max())
    start = int(min(curve.index, key=lambda r: abs(r - 0.8 * last)))
    return float(curve[last] - curve[start]), start


def _blank_missing(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its missing values shown as blanks."""
    return table.astype(object).where(table.notna(), "")


def tuning_table(dataset: str) -> str | None:
    """Every tuning run (``tune.py``) on ``dataset``: validation Recall@20 at the first
    rounds and the last, the gain over the last fifth of the rounds and seconds per round;
    None before any."""
    rows = []
    for run in sorted((HERE / "results" / "tuning").glob(f"{dataset}_*/*/metrics.json")):
        curve = _curve(run.parent)
        method = run.parent.parent.name.split("_", 1)[1]
        gain, _ = last_fifth_gain(curve)
        rows.append({"method": METHODS.get(method, method),
                     "setting": run.parent.name.replace("+", ", "),
                     **{f"r{r}": curve.get(r, np.nan) for r in TUNING_ROUNDS},
                     "last": curve.iloc[-1], "gain, last fifth": gain,
                     "s / round": json.loads((run.parent / "runtime.json").read_text())[
                         "seconds_per_round"]})
    if not rows:
        return None
    return _blank_missing(pd.DataFrame(rows)).to_markdown(index=False, floatfmt=".4f")


def convergence_table(dataset: str) -> str | None:
    """Each method's convergence runs: validation Recall@20 at every evaluated round and
    whether the last fifth gained less than :data:`CONVERGED_GAIN`; one table per number of
    devices a round (the runs in one table share their evaluated rounds), each after a line
    naming it when there are several."""
    groups: dict[int, list[dict]] = {}
    for method, out in convergence_runs(dataset):
        curve = _curve(out)
        gain, start = last_fifth_gain(curve)
        sampled = int(_history(out)["sampled"].max())
        groups.setdefault(sampled, []).append(
            {"method": METHODS[method], "setting": out.name.replace("+", ", "),
             **{f"r{r}": value for r, value in curve.items()},
             "gain, last fifth": gain, "from round": start,
             "converged": "yes" if gain < CONVERGED_GAIN else "no"})
    tables = []
    for sampled, rows in sorted(groups.items(), reverse=True):
        table = pd.DataFrame(rows)
        rounds = sorted((c for c in table.columns if c[0] == "r" and c[1:].isdigit()),
                        key=lambda c: int(c[1:]))
        columns = ["method", "setting", *rounds, "gain, last fifth", "from round", "converged"]
        markdown = _blank_missing(table[columns]).to_markdown(index=False, floatfmt=".4f")
        tables.append(markdown if len(groups) == 1
                      else f"{sampled} devices a round:\n\n{markdown}")
    return "\n\n".join(tables) if tables else None


#: Fed SparseRec per tier against centralized SparseRec at the tier's density (issue 15).
TIER_RATIO = {"lastfm": 0.90, "gowalla": 0.80}
#: Dense FedAvg against centralized dense MF (LastFM).
DENSE_RATIO = 0.90
#: Every fleet method against the popularity ranking (full Gowalla).
POPULARITY_RATIO = {"gowalla": 1.5}
#: Datasets whose fleets ran with plain training replies (README: why).
PLAIN_REPLIES = ("gowalla",)


def references(dataset: str, split: str = "test", tag: str = "") -> dict[str, float]:
    """Centralized references (``references.py``, ``--tag tag`` if given) on ``split``:
    name -> Recall@20, mean over the seeds run."""
    found: dict[str, list[float]] = {}
    for path in sorted(results_dir(dataset, split, tag).glob("*_seed*/metrics.json")):
        name = path.parent.name.rsplit("_seed", 1)[0]
        found.setdefault(name, []).append(json.loads(path.read_text())["recall@20"])
    return {name: float(np.mean(values)) for name, values in found.items()}


def reference_width(dataset: str, name: str, tag: str = "") -> float:
    """``model.dim`` of the centralized reference ``name`` (its first seed; NaN if not run)."""
    configs = sorted(results_dir(dataset, "test", tag).glob(f"{name}_seed*/config.toml"))
    return load_config(configs[0]).model.dim if configs else np.nan


def reference_table(dataset: str, runs: dict[str, dict], tag: str = "") -> str | None:
    """Per tier: each fleet method's Recall@20 beside the centralized references at the tier's
    memory (those tagged ``tag``; None before any reference); d_t is the width of the tier's
    dense MF reference."""
    central = references(dataset, tag=tag)
    if not central or "sparserec" not in runs:
        return None
    rows = []
    for tier, values in runs["sparserec"]["tiers"].items():
        row = {"tier": tier, "budget (KB)": values["budget_bytes"] / 1000,
               "density": values["density"],
               "d_t": reference_width(dataset, f"dense_mf_{tier}", tag)}
        for method, metrics in runs.items():
            row[METHODS[method]] = metrics["tiers"][tier]["recall@20"]
        row["central SparseRec at density"] = central.get(f"sparserec_{tier}", np.nan)
        row["central dense MF at d_t"] = central.get(f"dense_mf_{tier}", np.nan)
        row["central dense MF, d = 64"] = central.get("dense_mf", np.nan)
        row["fed / central SparseRec"] = values["recall@20"] / row["central SparseRec at density"]
        rows.append(row)
    table = pd.DataFrame(rows)
    formats = [".0f" if column in ("budget (KB)", "d_t") else ".4f" for column in table.columns]
    return table.to_markdown(index=False, floatfmt=formats)


@dataclass(frozen=True)
class Check:
    """One of issue 15's targets checked on a set of runs: the overview's column and cell
    (:func:`target_overview`), the README's list line, and whether it was met."""
    column: str
    cell: str
    line: str
    met: bool


def _verdict(met: bool) -> str:
    return f"**{'met' if met else 'MISSED'}**"


def tier_ratio_check(dataset: str, tier: str, recall: float, reference: float,
                     label: str = "") -> Check:
    """Issue 15's per-tier target: federated SparseRec's Recall@20 ``recall`` at ``tier``
    against centralized SparseRec's ``reference`` at the tier's density (the line starts with
    ``label``, else with the tier)."""
    ratio, wanted = recall / reference, TIER_RATIO[dataset]
    line = (f"- {label or f'tier {tier}'}: federated SparseRec {recall:.4f} = {ratio:.2f} x "
            f"centralized SparseRec at its density ({reference:.4f}), against {wanted:.2f} x: "
            f"{_verdict(ratio >= wanted)}.")
    return Check(f"{tier}: x central SparseRec", f"{ratio:.2f} x", line, ratio >= wanted)


def convergence_checks(dataset: str, runs: dict[str, dict], tag: str = "") -> list[Check]:
    """Issue 15's targets, checked on the result files against the centralized references
    tagged ``tag``."""
    central, checks = references(dataset, tag=tag), []
    for method in ("sparserec", "sparserec_no_nmf", "nested_dims"):
        if method in runs:
            ok = runs[method]["within_budget"]
            checks.append(Check("within budget", "yes" if ok else f"no: {METHODS[method]}",
                                f"- {METHODS[method]}: every device within its budget in every "
                                f"round: {_verdict(ok)}.", ok))
    if "dense" in runs and "dense_mf" in central and dataset == "lastfm":
        ratio = runs["dense"]["recall@20"] / central["dense_mf"]
        checks.append(Check("dense FedAvg x central dense MF", f"{ratio:.2f} x",
                            f"- dense FedAvg Recall@20 {runs['dense']['recall@20']:.4f} = "
                            f"{ratio:.2f} x centralized dense MF ({central['dense_mf']:.4f}), "
                            f"against {DENSE_RATIO:.2f} x: {_verdict(ratio >= DENSE_RATIO)}.",
                            ratio >= DENSE_RATIO))
    if dataset in POPULARITY_RATIO:
        wanted, base = POPULARITY_RATIO[dataset], popularity(first_config(runs))["recall@20"]
        for method, metrics in runs.items():
            ratio = metrics["recall@20"] / base
            checks.append(Check("x popularity", f"{METHODS[method]} {ratio:.2f} x",
                                f"- {METHODS[method]} Recall@20 {metrics['recall@20']:.4f} = "
                                f"{ratio:.2f} x the popularity ranking ({base:.4f}), against "
                                f"{wanted:.1f} x: {_verdict(ratio >= wanted)}.", ratio >= wanted))
    if "sparserec" in runs:
        for tier, values in runs["sparserec"]["tiers"].items():
            reference = central.get(f"sparserec_{tier}")
            if reference is not None:
                checks.append(tier_ratio_check(dataset, tier, values["recall@20"], reference))
            if "nested_dims" in runs:
                nested = runs["nested_dims"]["tiers"][tier]
                other, met = nested["recall@20"], values["recall@20"] >= nested["recall@20"]
                bytes_note = unequal_bytes_note(nested, values)
                checks.append(Check(f"{tier}: vs nested dimensions",
                                    f"{values['recall@20']:.4f} vs {other:.4f}{bytes_note}",
                                    f"- tier {tier}: federated SparseRec {values['recall@20']:.4f} "
                                    f"vs nested dimensions {other:.4f}{bytes_note}: "
                                    f"{_verdict(met)}.", met))
    return checks


def unequal_bytes_note(other: dict, tier: dict) -> str:
    """`` (not equal bytes: ...)`` when another method's tier (``other``, a ``tiers`` entry of
    its metrics) had another budget than federated SparseRec's (``tier``); empty otherwise."""
    if other["budget_bytes"] == tier["budget_bytes"]:
        return ""
    return (f" (not equal bytes: {other['budget_bytes'] / 1000:.0f} KB against "
            f"{tier['budget_bytes'] / 1000:.0f} KB)")


def convergence_targets(dataset: str, runs: dict[str, dict], checks: list[Check]) -> str:
    """``runs``' :func:`convergence_checks` as README list lines (and
    :func:`plain_reply_targets` for the datasets whose runs have plain replies)."""
    lines = [check.line for check in checks]
    if dataset in PLAIN_REPLIES:
        lines += plain_reply_targets(runs)
    return "\n".join(lines) if lines else "(no runs yet)"


def target_overview(run_sets: list[tuple[str, dict[str, dict], list[Check]]]) -> str:
    """One row per set of test runs (its README section, ``runs``, their
    :func:`convergence_checks`): federated SparseRec's length, item step and fleet Recall@20,
    then each of issue 15's targets (several checks under one column are one cell, met only if
    all are: the missed ones are named)."""
    rows = []
    for section, runs, run_checks in run_sets:
        if "sparserec" not in runs:
            continue
        fl = load_config(runs["sparserec"]["dirs"][0] / "config.toml").fl
        step = "Adam" if fl.item_optimizer == "adam" else f"SGD at {fl.item_lr:g}"
        row = {"section": section, "seeds": len(runs["sparserec"]["dirs"]),
               "SparseRec rounds": f"{runs['sparserec']['rounds']:.0f}", "item step": step,
               "SparseRec fleet": f"{runs['sparserec']['recall@20']:.4f}"}
        columns: dict[str, list[Check]] = {}
        for check in run_checks:
            columns.setdefault(check.column, []).append(check)
        for column, checks in columns.items():
            missed = [check.cell for check in checks if not check.met]
            if column in ("within budget", "x popularity"):
                cell = "MISSED: " + ", ".join(missed) if missed else "met"
            else:
                cell = checks[0].cell + ("" if checks[0].met else " MISSED")
            row[column] = cell
        rows.append(row)
    # the cells are text: "1.02 x", "0.1713 vs 0.1211", never parsed as numbers
    return pd.DataFrame(rows).fillna("").to_markdown(index=False, disable_numparse=True)


def section_of(readme: Path, block: str) -> str:
    """The title of the README section that holds ``<!-- BEGIN block -->``."""
    text = readme.read_text()
    headings = re.findall(r"^## (.+)$", text[:text.index(f"<!-- BEGIN {block} -->")], re.M)
    return headings[-1]


def cross_tier_table(dataset: str) -> str | None:
    """Each tier's devices ranked with every tier's slice (``cross_tier.json`` of the
    150-round tuning runs and of the first seed's final, previous-recipe and Gowalla Adam-step
    900-round runs); None before any."""
    rows = []
    found = [(path, f"tuning (val): {path.parent.name.replace('+', ', ')}",
              path.parent.parent.name) for path in
             sorted((HERE / "results" / "tuning").glob(f"{dataset}_*/rounds=150*/cross_tier.json"))]
    for label, root in (("previous recipe (test)", HERE / "results" / "previous"),
                        ("Adam item step, 900 rounds (test)", _ADAM_900),
                        ("final (test)", HERE / "results")):
        found += [(path, label, path.parent.name.rsplit("_seed", 1)[0])
                  for path in sorted(root.glob(f"{dataset}_*_seed0/cross_tier.json"))]
    for path, run, name in found:
        method = name.split("_", 1)[1]
        table = json.loads(path.read_text())
        for device_tier, slices in table.items():
            rows.append({"method": METHODS.get(method, method), "run": run,
                         "devices of tier": device_tier,
                         **{f"{tier} slice": value["recall@20"] for tier, value in slices.items()}})
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f") if rows else None


def reference_tag(dataset: str, out: Path) -> str:
    """The tag of the centralized references at the tiers of the test run ``out``: its run
    set's (:data:`EXTRA_RUNS`; none for the main runs)."""
    return next((tags.get(dataset, "") for root, tags, _ in EXTRA_RUNS.values()
                 if out.parent == root), "")


def _refit_runs(dataset: str) -> list[tuple[str, Path, list[dict]]]:
    """Every ``refit.json`` of ``dataset`` (``refit.py``): a label (the split, the rounds and
    the devices' item step), the run and its settings, validation runs first, each split by
    rounds."""
    found = []
    for path in (HERE / "results").rglob("refit.json"):
        cfg = load_config(path.parent / "config.toml", fleet=True)
        if cfg.data.name != dataset:
            continue
        label = (f"{'validation' if cfg.data.split == 'val' else 'test'}, {cfg.fl.rounds} "
                 f"rounds, {'SGD' if cfg.fl.item_optimizer == 'sgd' else 'Adam'} item step")
        found.append(((cfg.data.split != "val", cfg.fl.rounds),
                      label, path.parent, json.loads(path.read_text())))
    return [run[1:] for run in sorted(found, key=lambda run: run[0])]


def refit_table(dataset: str) -> str | None:
    """Per refit run and (steps, lr): the fleet and per-tier Recall@20 when each device refits
    its user row before it ranks (steps 0: the run's own evaluation); None before any."""
    rows = []
    for label, _, settings in _refit_runs(dataset):
        for setting in settings:
            rows.append({"run": label, "refit steps": setting["steps"],
                         "refit lr": setting["lr"] or np.nan, "fleet": setting["recall@20"],
                         **{tier: values["recall@20"]
                            for tier, values in setting["tiers"].items()},
                         "seconds": setting["seconds"]})
    if not rows:
        return None
    table = _blank_missing(pd.DataFrame(rows))
    return table.to_markdown(index=False, floatfmt=["", ".0f", ".3f", *[".4f"] * 4, ".0f"])


def refit_targets(dataset: str) -> str | None:
    """Issue 15's per-tier target for each test run's refit settings: federated SparseRec per
    tier against centralized SparseRec at the tier's density (the references of its run set's
    tiers); None before any test refit."""
    lines = []
    for label, out, settings in _refit_runs(dataset):
        if label.startswith("validation"):
            continue
        central = references(dataset, tag=reference_tag(dataset, out))
        for setting in settings[1:]:
            for tier, values in setting["tiers"].items():
                lines.append(tier_ratio_check(
                    dataset, tier, values["recall@20"], central[f"sparserec_{tier}"],
                    f"{label}, refit {setting['steps']} steps at {setting['lr']:g}, "
                    f"tier {tier}").line)
    return "\n".join(lines) or None


#: The LastFM tuning run of the previous recipe (before tune.sh steps 9 and 10): the base of
#: the runs of step 9 (:func:`knob_table`) and the three-tier side of :func:`one_tier_table`.
PREVIOUS_SETTING = "rounds=100+l2=0.01+server_lr=3+lr_schedule=cosine"
#: LastFM's tiers, smallest budget first.
TIERS = ("wot", "phone", "flagship")


def one_tier_table() -> str | None:
    """LastFM on validation, the previous recipe: Recall@20 of the devices of each tier of the
    three-tier fleet (its tuning run), in that fleet and in the same fleet with one tier,
    every device given the flagship budget (``results/diagnostics/lastfm_<method>_all_flagship
    _val/``; its tier names do not follow the users, so devices are matched by id); beside
    them the centralized models at the flagship tier's memory. None before any one-tier run."""
    central, rows = references("lastfm", "val", DIAGNOSTIC_TAGS["lastfm"]), []
    for path in sorted((HERE / "results" / "diagnostics").glob("lastfm_*_all_flagship_val")):
        method = path.name.removeprefix("lastfm_").removesuffix("_all_flagship_val")
        three = pd.read_csv(HERE / "results" / "tuning" / f"lastfm_{method}" / PREVIOUS_SETTING /
                            "clients.csv")
        one = pd.read_csv(path / "clients.csv")[["device_id", "recall@20"]]
        devices = three[three["n_test"] > 0].merge(one, on="device_id", suffixes=("", "_one"))
        for fleet, column in (("three tiers", "recall@20"),
                              ("one tier, all flagship budget", "recall@20_one")):
            by_tier = devices.groupby("tier")[column].mean()
            rows.append({"method": METHODS[method], "fleet": fleet,
                         **{f"{tier} devices": by_tier[tier] for tier in TIERS},
                         "all": devices[column].mean()})
    if not rows:
        return None
    return (pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f") +
            f"\n\nCentralized on the same validation split (every user), at the flagship tier's "
            f"memory: SparseRec MF at its density {central.get('sparserec_flagship', np.nan):.4f}, "
            f"dense MF at its d_t {central.get('dense_mf_flagship', np.nan):.4f}.")


def knob_table() -> str | None:
    """LastFM on validation: each method on the previous recipe and with settings changed
    (local batch size, negatives, moved fraction, mask interval, NMF rounds; tune.sh step 9),
    Recall@20 per tier and over the fleet, the flagship tier's item density and the gain over
    the last fifth of the rounds; None before any such run."""
    rows = []
    for method in METHODS:
        runs = HERE / "results" / "tuning" / f"lastfm_{method}"
        recipe = runs / PREVIOUS_SETTING / "metrics.json"
        changed_runs = sorted(runs.glob(f"{PREVIOUS_SETTING}+*/metrics.json"))
        for path in [recipe, *changed_runs] if recipe.exists() else []:
            metrics = json.loads(path.read_text())
            changed = path.parent.name.removeprefix(PREVIOUS_SETTING).removeprefix("+")
            rows.append({"method": METHODS[method], "changed": changed or "(the previous recipe)",
                         **{tier: metrics["tiers"][tier]["recall@20"] for tier in TIERS},
                         "all": metrics["recall@20"],
                         "flagship density": metrics["tiers"]["flagship"]["density"],
                         "gain, last fifth": last_fifth_gain(_curve(path.parent))[0]})
    if len(rows) <= len(METHODS):
        return None
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f")


def tier_mix_table(dataset: str, tag: str = "") -> str | None:
    """Centralized MF under the fleet's tiers (``tier_mix.py``, ``--tag tag`` if given), one
    table per split run: Recall@20 of each tier's users, mean over the seeds, and the densest
    tier's against the one-tier model's. None before any run."""
    parts = []
    for split, title in (("val", "Validation split"), ("test", "Test split")):
        found = sorted(results_dir(dataset, split, tag, kind="tier_mix").glob("*.json"))
        if not found:
            continue
        runs = pd.DataFrame([{"variant": result["variant"], "seed": result["seed"],
                              "tier": tier, "recall": scores["recall@20"],
                              "density": scores["density"]}
                             for result in (json.loads(path.read_text()) for path in found)
                             for tier, scores in result["tiers"].items()])
        means = runs.pivot_table(index="variant", columns="tier", values="recall", sort=False)
        densest = runs.loc[runs["density"].idxmax(), "tier"]
        rows = []
        for variant in (name for name in VARIANTS if name in means.index):
            row = {"variant": variant_label(variant),
                   "seeds": runs.loc[runs["variant"] == variant, "seed"].nunique(),
                   **{f"{tier} users": means.loc[variant, tier] for tier in TIERS}}
            if "one_tier" in means.index:
                row[f"{densest} vs one tier"] = (means.loc[variant, densest]
                                                 / means.loc["one_tier", densest])
            rows.append(row)
        densities = runs.groupby("tier")["density"].first()
        parts.append(f"{title} (item densities "
                     + ", ".join(f"{tier} {densities[tier]:.3f}" for tier in TIERS) + "):\n\n"
                     + pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f"))
    return "\n\n".join(parts) or None


def plain_reply_targets(runs: dict[str, dict]) -> list[str]:
    """The first fleet issue's targets, for runs with plain training replies (whose upload
    depends on the tier): SparseRec's upload against dense FedAvg's, and SparseRec against
    random-init DST."""
    lines = []
    if {"sparserec", "dense"} <= set(runs):
        for tier, values in runs["sparserec"]["tiers"].items():
            dense = runs["dense"]["tiers"][tier]
            allowed = 1.2 * values["density"] * dense["up_payload_bytes_per_device_round"]
            payload = values["up_payload_bytes_per_device_round"]
            index = values["up_bytes_per_device_round"] - payload
            verdict = "met" if payload <= allowed else "MISSED"
            ratio = payload / (values["density"] * dense["up_payload_bytes_per_device_round"])
            lines.append(f"- upload, tier {tier}: {payload / 1000:.2f} KB of values and growth "
                         f"scores per device-round, {ratio:.2f} x (density x dense FedAvg's), "
                         f"against 1.2 x: {allowed / 1000:.2f} KB; plus {index / 1000:.2f} KB "
                         f"of index and headers: **{verdict}**.")
    if {"sparserec", "sparserec_no_nmf"} <= set(runs):
        for tier, values in runs["sparserec"]["tiers"].items():
            random_init = runs["sparserec_no_nmf"]["tiers"][tier]
            other = random_init["recall@20"]
            verdict = "met" if values["recall@20"] > other else "MISSED"
            if max(values["recall@20"], other) < NOISE_RECALL:
                verdict = f"no verdict, both below {NOISE_RECALL} (the models did not learn)"
            lines.append(f"- tier {tier}: federated SparseRec Recall@20 {values['recall@20']:.4f} "
                         f"vs random-init federated DST {other:.4f}"
                         f"{unequal_bytes_note(random_init, values)}: **{verdict}**.")
    return lines


@functools.cache
def popularity(config: Path) -> dict[str, float]:
    """Recall@20 and NDCG@20 of a model-free ranking on the fleet, data and split of the run
    ``config``: every device's unseen items by how many of the fleet's devices train on them
    (with ``"devices"``, the fleet's size)."""
    cfg = load_config(config, fleet=True)
    data = load_dataset(cfg.data.name, cfg.data.split, cfg.data.max_items)
    users = fleet_users(data, cfg.fl.max_devices, cfg.seed)
    train, test = data.train[users], data.test[users]
    counts = np.asarray(train.sum(axis=0), dtype=np.float32).T              # (n_items, 1)
    metrics = evaluate_embeddings(np.ones((len(users), 1), np.float32), counts, train, test)
    return {**{key: float(value) for key, value in metrics.items()}, "devices": len(users)}


def popularity_line(config: Path) -> str:
    """:func:`popularity` as a sentence."""
    metrics = popularity(config)
    return (f"Reference without a model: ranking every device's unseen items by how many of "
            f"the fleet's {metrics['devices']} devices train on them gives Recall@20 "
            f"{metrics['recall@20']:.4f}, NDCG@20 {metrics['ndcg@20']:.4f}.")


def first_config(runs: dict[str, dict]) -> Path:
    """``config.toml`` of the first method's first seed (all runs share fleet and split)."""
    return next(iter(runs.values()))["dirs"][0] / "config.toml"


def plot(dataset: str, runs: dict[str, dict]) -> None:
    """Recall@20 per tier against the tier's budget: each fleet method's tiers (mean over
    seeds), the centralized references at the same memory as lines, full dense MF and the
    popularity ranking as horizontal lines."""
    central = references(dataset)
    tiers = next(iter(runs.values()))["tiers"]
    budgets = np.array([values["budget_bytes"] / 1000 for values in tiers.values()])
    figure = Figure(figsize=(6.5, 4.5))
    ax = figure.subplots()
    for method, metrics in runs.items():
        if method == "dense":
            continue
        ax.plot(budgets, [metrics["tiers"][tier]["recall@20"] for tier in tiers], "o-",
                label=f"fleet: {METHODS[method]}")
    if "dense" in runs:
        ax.axhline(runs["dense"]["recall@20"], color="C3", ls=":",
                   label="fleet: dense FedAvg (full table, over budget)")
    for name, label, style in (("sparserec", "centralized SparseRec at the tier's density", "s--"),
                               ("dense_mf", "centralized dense MF at d_t", "^--")):
        values = [central.get(f"{name}_{tier}", np.nan) for tier in tiers]
        if not np.all(np.isnan(values)):
            ax.plot(budgets, values, style, color="gray" if name == "sparserec" else "silver",
                    label=label)
    if "dense_mf" in central:
        ax.axhline(central["dense_mf"], color="black", ls="--", lw=0.8,
                   label="centralized dense MF, d = 64")
    ax.axhline(popularity(first_config(runs))["recall@20"], color="brown", ls="-.", lw=0.8,
               label="popularity ranking (no model)")
    ax.set_xscale("log")
    ax.set_xticks(budgets, [f"{tier}\n{budget:.0f} KB" for tier, budget in zip(tiers, budgets)])
    ax.minorticks_off()
    ax.set_xlabel("device tier and budget")
    ax.set_ylabel("Recall@20 (test)")
    ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(HERE / f"memory_vs_accuracy_{dataset}.png", dpi=110)


def convergence_plot(dataset: str) -> None:
    """Validation Recall@20 of the convergence runs (:func:`convergence_runs`), one line per
    run, against the passes the devices have made over their data (runs with different
    devices per round compare at equal device work)."""
    figure = Figure(figsize=(8, 4.5))
    ax = figure.subplots()
    runs = convergence_runs(dataset)
    palette = colormaps["tab20"].colors                          # 20 colours: one a run
    ax.set_prop_cycle(color=[palette[i % len(palette)] for i in range(len(runs))])
    for method, out in runs:
        history = _history(out)
        cfg = load_config(out / "config.toml", fleet=True)
        devices = json.loads((out / "metrics.json").read_text())["devices"]
        passes = history["sampled"].cumsum() * cfg.fl.local_epochs / devices
        evaluated = history["recall@20"].notna()
        schedule = ", cosine lr" if cfg.fl.lr_schedule == "cosine" else ""
        item_step = (f", SGD item step {cfg.fl.item_lr:g}" if cfg.fl.item_optimizer == "sgd"
                     else "")
        server = "server Adam" if cfg.fl.server_optimizer == "adam" else "server step"
        masks = (f", masks every {cfg.fl.mask_interval} (first moving "
                 f"{cfg.sparse.initial_fraction:g})" if method.startswith("sparserec") else "")
        ax.plot(passes[evaluated], history["recall@20"][evaluated],
                "o-" if schedule else "o--", ms=3,
                label=f"{METHODS[method]}, {cfg.fl.rounds} rounds of "
                      f"{int(history['sampled'].max())}, {cfg.fl.local_epochs} epoch(s) of "
                      f"batches of {cfg.fl.batch_size}, {cfg.fl.negatives} negatives, device lr "
                      f"{cfg.fl.lr:g}{schedule}{item_step}, {server} {cfg.fl.server_lr:g}"
                      f"{masks}")
    ax.set_xlabel("passes over the devices' data (device-rounds x local epochs / devices)")
    ax.set_ylabel("Recall@20 (validation)")
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.13))  # below the axes
    figure.savefig(HERE / f"convergence_{dataset}.png", dpi=110, bbox_inches="tight")


def convergence_runs(dataset: str) -> list[tuple[str, Path]]:
    """(method, run) of the tuning runs of at least the device-rounds of the shortest main test
    run (stand-ins included; the final config's before any): each method's convergence runs,
    the final schedule's among them, and runs of the same device work in rounds of another
    size; not the previous recipe with settings changed, which :func:`knob_table` tables. In
    the order of :data:`METHODS`, then by setting."""
    final = load_config(HERE.parents[1] / "configs" / "fleets" / FLEETS[dataset],
                        fleet=True).fl
    main_runs = run_set(dataset, HERE / "results", MAIN_STAND_INS)
    least_work = min((_history(run["dirs"][0])["sampled"].sum() for run in main_runs.values()),
                     default=None)
    found = []
    for path in (HERE / "results" / "tuning").glob(f"{dataset}_*/*/metrics.json"):
        devices = json.loads(path.read_text())["devices"]
        is_knob = path.parent.name.startswith(f"{PREVIOUS_SETTING}+")
        needed = least_work or final.rounds * (final.clients_per_round or devices)
        if not is_knob and _history(path.parent)["sampled"].sum() >= needed:
            found.append((path.parent.parent.name.split("_", 1)[1], path.parent))
    return sorted(found, key=lambda run: (list(METHODS).index(run[0]), run[1].name))


def round_cost_table() -> str | None:
    """LastFM's round cost per method, devices' item step and reply protocol, from the runs of
    ``round_cost.sh`` (``results/round_cost/``, one machine, one run after the other): init
    and median seconds per round (``runtime.json``), bytes per round; the secure runs' cost
    over the plain run's of the same method and step. None before any such run."""
    rows = []
    for run in sorted((HERE / "results" / "round_cost").glob("lastfm_*/metrics.json")):
        cfg = load_config(run.parent / "config.toml")
        metrics, runtime = (json.loads(path.read_text())
                            for path in (run, run.parent / "runtime.json"))
        rows.append({"method": METHODS[cfg.sparse.method], "item step": cfg.fl.item_optimizer,
                     "replies": cfg.fl.privacy.training, "rounds": cfg.fl.rounds,
                     "init (s)": runtime["init_seconds"],
                     "s / round": runtime["seconds_per_round"],
                     "up / round (MB)": metrics["up_bytes_per_round"] / 1e6,
                     "down / round (MB)": metrics["down_bytes_per_round"] / 1e6})
    if not rows:
        return None
    table = pd.DataFrame(rows)
    plain = table[table["replies"] == "plain"].set_index(["method", "item step"])["s / round"]
    table["x plain"] = [row["s / round"] / plain.get((row["method"], row["item step"]), np.nan)
                        for _, row in table.iterrows()]
    return table.to_markdown(index=False, floatfmt=("", "", "", ".0f", ".1f", ".2f", ".1f",
                                                    ".1f", ".2f"))


def main() -> None:
    readme = HERE / "README.md"
    run_sets: dict[str, list[tuple[str, dict[str, dict], list[Check]]]] = {"lastfm": [],
                                                                           "gowalla": []}
    for dataset in run_sets:
        tuning = tuning_table(dataset)
        if tuning is not None:
            replace_block(readme, f"{dataset}-tuning", tuning)
            replace_block(readme, f"{dataset}-convergence", convergence_table(dataset))
            convergence_plot(dataset)
            if dataset == "gowalla":          # no test runs yet: the validation split's
                first = sorted((HERE / "results" / "tuning").glob("gowalla_*/*/config.toml"))[0]
                replace_block(readme, "gowalla-val-popularity", popularity_line(first))
        if dataset == "lastfm" and (one_tier := one_tier_table()) is not None:
            replace_block(readme, "lastfm-one-tier", one_tier)
        if dataset == "lastfm" and (knobs := knob_table()) is not None:
            replace_block(readme, "lastfm-knobs", knobs)
        if dataset == "lastfm" and (cost := round_cost_table()) is not None:
            replace_block(readme, "lastfm-round-cost", cost)
        if (tier_mix := tier_mix_table(dataset, DIAGNOSTIC_TAGS.get(dataset, ""))) is not None:
            replace_block(readme, f"{dataset}-tier-mix", tier_mix)
        for block, table in ((f"{dataset}-refit", refit_table(dataset)),
                             (f"{dataset}-refit-targets", refit_targets(dataset))):
            if table is not None:
                replace_block(readme, block, table)
        runs = run_set(dataset, HERE / "results", MAIN_STAND_INS)
        if not runs:
            continue
        replace_block(readme, f"{dataset}-tiers", tier_table(runs))
        replace_block(readme, f"{dataset}-fleet", fleet_table(runs))
        replace_block(readme, f"{dataset}-curve", curve_table(runs))
        checks = convergence_checks(dataset, runs)
        replace_block(readme, f"{dataset}-targets", convergence_targets(dataset, runs, checks))
        run_sets[dataset].append((section_of(readme, f"{dataset}-fleet"), runs, checks))
        replace_block(readme, f"{dataset}-popularity", popularity_line(first_config(runs)))
        for block, table in ((f"{dataset}-references", reference_table(dataset, runs)),
                             (f"{dataset}-cross-tier", cross_tier_table(dataset))):
            if table is not None:
                replace_block(readme, block, table)
        plot(dataset, runs)
    for label, (root, tags, stand_in_roots) in EXTRA_RUNS.items():
        for dataset in run_sets:
            if extra := run_set(dataset, root, stand_in_roots):
                block, tag = f"{dataset}-{label}", tags.get(dataset, "")
                checks = convergence_checks(dataset, extra, tag)
                replace_block(readme, f"{block}-fleet", fleet_table(extra))
                replace_block(readme, f"{block}-curve", curve_table(extra))
                replace_block(readme, f"{block}-targets",
                              convergence_targets(dataset, extra, checks))
                if (table := reference_table(dataset, extra, tag)) is not None:
                    replace_block(readme, f"{block}-references", table)
                run_sets[dataset].append((section_of(readme, f"{block}-fleet"), extra, checks))
    for dataset, sets in run_sets.items():
        if sets:
            replace_block(readme, f"{dataset}-overview", target_overview(sets))


if __name__ == "__main__":
    main()
