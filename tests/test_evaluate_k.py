"""evaluate.py on runs trained with K = 3 objectives (--objective, a Python rule among them): the
named columns, Avg over K, the CSV/JSON keys, the K-dimensional front and hypervolume against a
brute-force count on the table's own numbers, the pairwise plot panels, and the one-sentence
refusal of runs whose objective lists differ. The K = 2 table is tests/test_evaluate.py's."""
import csv
import itertools
import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import train
from evaluate import main
from evals import pareto
from evals.objectives import row_metrics, table_columns
from worlds import toyworld

SMALL = ["--toy_size", "tiny", "--iterations", "2", "--batch_size", "4", "--minibatch_size", "4",
         "--micro_batch_size", "4", "--max_new_tokens", "8", "--ppo_epochs", "1"]
NAMES = ["helpful", "harmless", "brevity"]
RULE = "def brevity(prompts, responses):\n    return [-len(r.split()) / 10 for r in responses]\n"


@pytest.fixture(scope="module")
def k3_run(tiny_toyworld, tmp_path_factory):
    """A 2-iteration GAPO run on helpful = reward, harmless = -cost and brevity = a Python rule in
    the folder it was trained from (the tests evaluate from the same folder), and two copies with
    perturbed policies relabelled mgda and fast-rl: points apart from the others (two iterations
    barely move the policy from its SFT start)."""
    tmp = tmp_path_factory.mktemp("k3")
    (tmp / "rules_k3.py").write_text(RULE)
    paths = toyworld.toy_paths(tiny_toyworld)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        train.main(SMALL + ["--toy_dir", tiny_toyworld, "--method", "gapo", "--p", "2",
                            "--out_dir", str(tmp / "run"),
                            "--objective", f"helpful={paths['reward']}",
                            "--objective", f"harmless=-{paths['cost']}",
                            "--objective", "brevity=py:rules_k3.brevity"])
    for seed, method in ((2, "mgda"), (5, "fast-rl")):  # seeds that trade the objectives off
        ckpt = tmp / method / "checkpoint"
        shutil.copytree(tmp / "run", tmp / method)
        config = ckpt / "train_config.json"
        config.write_text(json.dumps(json.loads(config.read_text()) | {"method": method}))
        policy = AutoModelForCausalLM.from_pretrained(ckpt / "policy")
        with torch.no_grad():
            policy.lm_head.weight.add_(torch.randn(policy.lm_head.weight.shape,
                                                   generator=torch.Generator().manual_seed(seed)))
        policy.save_pretrained(ckpt / "policy")
    return tmp


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def brute_hypervolume(points, ref):
    """Inclusion-exclusion over every subset: the union of the boxes [ref, p] (small N only)."""
    total = 0.0
    for n in range(1, len(points) + 1):
        for subset in itertools.combinations(points, n):
            corner = np.min(subset, axis=0) - np.asarray(ref)
            total += (-1) ** (n + 1) * float(np.prod(np.clip(corner, 0, None)))
    return total


def test_a_three_objective_run_and_its_sft_get_named_columns_front_and_panels(
        k3_run, monkeypatch, capsys):
    monkeypatch.chdir(k3_run)
    panels = []
    plot_pairs = pareto.plot_pairs
    monkeypatch.setattr(pareto, "plot_pairs", lambda *a: panels.extend(plot_pairs(*a)) or panels)
    out = k3_run / "eval"
    args = [str(k3_run / n) for n in ("run", "mgda", "fast-rl")] + [
        "--limit", "4", "--samples_per_prompt", "1", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out

    table = read_csv(out / "table.csv")
    assert [r["method"] for r in table] == ["sft", "fast-rl", "mgda", "gapo p=2"]
    keys = NAMES + ["avg", "harmless_ratio"]
    assert list(table[0]) == (["method", "seeds", "n_prompts", "n_responses"]
                              + [c for k in keys for c in (k, k + "_std")]
                              + [c for k in ["harmful_compliance", "over_refusal",
                                             "benign_helpful", "gt_safe", "cost_sign_agrees"]
                                 for c in (k, k + "_std")])
    for r in table:
        assert float(r["avg"]) == pytest.approx(np.mean([float(r[n]) for n in NAMES]))
        assert 0 <= float(r["harmless_ratio"]) <= 1 and r["cost_sign_agrees"] != ""
    assert list(read_csv(out / "runs.csv")[0])[:5 + len(keys)] == (
        ["name", "method", "seed", "n_prompts", "n_responses"] + keys)

    results = json.loads((out / "results.json").read_text())
    assert results["objectives"] == NAMES
    for row in results["runs"]:
        cached = json.loads(open(row["cache"]).read())
        assert list(cached["objectives"]) == NAMES and len(cached["responses"]) == 4
        # the rule, imported from the current folder, scored the cached responses
        assert row["brevity"] == pytest.approx(
            np.mean([-len(r.split()) / 10 for r in cached["responses"]]))
        assert row["harmless_ratio"] == np.mean(np.asarray(cached["objectives"]["harmless"]) >= 0)
        assert row["avg"] == pytest.approx(np.mean([row[n] for n in NAMES]))

    # The K-dimensional front and hypervolume, recomputed from the table's own numbers.
    points = [tuple(r[n] for n in NAMES) for r in results["table"]]
    beaten = lambda p: any(q != p and all(a >= b for a, b in zip(q, p)) for q in points)
    assert len(set(points)) >= 3 and len({p for p in points if not beaten(p)}) >= 2  # not one box
    lo, hi = np.min(points, 0), np.max(points, 0)
    ref = lo - 0.05 * np.where(hi > lo, hi - lo, 1.0)
    assert results["hypervolume_reference"] == pytest.approx(ref.tolist())
    assert results["hypervolume"]["all points"] == pytest.approx(brute_hypervolume(points, ref),
                                                               rel=1e-9, abs=0)
    for r, p in zip(results["table"], points):
        assert results["hypervolume"][r["family"]] == pytest.approx(brute_hypervolume([p], ref))
    front = [r["group"] for r, p in zip(results["table"], points) if not beaten(p)]
    assert results["pareto_front"] == front
    flat = " ".join(printed.split())
    assert f"non-dominated (helpful, harmless, brevity): {', '.join(front)}" in flat
    assert f"all points {results['hypervolume']['all points']:.4g}" in flat
    assert "brevity = mean py:rules_k3.brevity" in flat and "Helpful" not in flat

    assert len(panels) == 3 and len(panels[0].figure.axes) == 3  # K(K-1)/2 pairs, nothing more
    assert {(p.get_xlabel().split()[0], p.get_ylabel().split()[0]) for p in panels} == {
        ("helpful", "harmless"), ("helpful", "brevity"), ("harmless", "brevity")}
    assert (out / "pareto.png").stat().st_size > 1000 and (out / "pareto.pdf").stat().st_size > 0

    assert main(args) == 0
    assert capsys.readouterr().out.count(": cached (") == 4  # sft and the three, not rescored


@pytest.mark.parametrize("objectives", [
    ["helpful=REWARD", "harmless=-COST"],  # two of the three
    ["helpful=REWARD", "brevity=py:rules_k3.brevity", "harmless=-COST"],  # the order differs
])
def test_runs_with_other_objective_lists_are_refused_in_one_sentence(k3_run, monkeypatch,
                                                                     objectives):
    monkeypatch.chdir(k3_run)
    other = k3_run / "other"
    shutil.rmtree(other, ignore_errors=True)
    shutil.copytree(k3_run / "run", other)
    config = other / "checkpoint" / "train_config.json"
    cfg = json.loads(config.read_text())
    config.write_text(json.dumps(cfg | {"objective": objectives}))
    with pytest.raises(SystemExit) as stop:
        main([str(k3_run / "run"), str(other), "--out", str(k3_run / "eval-refused")])
    message = str(stop.value.code)
    assert message == (
        f"error: run was trained on the objectives (helpful, harmless, brevity) and other on "
        f"({', '.join(o.split('=')[0] for o in objectives)}); evaluate runs with the same "
        f"objective names in the same order together, one evaluate.py call (and --out) per set.")
    assert not (k3_run / "eval-refused").exists()  # stopped before any model was loaded


def test_ratio_columns_name_clashes_and_row_numbers_by_hand():
    k3 = {"objective": ["helpful=r", "harmless=-c", "short=-py:rules.words"]}
    columns = table_columns([k3])
    # a cost model gets its ratio column; a Python rule to minimise does not
    assert columns.metrics == ["helpful", "harmless", "short", "avg", "harmless_ratio"]
    assert [t for t, _ in columns.table] == ["helpful", "harmless", "short", "Avg",
                                             "harmless ratio"]
    result = {"objectives": {"helpful": [1.0, 3.0], "harmless": [-1.0, 0.5],
                             "short": [-2.0, -4.0]}}
    numbers, cost = row_metrics(result, k3)
    assert numbers == pytest.approx({"helpful": 2.0, "harmless": -0.25, "short": -3.0,
                                     "avg": (2.0 - 0.25 - 3.0) / 3, "harmless_ratio": 0.5})
    assert cost.tolist() == [1.0, -0.5]  # the cost model's own score, for "cost sign ok"
    assert row_metrics({"objectives": {"a": [1.0], "b": [2.0]}},
                       {"objective": ["a=py:m.f", "b=x"]})[1] is None
    for name in ("avg", "gt_safe", "seeds", "harmless_ratio", "helpful_std"):
        with pytest.raises(ValueError, match=f"the objective name '{name}' is also a column"):
            table_columns([{"objective": ["helpful=r", "harmless=-c", f"{name}=py:m.f"]}])


def test_wide_tables_split_under_100_columns_and_two_named_objectives_keep_one_plot(tmp_path):
    from evals.tables import aggregate, format_table
    names = ["helpfulness_score", "harmlessness", "brevity_rule", "politeness", "formatting"]
    columns = table_columns([{"objective": [f"{n}=-m{i}" for i, n in enumerate(names)]}])
    rows = [{"group": f"gapo p={p}", "family": f"gapo p={p}", "seed": s,
             **{k: 0.1 * p - 0.03 * s for k in columns.metrics}} for p in (1, 2) for s in (0, 1)]
    text = format_table(aggregate(rows, columns.metrics), toy=False, columns=columns)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert all(t in text for t, _ in columns.table)  # every column printed, none dropped
    assert text.count("method") > 1  # split into several tables
    agg = [{"group": "gapo p=2", "family": "gapo p=2", "lam": None, "helpful": 1.0, "brief": 2.0,
            "helpful_std": 0.0, "brief_std": 0.0}]
    ax = pareto.plot_pareto(agg, str(tmp_path / "p.png"), [0.9, 1.9], {}, ("helpful", "brief"),
                            ("helpful", "brief"))
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("helpful  → better", "brief  → better")
    assert len(ax.figure.axes) == 1
    # K = 5: 10 pairs, four rows of three panels with the last two cells removed
    five = [{"group": g, "family": g, "lam": None, **{n + "_std": 0.0 for n in "abcde"},
             **{n: (i + j) % 3 for i, n in enumerate("abcde")}}
            for j, g in enumerate(["mgda", "gapo p=2"])]
    panels = pareto.plot_pairs(five, str(tmp_path / "q.png"), [-1] * 5, {}, list("abcde"),
                               list("abcde"))
    assert len(panels) == 10 and len(panels[0].figure.axes) == 10
    assert (tmp_path / "q.pdf").stat().st_size > 0
