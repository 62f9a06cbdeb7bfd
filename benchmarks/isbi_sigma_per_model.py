#!/usr/bin/env python
"""Rule smoothing chosen per network on its validation slices, against one fixed sigma, from a sigma sweep's results.

    python benchmarks/isbi_sigma_per_model.py [benchmarks/results/isbi-rule-smoothing.json] [--fixed 3]
        [--candidates 2,3,4 1,2,3,4,5 3,4] [--by v_rand]

Reads what ``isbi_rule_smoothing.py`` wrote (per network and sigma: the rule tuned on 12-14, its scores on 12-14
and on the unseen 15-19). For each candidate set, every network gets the sigma whose validation score (``--by``)
is best (ties to the sigma nearest ``--fixed``), as training would pick it if the candidates carried sigmas; its
unseen scores are compared with the fixed sigma's, network by network. No network is run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from isbi_rule_smoothing import METRICS, better  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=ROOT / "benchmarks" / "results" / "isbi-rule-smoothing.json")
    parser.add_argument("--fixed", type=float, default=3.0)
    parser.add_argument("--candidates", nargs="+", default=["2,3,4", "1,2,3,4,5", "3,4"])
    parser.add_argument("--by", default="v_rand", choices=["v_rand", "v_info"])
    args = parser.parse_args(argv)

    per_model = json.loads(args.results.read_text())["per_model"]
    fixed = str(args.fixed)
    print(f"{len(per_model)} networks; sigma picked on 12-14 by {args.by}; unseen 15-19 (pixel V_rand V_info); better / worse than sigma {fixed}")
    for text in args.candidates:
        candidates = [str(float(s)) for s in text.split(",")]
        picked = {name: max(candidates, key=lambda s: (rows[s]["val"][args.by], -abs(float(s) - args.fixed)))
                  for name, rows in per_model.items()}
        chosen = [per_model[name][s]["judge"] for name, s in picked.items()]
        reference = [rows[fixed]["judge"] for rows in per_model.values()]
        means = " ".join(f"{np.mean([c[m] for c in chosen]):.4f}" for m in METRICS)
        reference_means = " ".join(f"{np.mean([r[m] for r in reference]):.4f}" for m in METRICS)
        wins = {m: sum(better(m, c[m], r[m]) for c, r in zip(chosen, reference)) for m in METRICS}
        losses = {m: sum(better(m, r[m], c[m]) for c, r in zip(chosen, reference)) for m in METRICS}
        print(f"from {text}: {means}  (sigma {fixed}: {reference_means})  better {wins}  worse {losses}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
