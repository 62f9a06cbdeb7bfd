"""Plot ISBI time-to-quality (V_rand, V_info, pixel error against training minutes) from isbi_accuracy.py results.

    python benchmarks/plot_time_to_quality.py benchmarks/results/isbi-final-30min.json [more.json ...] \
        -o docs/time-to-quality.png

Each JSON is one ``benchmarks/isbi_accuracy.py`` run; its checkpoint rows become one curve per score.
Scores are on slices 15-19, which training never saw. The pixel-error panel shows ISBI's pixel error (1 - maximal
pixel F-score, the target's definition) where a run reports it (from session 14 on), and always the fraction of
mismatched pixels (dotted).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TARGETS = {"v_rand": [(10, 0.95), (30, 0.97)], "v_info": [(10, 0.975), (30, 0.98)], "pixel_error": [(10, 0.08)]}
TITLES = {"v_rand": "V_rand (higher is better)", "v_info": "V_info (higher is better)",
          "pixel_error": "pixel error, ISBI: 1 - pixel F (lower is better)"}


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/time-to-quality.png"))
    parser.add_argument("--labels", help="comma-separated legend names, one per result (default: each run's name)")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = args.labels.split(",") if args.labels else [None] * len(args.results)
    if len(names) != len(args.results):
        parser.error(f"--labels has {len(names)} names for {len(args.results)} results")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    for index, (path, name) in enumerate(zip(args.results, names)):
        color = f"C{index}"
        report = json.loads(path.read_text())
        report["name"] = name or report["name"]
        # Runs with --compare-batch-norm also scored late snapshots without the recomputed statistics:
        # the curve shows what training delivers (the recomputed ones).
        recomputed = report.get("train_config", {}).get("recompute_batch_norm", False)
        rows = [
            r for r in report["rows"]
            if isinstance(r["checkpoint_minutes"], (int, float)) and not (recomputed and r.get("batch_norm") == "training")
        ]
        minutes = [r["elapsed_s"] / 60 for r in rows]
        for ax, key in zip(axes, TITLES):
            if key == "pixel_error":
                if all("isbi_pixel_error" in r for r in rows):
                    ax.plot(minutes, [r["isbi_pixel_error"] for r in rows], "o-", color=color)
                    ax.plot(minutes, [r["isbi_pixel_error_prob_sweep"] for r in rows], "x--", color=color, alpha=0.5)
                ax.plot(minutes, [r["pixel_error"] for r in rows], "s:", color=color, alpha=0.6, markersize=4,
                        label=f"{report['name']}: mismatched pixels")
                continue
            ax.plot(minutes, [r[key] for r in rows], "o-", color=color, label=f"{report['name']} (labels)")
            ax.plot(minutes, [r[f"{key}_prob_sweep"] for r in rows], "x--", color=color, alpha=0.5, label=f"{report['name']} (best threshold)")
    for ax, key in zip(axes, TITLES):
        for minute, value in TARGETS[key]:
            ax.plot([minute], [value], "r*", markersize=12)
        ax.set_title(TITLES[key])
        ax.set_xlabel("training minutes (2 CPU cores)")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0.5, 1.0)
    axes[1].set_ylim(0.8, 1.0)
    axes[2].set_ylim(0.0, 0.25)
    axes[0].legend(fontsize=7, loc="lower right")
    axes[2].legend(fontsize=7, loc="upper right")
    fig.suptitle("ISBI 2012, held-out slices 15-19 (red stars: issue targets)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
