"""experiments/smol_study.py: the plan, and the per-prompt change from SFT with its 95% interval,
checked against a hand computation on results written here in evaluate.py's format."""
import json
import math

from experiments import smol_study
from experiments.claims import t_quantile


def test_plan_has_the_six_methods_of_the_readme():
    names = [name for name, _ in smol_study.METHODS]
    assert names == ["ppo-h", "ppo-s", "safe-rlhf", "mgda", "gapo-p1", "gapo-p2"]


def test_paired_change_from_sft_matches_a_hand_computation(tmp_path):
    prompts = ["a", "b", "c", "d"]
    caches = {"sft": {"reward": [1.0, 2.0, 0.0, 1.0], "cost": [0.5, 0.0, 1.0, 0.5],
                      "responses": ["x y", "x", "x y z", "x"]},
              "run": {"reward": [1.5, 2.0, 1.0, 1.5], "cost": [0.5, -0.5, 1.0, 0.0],
                      "responses": ["x y z", "x", "x", "x y"]}}
    rows = []
    for name, cache in caches.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"prompts": prompts, **cache}))
        rows.append({"name": name, "group": "gapo p=2" if name == "run" else "sft",
                     "sft": "sft" if name == "run" else "", "cache": str(path)})
    (tmp_path / "results.json").write_text(json.dumps({"runs": rows}))
    header, line = smol_study.paired_vs_sft(str(tmp_path))
    helpful = [0.5, 0.0, 1.0, 0.5]  # run - sft, per prompt
    mean = sum(helpful) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in helpful) / 3)
    half = t_quantile(3) * sd / 2
    assert line.startswith("gapo p=2")
    assert f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]" in line
    assert "+0.250 [" in line  # harmless: -cost changes by 0, +0.5, 0, +0.5
    assert "+0.000 [" in line  # words: +1, 0, -2, +1


def test_dry_run_plans_every_method_through_the_shared_runner(tmp_path, capsys):
    """The smol study hands experiments/study.py's runner every field it reads (a missing one,
    eval_every, once crashed the study before its first run)."""
    smol_study.main(["--dry_run", "--out_root", str(tmp_path / "s")])
    planned = [line for line in capsys.readouterr().out.splitlines() if "[new]" in line]
    assert len(planned) == len(smol_study.METHODS)
    assert all("--preset smol" in line and "--eval_every 0" in line for line in planned)
    assert not (tmp_path / "s" / "logs").exists()  # a dry run trains nothing
