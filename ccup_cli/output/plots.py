"""Figures (PNG) for people: imported only where drawn, and matplotlib (the ``plot`` extra) only inside."""

from __future__ import annotations


def plot_tradeoff(rows: list[dict], path, title: str) -> None:
    """retain top-1 (x) against forget top-1 (y), one curve per method, α = 0 and 1 marked.

    Needs matplotlib (the ``plot`` extra); imported here so the core never needs it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["alpha"])
        xs = [r["metrics"]["retain"]["top1"] for r in pts]
        ys = [r["metrics"]["forget"]["top1"] for r in pts]
        (line,) = ax.plot(xs, ys, marker=".", label=method)
        for r, x, y in zip(pts, xs, ys):
            if r["alpha"] in (0.0, 1.0):
                ax.annotate(f"α={r['alpha']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8,
                            color=line.get_color())
    ax.set_xlabel("retain top-1 (all classes as candidates)")
    ax.set_ylabel("forget top-1")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
