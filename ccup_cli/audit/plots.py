"""The audit's and the unlearn summary's figures (PNG, small); matplotlib (the ``plot`` extra) imported inside."""

from __future__ import annotations


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _paired_bars(labels: list[str], before: list[float], after: list[float], path, ylabel: str, title: str,
                 width_per_bar: float) -> None:
    """Before (grey) and after (blue) bars per label, values in [0, 1], the legend above the bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, width_per_bar * len(labels) + 1.5), 3.0), dpi=100)
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], before, width=0.4, label="before", color="#999999")
    ax.bar([x + 0.2 for x in xs], after, width=0.4, label="after", color="#3b75af")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1.18)  # headroom for the legend above the bars
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_per_class(before: dict, after: dict, forget: list[str], path, title: str) -> None:
    """Per-class zero-shot top-1 before and after, as paired bars; forget classes marked."""
    names = list(before)
    _paired_bars([f"{n} *" if n in forget else n for n in names], [before[n] for n in names],
                 [after.get(n, 0.0) for n in names], path, "zero-shot top-1", title + "  (* forgotten)", 0.45)


def plot_confusion_shift(confusion: dict, path) -> None:
    """For each forgotten class, where its images went: shares per predicted class, before and after."""
    plt = _pyplot()
    classes = list(confusion)
    fig, axes = plt.subplots(1, len(classes), figsize=(3.2 * len(classes), 2.8), dpi=100, squeeze=False)
    for ax, name in zip(axes[0], classes):
        shares = confusion[name]
        targets = sorted(set(shares["before"]) | set(shares["after"]),
                         key=lambda t: -(shares["after"].get(t, 0) + shares["before"].get(t, 0)))[:6]
        ys = range(len(targets))
        ax.barh([y - 0.2 for y in ys], [shares["before"].get(t, 0) for t in targets], height=0.4, label="before",
                color="#999999")
        ax.barh([y + 0.2 for y in ys], [shares["after"].get(t, 0) for t in targets], height=0.4, label="after",
                color="#3b75af")
        ax.set_yticks(list(ys))
        ax.set_yticklabels(targets, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(f"{name} images predicted as", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_retrieval(rows: list[tuple[str, float | None, float | None]], path) -> None:
    """Text-search precision@100 before and after, one pair of bars per query (class name or alias)."""
    _paired_bars([q for q, _, _ in rows], [b or 0 for _, b, _ in rows], [a or 0 for _, _, a in rows], path,
                 "text search precision@100", "searching for the forgotten classes", 0.5)


def plot_probe_curve(probes: dict, path) -> None:
    """Probe top-1 on the forget classes against k (mean ± std over draws): patched, original, LEACE."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.0), dpi=100)
    curves = [("patched", probes["patched"], "#3b75af"), ("original", probes["original"], "#999999")]
    leace = probes.get("leace") or {}
    if leace.get("rows"):
        curves.append(("LEACE on patched (needs images)", leace["rows"], "#c44e52"))
    for label, rows, color in curves:
        ks = [r["k"] for r in rows]
        for split, style in (("forget", "-"), ("retain", ":")):
            means = [r[split]["mean"] or 0 for r in rows]
            stds = [r[split]["std"] or 0 for r in rows]
            ax.errorbar(ks, means, yerr=stds, fmt=style + "o", color=color, markersize=3, capsize=2,
                        label=f"{label}, {split}")
    ax.set_xscale("log", base=2)
    ax.set_xticks([r["k"] for r in probes["patched"]])
    ax.set_xticklabels([str(r["k"]) for r in probes["patched"]])
    ax.set_ylim(0, 1)
    ax.set_xlabel("labelled images per class (k)")
    ax.set_ylabel("linear probe top-1")
    ax.set_title("can a probe recover the forgotten classes?", fontsize=8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
