"""Plot a ``search_speed.py`` result: steps/s per configuration and implementation (log scale), each
bar labelled with its ratio to the reference; the device and settings go in the title.

    python benchmarks/plot_speed.py result.json speed.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def plot(result: dict, out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(r["config"] for r in result["results"]))
    impls = list(dict.fromkeys(r["impl"] for r in result["results"]))
    by = {(r["config"], r["impl"]): r for r in result["results"]}
    width = 0.8 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(configs) + 2), 4.2))
    for j, impl in enumerate(impls):
        xs = [i + (j - (len(impls) - 1) / 2) * width for i, c in enumerate(configs) if (c, impl) in by]
        ys = [by[(c, impl)]["steps_per_s"] for c in configs if (c, impl) in by]
        bars = ax.bar(xs, ys, width, label=impl)
        for bar, c in zip(bars, [c for c in configs if (c, impl) in by]):
            ref = by.get((c, "reference"))
            if ref is not None and impl != "reference":
                ax.annotate(f"{by[(c, impl)]['steps_per_s'] / ref['steps_per_s']:.1f}x",
                            (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(configs)), configs)
    ax.set_yscale("log")
    ax.set_ylabel("search steps / s (log)")
    env, st = result.get("environment", {}), result.get("settings", {})
    dev = env.get("gpu") or env.get("cpu") or env.get("device", "?")
    ax.set_title(f"{dev}, torch {env.get('torch', '?')}, batch {st.get('batch', '?')}, "
                 f"{'bf16' if st.get('autocast') == 'bf16' else 'fp32'}"
                 f"{', channels_last' if st.get('channels_last') else ''}", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise SystemExit("usage: plot_speed.py RESULT.json OUT.png")
    print(plot(json.loads(Path(argv[0]).read_text()), argv[1]))


if __name__ == "__main__":
    main()
