"""Plots for search results (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from tanas_jax.io import save_figure


def plot_alpha(history: list[dict], path: str, title: str = "") -> str:
    """softmax(α) per stage, rounds side by side; slot 0 is each round's seed.

    Written atomically (temp file + rename) as a PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=100)
    x0 = 0
    n_slots = max(len(h["softmax_alpha_per_stage"][0]) for h in history) if history else 0
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r, h in enumerate(history):
        probs = h["softmax_alpha_per_stage"]
        xs = list(range(x0, x0 + len(probs)))
        for c in range(len(probs[0])):
            ax.plot(xs, [p[c] for p in probs], color=colors[c % len(colors)], marker=".",
                    label=("seed" if c == 0 else f"sample {c}") if r == 0 else None)
        ax.axvline(x0 + len(probs) - 0.5, color="0.85", lw=0.8)
        ax.annotate(f"w{h['winner']}", (xs[-1], probs[-1][h["winner"]]), fontsize=7,
                    textcoords="offset points", xytext=(-6, 4))
        x0 += len(probs)
    ax.set_xlabel("stage (rounds separated by grey lines)")
    ax.set_ylabel("softmax(α)")
    ax.set_ylim(0, 1)
    ax.set_title(title or "FUSE: α over rounds")
    if n_slots:
        ax.legend(fontsize=7, loc="upper left")
    return save_figure(fig, path)
