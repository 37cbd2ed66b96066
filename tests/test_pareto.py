"""evals/pareto.py: dominance and the front by hand, the 2-D hypervolume against a known staircase
and an independent grid count, the K-objective hypervolume against exact unit-cell counts (K = 3,
4), a Monte Carlo estimate, lengths (K = 1), hypervolume_2d (K = 2) and moocore where installed,
its invariances, the reference point in K dimensions, the printed summary, and the Pareto plot (a
single-point front still drawn, the better direction said, a crowded cluster named in the legend,
every legend entry its own look)."""
import numpy as np
import pytest

from evals.pareto import (HV_RULE, dominates, format_front, front_and_volumes, hypervolume,
                          hypervolume_2d, pareto_front, plot_pareto, reference_point)


def test_dominance_and_front():
    assert dominates((2, 2), (1, 2)) and dominates((2, 3), (1, 1))
    assert not dominates((1, 1), (1, 1))  # equal: neither dominates
    assert not dominates((3, 0), (0, 3)) and not dominates((0, 3), (3, 0))
    points = [(1, 3), (2, 2), (3, 1), (1, 1), (2, 2), (0, 0)]
    assert pareto_front(points) == [0, 1, 2, 4]


def test_hypervolume_of_a_known_front_and_against_a_grid():
    front = [(1, 3), (2, 2), (3, 1)]
    # a staircase of three unit-high strips
    assert hypervolume_2d(front, (0, 0)) == pytest.approx(3 + 2 + 1)
    # dominated points add nothing
    assert hypervolume_2d(front + [(1, 1), (0.5, 2.5)], (0, 0)) == pytest.approx(6)
    assert hypervolume_2d([(2, 2)], (0, 0)) == pytest.approx(4)
    assert hypervolume_2d([(2, 2), (5, -1)], (0, 0)) == pytest.approx(4)  # below the ref: ignored
    assert hypervolume_2d([], (0, 0)) == 0.0
    # Independent check: count cells of a fine grid dominated by at least one of random points.
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 1, size=(7, 2))
    grid = (np.arange(400) + 0.5) / 400
    X, Y = np.meshgrid(grid, grid)
    covered = np.zeros_like(X, dtype=bool)
    for x, y in pts:
        covered |= (X <= x) & (Y <= y)
    assert hypervolume_2d(pts, (0, 0)) == pytest.approx(covered.mean(), abs=5e-3)
    assert reference_point([(1, 3), (2, 2), (3, 1)]) == pytest.approx([0.9, 0.9])


def cell_count(points, ref):
    """Exact volume of integer points (N, K) above an integer ref: the unit cells [c, c + 1]^K
    from ref up to the largest coordinate whose upper corner some point reaches on every axis."""
    points, ref = np.asarray(points), np.asarray(ref)
    axes = [np.arange(r, max(r, points[:, k].max())) for k, r in enumerate(ref)]
    corners = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(ref)) + 1
    return int(sum((corners <= p).all(1) for p in points).astype(bool).sum())


def test_hypervolume_by_hand_in_three_dimensions():
    assert hypervolume([(2, 3, 4)], (0, 0, 0)) == 24.0
    # two boxes, 4 and 3, overlapping in a unit cube
    assert hypervolume([(2, 2, 1), (1, 1, 3)], (0, 0, 0)) == 6.0
    assert hypervolume([(2, 2, 1), (1, 1, 3)], (1, 0, 0)) == 2.0  # the second is not above ref
    assert hypervolume([], (0, 0, 0)) == 0.0 and hypervolume(np.zeros((0, 3)), (0, 0, 0)) == 0.0
    assert hypervolume([(1, 1, 1)], (1, 0, 0)) == 0.0  # equal to ref on one axis: nothing
    with pytest.raises(ValueError):
        hypervolume([(1, 2)], (0, 0, 0))  # two objectives against a 3-D reference
    with pytest.raises(ValueError):
        hypervolume([(1, 2, 3)], [])


@pytest.mark.parametrize("k", [3, 4])
def test_hypervolume_equals_the_unit_cell_count_of_integer_points(k):
    rng = np.random.default_rng(k)
    for trial in range(40):
        points = rng.integers(-1, 6, size=(rng.integers(1, 12), k))
        ref = rng.integers(-2, 1, size=k)
        # integers: every slab and section is an exact float, so equality is exact
        assert hypervolume(points, ref) == cell_count(points, ref), (trial, points, ref)


def test_hypervolume_against_a_monte_carlo_estimate():
    rng = np.random.default_rng(3)
    points = rng.uniform(0, 1, size=(15, 3))
    samples = rng.uniform(0, 1, size=(200_000, 3))  # the unit cube above ref = 0
    hit = np.zeros(len(samples), dtype=bool)
    for p in points:
        hit |= (samples <= p).all(1)
    share = hit.mean()
    sigma = np.sqrt(share * (1 - share) / len(samples))
    assert abs(hypervolume(points, (0, 0, 0)) - share) < 5 * sigma


def test_hypervolume_of_one_objective_is_a_length():
    assert hypervolume([(3.0,), (1.5,), (-2.0,)], (1.0,)) == 2.0
    assert hypervolume([[0.5], [1.0]], [1.0]) == 0.0  # none strictly above ref
    assert hypervolume([[2.0]], [-1.0]) == 3.0


@pytest.mark.parametrize("k", [2, 3, 4])
def test_hypervolume_ignores_duplicates_dominated_points_order_and_axis_order(k):
    rng = np.random.default_rng(10 + k)
    for _ in range(10):
        points = rng.uniform(-0.2, 1, size=(20, k))
        ref = np.full(k, -0.1)
        hv = hypervolume(points, ref)
        worse = points[rng.integers(0, 20, size=10)] - rng.uniform(0, 0.3, size=(10, k))
        more = np.concatenate([points, points[:5], worse])
        assert hypervolume(more, ref) == pytest.approx(hv, rel=1e-12)
        assert hypervolume(more[rng.permutation(len(more))], ref) == pytest.approx(hv, rel=1e-12)
        axes = rng.permutation(k)
        assert hypervolume(points[:, axes], ref[axes]) == pytest.approx(hv, rel=1e-12)
        # only the non-dominated points matter
        front = points[pareto_front(points.tolist())]
        assert hypervolume(front, ref) == pytest.approx(hv, rel=1e-12)


def test_hypervolume_of_two_objectives_is_hypervolume_2d_exactly():
    rng = np.random.default_rng(5)
    for _ in range(50):
        n = rng.integers(0, 30)
        points = rng.uniform(-1, 1, size=(n, 2)).round(rng.integers(1, 4))  # ties on both axes
        ref = rng.uniform(-1, 0, size=2).round(1)
        as_lists = [tuple(p) for p in points.tolist()]
        assert hypervolume(points, ref) == hypervolume_2d(points, ref)
        assert hypervolume(as_lists, list(ref)) == hypervolume_2d(as_lists, list(ref))


def test_hypervolume_against_moocore_where_installed():
    moocore = pytest.importorskip("moocore")
    rng = np.random.default_rng(7)
    for k, n in [(3, 40), (4, 30), (5, 15)]:
        points = rng.uniform(-0.5, 1, size=(n, k))
        ref = np.full(k, -0.2)
        expected = moocore.hypervolume(points, ref=ref, maximise=True)
        assert hypervolume(points, ref) == pytest.approx(expected, rel=1e-12)


def test_reference_point_in_k_dimensions():
    points = [(1, 3, 0), (2, 2, 0), (3, 1, 0)]
    # ranges 2, 2, 0 (x 1 when the range is 0)
    assert reference_point(points) == pytest.approx([0.9, 0.9, -0.05])
    assert reference_point(points, margin=0.5) == pytest.approx([0.0, 0.0, -0.5])
    assert reference_point([(2.0, 5.0)]) == pytest.approx([1.95, 4.95])  # one point, range 0
    assert reference_point([2.0, 5.0]) == pytest.approx([1.95, 4.95])  # the same, flat
    assert reference_point([(4.0,), (2.0,)]) == pytest.approx([1.9])
    rng = np.random.default_rng(2)
    for k in (2, 3, 4):
        pts = rng.normal(size=(9, k))
        ref = np.asarray(reference_point(pts))
        assert ref.shape == (k,) and (pts > ref).all()
        lo, hi = pts.min(0), pts.max(0)
        assert ref.tolist() == (lo - 0.05 * (hi - lo)).tolist()  # the 2-D rule, per axis
    with pytest.raises(ValueError):
        reference_point([])


def test_pareto_plot_labels_points_shows_a_single_point_front_and_the_better_direction(tmp_path):
    agg = [{"group": "gapo p=2", "family": "gapo p=2", "lam": None, "helpful": 1.0, "harmless": 2.0,
            "helpful_std": 0.0, "harmless_std": 0.0}]
    ax = plot_pareto(agg, str(tmp_path / "p.png"), [0.9, 1.9], {"gapo p=2": 0.01})
    assert "gapo p=2" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert (tmp_path / "p.png").stat().st_size > 0 and (tmp_path / "p.pdf").stat().st_size > 0
    front = [line for line in ax.get_lines() if line.get_label() == "non-dominated front"][0]
    assert front.get_marker() not in (None, "None", "")  # one point is still drawn
    assert "better" in ax.get_xlabel() and "better" in ax.get_ylabel()
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 < 0.9 and x1 > 1.0 + 0.01 and y0 < 1.9 and y1 > 2.0 + 0.01  # nothing on the edge


def test_pareto_plot_names_a_crowded_cluster_in_the_legend_not_on_the_points(tmp_path):
    row = lambda group, family, lam, x: {"group": group, "family": family, "lam": lam,
                                         "helpful": x, "harmless": 3.8, "helpful_std": 0.01,
                                         "harmless_std": 0.01}
    agg = ([row(g, g, None, 0.30 + 0.001 * i) for i, g in enumerate(["mgda", "gapo p=1", "gapo p=2",
                                                                      "fast-rl"])]
           + [row(f"morlhf λ_h={lam:g}", "morlhf", lam, 0.31 + 0.01 * lam) for lam in (0.2, 0.4)])
    ax = plot_pareto(agg, str(tmp_path / "p.png"), [0.2, 3.7], {})
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"mgda", "gapo p=1", "gapo p=2", "fast-rl", "morlhf (λ_h = 0.2, 0.4)"} <= set(legend)
    # On the points only the sweep's short lam_h numbers, no names that could overprint.
    numbers = sorted(t.get_text() for t in ax.texts if t.get_text() in ("0.2", "0.4"))
    assert numbers == ["0.2", "0.4"]
    assert not any("mgda" in t.get_text() or "gapo" in t.get_text() for t in ax.texts)


def test_pareto_plot_gives_every_legend_entry_its_own_look(tmp_path):
    row = lambda group, family, x: {"group": group, "family": family, "lam": None, "helpful": x,
                                    "harmless": 1.0, "helpful_std": 0.0, "harmless_std": 0.0}
    # two rows of one family (an ablation) followed by another family: their looks must differ
    agg = [row("mgda (w=False)", "mgda", 0.1), row("mgda (w=True)", "mgda", 0.2),
           row("gapo p=1", "gapo p=1", 0.3), row("gapo p=2", "gapo p=2", 0.4)]
    ax = plot_pareto(agg, str(tmp_path / "p.png"), [0.0, 0.0], {})
    looks = [(c.lines[0].get_color(), c.lines[0].get_marker()) for c in ax.containers
             if c.get_label() in {r["group"] for r in agg}]
    assert len(looks) == 4 and len(set(looks)) == 4



def test_front_and_volumes_of_table_rows_and_their_summary():
    row = lambda group, family, x, y: {"group": group, "family": family, "helpful": x,
                                       "harmless": y}
    agg = [row("sft", "sft", 0.0, 0.0), row("ppo-h", "ppo-h", 2.0, 0.0),
           row("pgapo λ_h=0.2", "pgapo", 0.0, 2.0), row("pgapo λ_h=0.8", "pgapo", 1.0, 1.0)]
    ref, front, volumes = front_and_volumes(agg)
    # reference: minimum minus 5% of the range (2) on each axis
    assert ref == pytest.approx([-0.1, -0.1])
    assert front == ["ppo-h", "pgapo λ_h=0.2", "pgapo λ_h=0.8"]  # sft is dominated
    assert volumes["sft"] == pytest.approx(0.01)
    assert volumes["ppo-h"] == pytest.approx(2.1 * 0.1)
    # pgapo: (0, 2) and (1, 1) above (-0.1, -0.1): 1.1 x 1.1 + 0.1 x 1.0
    assert volumes["pgapo"] == pytest.approx(1.1 * 1.1 + 0.1 * 1.0)
    assert volumes["all points"] == pytest.approx(hypervolume_2d([(2, 0), (0, 2), (1, 1)], ref))
    assert list(volumes) == ["sft", "ppo-h", "pgapo", "all points"]
    text = format_front(ref, front, volumes)
    assert max(len(line) for line in text.splitlines()) <= 100
    flat = " ".join(text.split())
    assert flat.startswith("non-dominated (Helpful, Harmless): ppo-h, pgapo λ_h=0.2")
    assert f"(-0.100, -0.100) = {HV_RULE}: sft 0.010, ppo-h 0.210" in flat
