"""Plots for search results (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from tanas_jax.io import save_figure


def _round_spans(history: list[dict]) -> list[tuple[int, int]]:
    """(first x, last x) of each round's stages on the shared x axis (one point per stage, plus the start)."""
    spans, x0 = [], 0
    for h in history:
        n = len(h["softmax_alpha_per_stage"])
        spans.append((x0, x0 + n - 1))
        x0 += n
    return spans


def _alpha_panel(ax, history, spans, colors) -> None:
    for r, (h, (a, b)) in enumerate(zip(history, spans)):
        probs = h["softmax_alpha_per_stage"]
        for c in range(len(probs[0])):
            ax.plot(range(a, b + 1), [p[c] for p in probs], color=colors[c % len(colors)], marker=".",
                    label=("seed" if c == 0 else f"sample {c}") if r == 0 else None)
        ax.axvline(b + 0.5, color="0.85", lw=0.8)
        margin = h.get("margin")
        note = f"w{h['winner']}" + (f" m={margin:.2f}" if margin is not None else "")
        ax.annotate(note, (b, probs[-1][h["winner"]]), fontsize=7, textcoords="offset points", xytext=(-18, 4))
    ax.set_ylabel("softmax(α)")
    ax.set_ylim(0, 1)


def _accuracy_panel(ax, history, spans, colors) -> None:
    for h, (_, b) in zip(history, spans):
        accs = h.get("val_accuracy") or []
        for c, acc in enumerate(accs):
            ax.scatter([b], [acc], color=colors[c % len(colors)], s=14, zorder=3,
                       edgecolors="k" if c == h["winner"] else "none")
        ax.axvline(b + 0.5, color="0.85", lw=0.8)
    ax.set_ylabel("own val acc")
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("stage (rounds separated by grey lines; m = softmax(α) margin, w = winner)")


def plot_alpha(history: list[dict], path: str, title: str = "") -> str:
    """softmax(α) per stage, rounds side by side (slot 0 is each round's seed), each round's winner and
    margin (leader minus runner-up); below, each candidate's own validation accuracy at the round's end
    (the winner ringed).  Written atomically (temp file + rename) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_acc) = plt.subplots(2, 1, figsize=(8, 5), dpi=100, sharex=True,
                                     gridspec_kw={"height_ratios": [2, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    spans = _round_spans(history)
    _alpha_panel(ax, history, spans, colors)
    _accuracy_panel(ax_acc, history, spans, colors)
    ax.set_title(title or "FUSE: α over rounds")
    if history:
        ax.legend(fontsize=7, loc="upper left")
    return save_figure(fig, path)
