"""evaluate.py: Table 1 numbers by hand (evals/tables.py), seeds aggregated, and the command line on a smoke
checkpoint (a 2-iteration train.py run on the tiny toy world) with bad inputs beside it, soups among them. The
front, hypervolume and plot are tests/test_pareto.py; the soups' interpolation is tests/test_soups.py."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from evaluate import main
from evals.tables import aggregate, format_table, group_labels, response_metrics, run_label

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- pure functions

def test_table_numbers_by_hand_and_mean_std_over_seeds():
    # Run A: reward 1..4, cost (-1, 0, 2, -3) -> Helpful 2.5, Harmless -(-2)/4 = 0.5, Avg 1.5, ratio 3/4 (cost <= 0).
    a = response_metrics([1, 2, 3, 4], [-1, 0, 2, -3])
    assert a == pytest.approx({"helpful": 2.5, "harmless": 0.5, "avg": 1.5, "harmless_ratio": 0.75})
    # Run B: Helpful 0.5, Harmless -(1 + 1 + 1 - 1)/4 = -0.5, Avg 0, ratio 1/4.
    b = response_metrics([0, 0, 1, 1], [1, 1, 1, -1])
    assert b == pytest.approx({"helpful": 0.5, "harmless": -0.5, "avg": 0.0, "harmless_ratio": 0.25})
    rows = [{"group": "gapo p=2", "family": "gapo p=2", "seed": s, "n_prompts": 4, **m} for s, m in ((0, a), (1, b))]
    rows.append({"group": "sft", "family": "sft", "seed": None, "n_prompts": 4, **response_metrics([2], [5])})
    agg = aggregate(rows, ["helpful", "harmless", "avg", "harmless_ratio"])
    assert [r["group"] for r in agg] == ["gapo p=2", "sft"]
    g = agg[0]
    # Means of the two runs; std is the sample std (ddof 1): two values x, y -> |x - y| / sqrt(2).
    assert g["helpful"] == pytest.approx(1.5) and g["helpful_std"] == pytest.approx(2 / np.sqrt(2))
    assert g["harmless"] == pytest.approx(0.0) and g["harmless_std"] == pytest.approx(1 / np.sqrt(2))
    assert g["avg"] == pytest.approx(0.75) and g["avg_std"] == pytest.approx(1.5 / np.sqrt(2))
    assert g["harmless_ratio"] == pytest.approx(0.5) and g["harmless_ratio_std"] == pytest.approx(0.5 / np.sqrt(2))
    assert g["seeds"] == [0, 1]
    sft = agg[1]
    assert (sft["helpful"], sft["harmless"], sft["harmless_ratio"], sft["helpful_std"]) == (2.0, -5.0, 0.0, 0.0)
    table = format_table(agg, toy=False)
    assert "+1.500±1.414" in table and "50.0±35.4%" in table and "+2.000" in table
    assert "±" not in table.splitlines()[-1]  # one run: no spread shown


def test_missing_values_are_skipped_not_averaged_as_zero():
    values = ((0, 0.5), (1, float("nan")), (2, None))  # e.g. over-refusal with no benign prompt in the set
    rows = [{"group": "g", "family": "g", "seed": s, "over_refusal": v} for s, v in values]
    agg = aggregate(rows, ["over_refusal"])[0]
    assert agg["over_refusal"] == 0.5 and agg["over_refusal_std"] == 0.0


def test_labels_group_seeds_and_split_different_setups():
    base = {"method": "gapo", "p": 2.0, "pref": "0.5,0.5", "mgda_params": "last_block", "seed": 0, "out_dir": "a"}
    configs = [base, {**base, "seed": 1, "out_dir": "b"}, {**base, "mgda_params": "all"},
               {**base, "method": "pgapo", "pref": "0.4,0.6"}, {**base, "method": "ppo-h"}]
    labels = group_labels(configs)
    assert labels[0] == labels[1] == "gapo p=2 (mgda_params=last_block)"
    assert labels[2] == "gapo p=2 (mgda_params=all)"
    assert labels[3:] == ["pgapo λ_h=0.4", "ppo-h"]
    assert run_label({"method": "soup", "pref": "0.2,0.8"}) == ("soup", "soup λ_h=0.2", 0.2)
    k3 = {"objective": ["helpful=r", "harmless=-c", "brief=py:m.f"]}
    assert run_label({**k3, "method": "morlhf", "pref": "0.2,0.3,0.5"})[1] == "morlhf λ=(0.2,0.3,0.5)"
    assert run_label({**k3, "method": "ppo", "objective_index": 2})[1] == "ppo (brief)"
    assert run_label({"method": "ppo", "objective_index": 1})[1] == "ppo (harmless)"


# ----------------------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    cmd = [sys.executable, "train.py", "--toy_size", "tiny", "--toy_dir", str(tmp / "toy"), "--iterations", "2",
           "--batch_size", "4", "--minibatch_size", "4", "--micro_batch_size", "4", "--out_dir", str(tmp / "run"),
           "--method", "gapo", "--p", "2"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp


def read_table(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_cli_on_a_smoke_checkpoint_with_a_bad_folder_beside_it(smoke_run):
    out, bad = smoke_run / "eval", smoke_run / "not-a-run"
    bad.mkdir()
    (bad / "notes.txt").write_text("hello")
    cmd = [sys.executable, "evaluate.py", str(bad), str(smoke_run / "run"), "--limit", "4", "--samples_per_prompt", "2",
           "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]  # one input failed
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is not a run folder or checkpoint" in errors[0] and str(bad) in errors[0]
    assert "Traceback" not in done.stderr
    rows = read_table(out / "table.csv")
    assert [r["method"] for r in rows] == ["sft", "gapo p=2"]
    for r in rows:
        assert r["n_prompts"] == "4" and r["n_responses"] == "8"
        assert float(r["avg"]) == pytest.approx((float(r["helpful"]) + float(r["harmless"])) / 2)
        assert 0 <= float(r["harmless_ratio"]) <= 1 and 0 <= float(r["harmful_compliance"]) <= 1
    assert "Harmless ratio" in done.stdout and "benign help" in done.stdout
    assert "4 prompts x 2 samples = 8 responses per run" in done.stdout
    assert "\r" not in done.stderr  # no progress-bar redraws when the output is not a terminal
    assert (out / "pareto.png").stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    assert results["failed"] == [str(bad)] and len(results["runs"]) == 2 and results["hypervolume_reference"]
    cached = [json.loads(open(r["cache"]).read()) for r in results["runs"]]
    assert all(len(c["responses"]) == 8 and len(c["cost"]) == 8 for c in cached)


def test_cache_soups_and_unavailable_scorers_in_process(smoke_run, capsys):
    """Soups of a perturbed copy (as PPO-H) and the run (as PPO-S): lam = 1 and 0 must reproduce the two ends
    exactly (same sampling seed); a copy whose reward model is missing fails alone; a second call is cached."""
    from transformers import AutoModelForCausalLM
    runs = {}
    for name, method in (("h", "ppo-h"), ("s", "ppo-s"), ("noscorer", "ppo-s")):
        shutil.copytree(smoke_run / "run", smoke_run / name)
        cfg_file = smoke_run / name / "checkpoint" / "train_config.json"
        cfg = json.loads(cfg_file.read_text()) | {"method": method}
        if name == "noscorer":
            cfg |= {"reward_model": str(smoke_run / "missing-reward"), "seed": 7}
        cfg_file.write_text(json.dumps(cfg))
        runs[name] = str(smoke_run / name)
    policy_dir = smoke_run / "h" / "checkpoint" / "policy"
    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    with torch.no_grad():
        model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
    model.save_pretrained(policy_dir)
    args = [runs["h"], runs["s"], runs["noscorer"], "--soup", runs["h"], runs["s"], "--soup_lambdas", "1,0",
            "--limit", "2", "--samples_per_prompt", "2", "--out", str(smoke_run / "eval2")]
    assert main(args) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "Traceback" not in err  # the run and its own SFT baseline, one sentence each
    assert {e.split(": ")[1] for e in errors} == {"noscorer", "sft (start of noscorer)"}
    assert all("missing-reward" in e for e in errors)
    results = json.loads((smoke_run / "eval2" / "results.json").read_text())
    by_name = {r["name"]: r for r in results["runs"]}
    soup1, soup0 = (by_name[f"soup λ_h={lam} (h + s)"] for lam in (1, 0))
    for soup, end in ((soup1, by_name["h"]), (soup0, by_name["s"])):
        assert (soup["helpful"], soup["harmless"]) == (end["helpful"], end["harmless"])
    assert json.load(open(soup1["cache"]))["responses"] == json.load(open(by_name["h"]["cache"]))["responses"]
    assert json.load(open(soup1["cache"]))["responses"] != json.load(open(by_name["s"]["cache"]))["responses"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert out.count(": cached (") == 5  # sft, h, s and both soups; nothing regenerated


def test_empty_prompt_file_is_one_clear_sentence(smoke_run, capsys):
    empty = smoke_run / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit, match="no checkpoint could be evaluated"):
        main([str(smoke_run / "run"), "--prompts", str(empty), "--out", str(smoke_run / "eval3")])
    err = capsys.readouterr().err
    assert "is empty" in err and "Traceback" not in err


def test_study_plan_and_alpha_agreement_by_hand():
    from experiments.study import alpha_agreement, plan
    runs = plan([0, 1])
    names = [n for n, _ in runs]
    assert len(runs) == 34 and len(set(names)) == 34  # 15 methods + 2 whitened ablations, per seed
    assert dict(runs)["gapo-p2-whiten-s1"] == ["--method", "gapo", "--p", "2", "--whiten_advantages",
                                              "--seed", "1"]
    assert len(plan([0], whitening=False)) == 15
    assert {"ppo-h-s0", "gapo-p2-s1", "pgapo-pref0.2_0.8-s0", "morlhf-pref0.8_0.2-s1"} <= set(names)
    assert dict(runs)["morlhf-pref0.4_0.6-s0"] == ["--method", "morlhf", "--pref", "0.4,0.6", "--seed", "0"]
    # Identical Gram matrices: perfect agreement.
    same = alpha_agreement([{"last_block": [[1.0, -0.2], [-0.2, 3.0]], "all": [[1.0, -0.2], [-0.2, 3.0]]}])
    assert same["p=0"]["mean_abs_alpha_diff"] == pytest.approx(0, abs=1e-12)
    assert same["p=2"]["direction_cosine_mean"] == pytest.approx(1) and same["p=2"]["same_dominant_objective"] == 1
    # p = 0, K = 2 closed form alpha_1 = (G22 - G12) / (G11 + G22 - 2 G12): diag(1, 4) -> 0.8, identity -> 0.5;
    # the cosine in the all-parameter metric (identity) of w = (0.8, 0.2) and (0.5, 0.5) is 0.5 / sqrt(0.68 * 0.5).
    out = alpha_agreement([{"last_block": [[1.0, 0.0], [0.0, 4.0]], "all": [[1.0, 0.0], [0.0, 1.0]]}])["p=0"]
    assert out["mean_abs_alpha_diff"] == pytest.approx(0.3)
    assert out["direction_cosine_mean"] == pytest.approx(0.5 / np.sqrt(0.68 * 0.5))
    assert out["same_dominant_objective"] == 0.0  # (0.8, 0.2) has a dominant objective, (0.5, 0.5) is a tie


# ----------------------------------------------------------------------------- honest results

def toy_rows(seeds):
    keys = ["helpful", "harmless", "avg", "harmless_ratio", "harmful_compliance", "over_refusal",
            "benign_helpful", "gt_safe", "cost_sign_agrees"]
    rows = [{"group": "pgapo λ_h=0.4 (mgda_params=all)", "family": "pgapo", "lam": 0.4, "seed": s,
             "n_prompts": 40, "n_responses": 160, **{k: 0.1 * s + 0.05 for k in keys}}
            for s in seeds]
    return aggregate(rows, keys)


def test_tables_fit_100_columns_and_explain_the_ground_truth():
    table = format_table(toy_rows([0, 1, 2]), toy=True)
    assert max(len(line) for line in table.splitlines()) <= 100
    assert "benign help = share of benign prompts answered" in " ".join(table.splitlines())


@pytest.mark.parametrize("args,message", [
    (["--samples_per_prompt", "0"], "--samples_per_prompt must be 1 or more"),
    (["--batch_size", "0"], "--batch_size must be 1 or more"),
    (["--soup_lambdas", "0.5,2"], "--soup_lambdas must be numbers in [0, 1]"),
    (["--device", "tpu"], "unknown --device 'tpu'"),
    (["--dtype", "foo"], "unknown --dtype 'foo'"),
])
def test_bad_evaluate_flags_are_one_sentence(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["runs/none"] + args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def copy_run(smoke_run, name, edit=None):
    shutil.copytree(smoke_run / "run", smoke_run / name)
    if edit:
        edit(smoke_run / name / "checkpoint")
    return str(smoke_run / name)


def test_damaged_checkpoint_fails_alone_and_the_good_run_is_evaluated(smoke_run, capsys):
    def cut(ckpt):
        path = ckpt / "policy" / "model.safetensors"
        path.write_bytes(path.read_bytes()[:1000])
    cut_run = copy_run(smoke_run, "cut", cut)
    out = smoke_run / "eval-cut"
    assert main([cut_run, str(smoke_run / "run"), "--limit", "2", "--samples_per_prompt", "1",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is damaged: policy/model.safetensors is 1000 bytes" in errors[0]
    assert [r["method"] for r in read_table(out / "table.csv")] == ["sft", "gapo p=2"]


def test_unfinished_runs_get_their_own_row_and_a_duplicate_seed_counts_once(smoke_run, capsys):
    def half(ckpt):
        saved = json.loads((ckpt / "files.json").read_text())
        (ckpt / "files.json").write_text(json.dumps(saved | {"iteration": 1}))
    dup, stopped = copy_run(smoke_run, "dup"), copy_run(smoke_run, "half", half)
    out = smoke_run / "eval-honest"
    assert main([str(smoke_run / "run"), dup, stopped, "--limit", "2", "--samples_per_prompt", "1",
                 "--out", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "half stopped at iteration 1 of 2; it has its own row" in text
    assert "dup is the same setup and seed as run, so it is left out" in text
    rows = {r["method"]: r["seeds"] for r in read_table(out / "table.csv")}
    assert rows == {"sft": "1", "gapo p=2": "1", "gapo p=2 [stopped at 1/2]": "1"}


def test_a_deleted_toy_world_is_rebuilt_not_blamed_on_the_hub(smoke_run, capsys):
    toy = smoke_run / "toy-copy"
    shutil.copytree(smoke_run / "toy", toy)

    def repoint(ckpt):
        cfg = json.loads((ckpt / "train_config.json").read_text())
        cfg |= {k: str(toy / p) for k, p in (("policy", "sft"), ("reward_model", "reward"),
                                             ("cost_model", "cost"))}
        (ckpt / "train_config.json").write_text(json.dumps(cfg))
    moved = copy_run(smoke_run, "elsewhere", repoint)
    shutil.rmtree(toy / "reward")
    assert main([moved, "--limit", "2", "--samples_per_prompt", "1",
                 "--out", str(smoke_run / "eval-toy")]) == 0
    out = capsys.readouterr().out
    assert f"the toy world it was trained in ({toy}) needs a rebuild" in out
    assert (toy / "reward" / "model.safetensors").exists()

def test_default_outputs_go_beside_the_runs_evaluated(smoke_run):
    """No --out: eval/ in the folder that holds the runs (here smoke_run/), said once; a
    checkpoint folder counts as its run."""
    cmd = [sys.executable, "evaluate.py", str(smoke_run / "run" / "checkpoint"), "--limit", "2",
           "--samples_per_prompt", "1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"outputs go to {smoke_run / 'eval'} (eval/ in the folder holding the runs" in \
        done.stdout
    assert (smoke_run / "eval" / "table.csv").is_file()
