"""Render the bandit-check JSONs (``lpo-train check-objective --output``) as the tables of docs/objectives.md.

    python scripts/objectives_table.py docs/results/objectives_bandit*.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def table(path: str) -> str:
    data = json.loads(open(path).read())
    cells, cases, columns = defaultdict(dict), [], []
    for r in data["results"]:
        column = f"{r['objective']} / {r['exploration']}"
        if r["case"] not in cases:
            cases.append(r["case"])
        if column not in columns:
            columns.append(column)
        p = ", ".join(f"{probs[k]:.2f}" for probs, k in zip(r["probs"], r["optimum"]))
        cells[column][r["case"]] = f"{'pass' if r['passed'] else '**FAIL**'} {p}"
    settings = ", ".join(f"{k} {v}" for k, v in data.get("settings", {}).items())
    lines = [f"`{data['command']}`" + (f" ({settings})" if settings else ""), "",
             "| objective / exploration | " + " | ".join(cases) + " |", "|---|" + "---|" * len(cases)]
    lines += [f"| {c} | " + " | ".join(cells[c].get(case, "") for case in cases) + " |" for c in columns]
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(table(p) for p in sys.argv[1:]))
