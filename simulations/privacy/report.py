"""Write the README's tables from results/*/ (never typed by hand): per setting and seed the
fleet's Recall@20, upload bytes and what each attack of the curious server achieved, then the
means over seeds against the targets."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from run import SETTINGS

from fedsparse.report.tables import replace_block

HERE = Path(__file__).resolve().parent
ATTACKS = ("touched", "direction", "direction_best", "masked")


def run_row(out: Path) -> dict:
    """One run's accuracy, bytes and attack results."""
    metrics = json.loads((out / "metrics.json").read_text())
    attacks = json.loads((out / "attack.json").read_text())["attacks"]
    nmf = pd.read_csv(out / "nmf_history.csv")
    setting, seed = out.name.rsplit("_seed", 1)
    row = {"setting": setting, "seed": int(seed),
           "recall@20": metrics["recall@20"], "ndcg@20": metrics["ndcg@20"],
           "up MB / round": metrics["up_bytes_per_round"] / 1e6,
           "NMF: fewest devices in a sum": int(nmf["summed"].min())}
    for attack in ATTACKS:
        found = attacks.get(attack)
        row[f"{attack} AUC"] = found["auc"] if found else float("nan")
        row[f"{attack} P@|P| / random"] = (found["precision_at_p"] / found["random_precision"]
                                           if found else float("nan"))
    return row


def main() -> None:
    rows = [run_row(out) for out in sorted((HERE / "results").iterdir())
            if (out / "attack.json").exists()]
    order = {setting: i for i, setting in enumerate(SETTINGS)}
    runs = pd.DataFrame(rows).sort_values(["setting", "seed"], key=lambda column: column.map(
        order) if column.name == "setting" else column)
    means = runs.drop(columns="seed").groupby("setting", sort=False).mean()
    lines = [runs.to_markdown(index=False, floatfmt=".4f"), "",
             "Means over seeds:", "", means.reset_index().to_markdown(index=False,
                                                                     floatfmt=".4f"), ""]
    if {"plain", "secure_sum"} <= set(means.index):
        plain, secure = means.loc["plain"], means.loc["secure_sum"]
        lines += [
            f"- Recall@20 with secure training replies / plain: "
            f"**{secure['recall@20'] / plain['recall@20']:.4f}** (target >= 0.95).",
            f"- Upload bytes per round, secure / plain: "
            f"**{secure['up MB / round'] / plain['up MB / round']:.1f}x**.",
            f"- Best attack on secure replies: AUC **{secure['masked AUC']:.3f}** (target <= "
            f"0.65), precision at |P| **{secure['masked P@|P| / random']:.2f}x** random "
            f"(target <= 2x); on plain replies the direction attack reaches AUC "
            f"**{plain['direction AUC']:.3f}** among the touched rows.",
            f"- Federated NMF: every opened sum covered at least "
            f"**{int(min(means['NMF: fewest devices in a sum']))}** devices "
            f"(fl.privacy.min_aggregate = 100)."]
        for setting in (name for name in means.index if name.startswith("pseudo")):
            row = means.loc[setting]
            lines.append(f"- {setting}: Recall@20 / plain "
                         f"**{row['recall@20'] / plain['recall@20']:.4f}**, direction AUC "
                         f"**{row['direction AUC']:.3f}** (best sign "
                         f"**{row['direction_best AUC']:.3f}**, precision at |P| "
                         f"**{row['direction_best P@|P| / random']:.2f}x** random), touched AUC "
                         f"**{row['touched AUC']:.3f}**, upload / plain "
                         f"**{row['up MB / round'] / plain['up MB / round']:.2f}x**.")
    replace_block(HERE / "README.md", "privacy", "\n".join(lines))


if __name__ == "__main__":
    main()
