"""Table 1's Pareto front: dominance, the hypervolume in any number of objectives, the printed
summary and the plot.

Every row of Table 1 (paper Sec. 4.2; docs/decisions.md, "Evaluation") is a point (Helpful,
Harmless), both maximised; a run trained on K objectives (--objective) is a point of its K
objective columns. A point is on the non-dominated front when no other is at least as good on
every axis and better on one. The hypervolume of a set of points is the volume they dominate
above a reference point, stated beside it: the per-axis minimum over all points minus 5% of the
axis range, so every point adds volume; it is given per method family and for all points together.
dominates, pareto_front, hypervolume and reference_point take N points of K objectives for any
K >= 1 (hypervolume: exact, by slicing along the last axis down to the 2-D sweep
hypervolume_2d); front_and_volumes and format_front read the objective columns of Table 1's rows
(helpful, harmless by default). plot_pareto draws pareto.png (and pareto.pdf) for two objectives:
a marker per row, lines over lam for P-GAPO, MORLHF and soups, the front, the reference point;
plot_pairs draws K > 2 as one such panel per pair of objectives, circling the K-dimensional front.

Run: nothing to run; evaluate.py calls it, tests/test_pareto.py and tests/test_evaluate_k.py
check it.
Left out on purpose: a fast hypervolume for many objectives or thousands of points (the slicing
costs O(N^(K-1) log N): fine for K <= 4 and a few hundred points), approximate (Monte Carlo)
hypervolumes, per-point hypervolume contributions, and 3-D or parallel-coordinate plots (pairs
of axes read more plainly).
"""
import os
import textwrap

import numpy as np

from evals.tables import WIDTH

HV_RULE = "per-axis minimum over all points minus 5% of the axis range"  # reference_point's


def dominates(a, b):
    """a dominates b when a is >= b on every objective and > on one (every objective maximised)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_front(points):
    """Indices of the non-dominated points (duplicates of a front point all stay)."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


def hypervolume_2d(points, ref):
    """Area dominated by the 2-D points and dominating ref (both axes maximised); points not
    strictly better than ref on both axes add nothing. Sweep from the largest x down, adding each
    new height."""
    pts = sorted(((float(x), float(y)) for x, y in points if x > ref[0] and y > ref[1]),
                 reverse=True)
    area, top = 0.0, float(ref[1])
    for x, y in pts:
        if y > top:
            area += (x - ref[0]) * (y - top)
            top = y
    return area


def _slice_volume(pts, ref):
    """Volume dominated by pts (N, K), every row > ref (K,) on every axis, for K >= 2. Slices
    along the last axis (the HSO recursion): going down the distinct last coordinates, each slab
    between one and the next (or ref) is its depth times the (K-1)-dimensional volume of the points
    at or above it. A point whose projection is weakly dominated by one already taken leaves the
    cross-section as it was, so it is skipped and the dominated ones are dropped as better ones
    arrive. K = 2 is the sweep of hypervolume_2d, vectorised: x descending, each point adds its
    width times the height it rises above the best before it."""
    if pts.shape[1] == 2:
        pts = pts[np.lexsort((-pts[:, 1], -pts[:, 0]))]
        top = np.maximum.accumulate(np.concatenate([[ref[1]], pts[:, 1]]))[:-1]
        return float(np.sum((pts[:, 0] - ref[0]) * np.maximum(pts[:, 1] - top, 0.0)))
    pts = pts[np.argsort(-pts[:, -1], kind="stable")]
    below = np.append(pts[1:, -1], ref[-1])  # where each point's slab ends
    taken = np.empty((0, pts.shape[1] - 1))  # the non-dominated projections so far
    volume, section, stale = 0.0, 0.0, False
    for p, low in zip(pts, below):
        q = p[:-1]
        if not (taken >= q).all(1).any():  # q adds to the cross-section
            taken = np.vstack([taken[~(q >= taken).all(1)], q])
            stale = True
        if p[-1] > low:
            if stale:
                section, stale = _slice_volume(taken, ref[:-1]), False
            volume += (p[-1] - low) * section
    return volume


def hypervolume(points, ref):
    """Volume dominated by points (N, K) and dominating ref (K,), every objective maximised, for
    any K >= 1; points not strictly better than ref on every axis add nothing. Exact: K = 1 is a
    length, K = 2 is hypervolume_2d (the same number), K >= 3 slices along the last axis, which
    costs O(N^(K-1) log N) time at worst (N slices per level), less when the slices' projections
    dominate one another."""
    r = np.asarray(ref, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"ref must be a vector of K >= 1 objectives, got shape {r.shape}")
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        return 0.0
    if pts.ndim != 2 or pts.shape[1] != r.size:
        raise ValueError(f"points must be (N, {r.size}) to match ref, got shape {pts.shape}")
    if r.size == 2:
        return float(hypervolume_2d(points, ref))
    pts = pts[(pts > r).all(1)]
    if len(pts) == 0:
        return 0.0
    if r.size == 1:
        return float(pts.max() - r[0])
    return _slice_volume(pts, r)


def reference_point(points, margin=0.05):
    """Per-axis minimum over the points (N, K) minus margin x the axis range (x 1 when the range
    is 0): a K-vector every point is strictly better than, so each adds volume."""
    pts = np.asarray(points, dtype=np.float64)
    pts = pts.reshape(1, -1) if pts.ndim == 1 else pts  # a single point
    if pts.ndim != 2 or pts.size == 0:
        raise ValueError(f"reference_point needs points of shape (N, K), got {pts.shape}")
    lo, hi = pts.min(0), pts.max(0)
    return (lo - margin * np.where(hi - lo > 0, hi - lo, 1.0)).tolist()


def front_and_volumes(agg, keys=("helpful", "harmless")):
    """Table 1's rows -> (reference point, groups on the front, {family: hypervolume} plus
    'all points'), over the objective columns keys (Helpful and Harmless by default; K of them
    for a run trained on K objectives)."""
    point = lambda r: tuple(r[k] for k in keys)
    pts = [point(r) for r in agg]
    ref, front = reference_point(pts), [agg[i]["group"] for i in pareto_front(pts)]
    volumes = ({fam: hypervolume([point(r) for r in agg if r["family"] == fam], ref)
                for fam in dict.fromkeys(r["family"] for r in agg)}
               | {"all points": hypervolume(pts, ref)})
    return ref, front, volumes


def _volume(v, k):
    """A hypervolume as printed: 3 decimals for two objectives; 4 significant digits for more,
    where the volume is a product of K small ranges and 3 decimals would often read 0.000."""
    return f"{v:.3f}" if k == 2 else f"{v:.4g}"


def format_front(ref, front, volumes, titles=("Helpful", "Harmless")):
    """The two printed paragraphs under Table 1: the front, then the hypervolumes and their
    reference point, each wrapped at WIDTH columns."""
    return "\n".join([
        textwrap.fill(f"non-dominated ({', '.join(titles)}): {', '.join(front)}", WIDTH),
        textwrap.fill(f"hypervolume w.r.t. the reference point "
                      f"({', '.join(f'{x:.3f}' for x in ref)}) = "
                      f"{HV_RULE}: " + ", ".join(f"{k} {_volume(v, len(ref))}"
                                                 for k, v in volumes.items()),
                      WIDTH)])


def _draw_rows(ax, agg, x, y, colors):
    """A marker per table row at (row[x], row[y]) with its std as error bars, named in the legend;
    lines over lam for P-GAPO, MORLHF and soups, with each point's lam_h as a small number."""
    entry = 0  # legend entries so far: each gets its own colour and marker
    for fam in dict.fromkeys(r["family"] for r in agg):
        rows = sorted([r for r in agg if r["family"] == fam], key=lambda r: r.get("lam") or 0.0)
        sft, swept = fam == "sft", rows[0].get("lam") is not None
        groups = [rows] if swept else [[r] for r in rows]  # a lam sweep is one legend entry
        for members in groups:
            k, entry = entry, entry + 1
            lams = ", ".join(f"{r['lam']:g}" for r in members) if swept else ""
            label = f"{fam} (λ_h = {lams})" if swept else members[0]["group"]
            line = ax.errorbar([r[x] for r in members], [r[y] for r in members],
                               label=label, capsize=2,
                               xerr=[r[x + "_std"] or 0 for r in members],
                               yerr=[r[y + "_std"] or 0 for r in members],
                               marker="X" if sft else "o*sDv^<>pPhH"[k % 12],
                               markersize=9 if sft else 7,
                               color="black" if sft else colors[k % 10],
                               linestyle="-" if swept else "none")
            for r in members if swept else []:  # lam_h beside each point of a sweep: short numbers
                ax.annotate(f"{r['lam']:g}", (r[x], r[y]), fontsize=6,
                            xytext=(3, -8), textcoords="offset points", color=line[0].get_color())


def _volumes_text(ref, volumes):
    return (f"hypervolume, ref = ({', '.join(f'{x:.2f}' for x in ref)})\n"
            + "\n".join(f"{k}: {_volume(v, len(ref))}" for k, v in volumes.items()))


def plot_pareto(agg, path, ref, volumes, keys=("helpful", "harmless"), titles=None):
    """Helpful vs Harmless (or the two objective columns keys, titled titles): a marker per table
    row, named in the legend (labels beside the points overprint once a cluster forms); lines over
    lam for P-GAPO, MORLHF and soups, with each point's lam_h as a small number; the front
    (visible even for a single point), the better direction. Saves path (PNG) and the same name
    as PDF. Returns the axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    colors = plt.get_cmap("tab10").colors  # with 12 markers: 60 distinct looks
    _draw_rows(ax, agg, *keys, colors)
    pts = [(r[keys[0]], r[keys[1]]) for r in agg]
    front = sorted(pts[i] for i in pareto_front(pts))
    # Markers too: a front of one point is a point, which a line alone would not draw.
    ax.step(*zip(*front), where="pre", color="grey", linestyle="--", linewidth=1, marker="o",
            markersize=14, markerfacecolor="none", label="non-dominated front", zorder=0)
    ax.plot(*ref, marker="+", color="grey", linestyle="none", label="hypervolume reference")
    ax.margins(0.15)  # room for the labels and the outermost markers
    ax.text(0.0, -0.14, _volumes_text(ref, volumes), transform=ax.transAxes, fontsize=7,
            va="top", family="monospace")
    x, y = (("Helpful (mean reward)", "Harmless (mean -cost)") if titles is None else titles)
    ax.set(xlabel=f"{x}  → better", ylabel=f"{y}  → better")
    ax.set_title("Pareto front: up and right is better (means over seeds, error bars: std)",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.savefig(path, dpi=130, bbox_inches="tight")
    fig.savefig(os.path.splitext(path)[0] + ".pdf", bbox_inches="tight")
    plt.close(fig)
    return ax


def plot_pairs(agg, path, ref, volumes, keys, titles):
    """K > 2 objectives: one 2-D panel per pair of objective columns (K(K-1)/2 panels, three to a
    row), each with a marker per table row as plot_pareto draws them. The front drawn is the
    K-dimensional one (its points circled in every panel): a pair's own 2-D front would hide
    rows that are non-dominated through a third objective. One legend and the K-dimensional
    hypervolumes for the figure. Saves path (PNG) and the same name as PDF. Returns the panels."""
    import itertools
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pairs = list(itertools.combinations(range(len(keys)), 2))
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    front = pareto_front([tuple(r[k] for k in keys) for r in agg])
    panels = list(grid.flat[:len(pairs)])
    for ax in grid.flat[len(pairs):]:
        ax.remove()  # the last row's empty cells
    for ax, (i, j) in zip(panels, pairs):
        _draw_rows(ax, agg, keys[i], keys[j], colors)
        ax.plot([agg[f][keys[i]] for f in front], [agg[f][keys[j]] for f in front],
                color="grey", linestyle="none", marker="o", markersize=14,
                markerfacecolor="none", label=f"non-dominated in all {len(keys)}", zorder=0)
        ax.plot(ref[i], ref[j], marker="+", color="grey", linestyle="none",
                label="hypervolume reference")
        ax.margins(0.15)
        ax.set(xlabel=f"{titles[i]}  → better", ylabel=f"{titles[j]}  → better")
    fig.suptitle(f"Pareto front of {len(keys)} objectives, pair by pair: up and right is better "
                 f"(means over seeds, error bars: std)", fontsize=10)
    fig.legend(*panels[0].get_legend_handles_labels(), fontsize=7, loc="upper left",
               bbox_to_anchor=(1.0, 0.95))
    fig.text(0.0, 0.0, _volumes_text(ref, volumes), fontsize=7, va="top", family="monospace")
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    fig.savefig(os.path.splitext(path)[0] + ".pdf", bbox_inches="tight")
    plt.close(fig)
    return panels


def save_plot(agg, path, ref, volumes, keys=("helpful", "harmless"), titles=None):
    """plot_pareto (two objective columns) or plot_pairs (more) to path, or one sentence when
    matplotlib is missing (the tables are written already; the plot is the only thing lost)."""
    try:
        if len(keys) == 2:
            plot_pareto(agg, path, ref, volumes, keys, titles)
        else:
            plot_pairs(agg, path, ref, volumes, keys, titles)
    except ImportError:
        print("matplotlib is not installed, so there is no pareto.png; pip install matplotlib.")
