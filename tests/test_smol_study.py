"""experiments/smol_study.py: the plan, and the per-prompt change from SFT with its 95% interval,
checked against a hand computation on results written here in evaluate.py's format."""
import json
import math

import pytest

from experiments import smol_study
from experiments.claims import t_quantile


def test_plan_has_the_seven_methods_of_the_readme_and_seeds_for_the_key_three():
    names = [name for name, _ in smol_study.METHODS]
    assert names == ["ppo-h", "ppo-s", "safe-rlhf", "mgda", "gapo-p1", "gapo-p2", "morlhf"]
    runs = [name for name, _ in smol_study.plan([0, 1, 2])]
    assert len(runs) == 3 * 3 + 4 and len(set(runs)) == len(runs)
    assert {r for r in runs if r.endswith("-s2")} == {"ppo-h-s2", "ppo-s-s2", "gapo-p2-s2"}
    assert [r for r, _ in smol_study.plan([5], ["mgda"])] == ["mgda-s5"]
    flags = dict(smol_study.plan([0], ["morlhf"]))["morlhf-s0"]
    assert flags[flags.index("--pref") + 1] == "0.5,0.5" and flags[-2:] == ["--seed", "0"]


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


def test_seeds_are_pooled_per_prompt_before_the_interval(tmp_path):
    """Two seeds of one method: a prompt's change is the mean of its two seeds' changes."""
    prompts = ["a", "b", "c"]
    caches = {"sft": [0.0, 0.0, 0.0], "s0": [1.0, 0.0, 2.0], "s1": [3.0, 0.0, 0.0]}
    rows = []
    for name, reward in caches.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"prompts": prompts, "reward": reward, "cost": [0.0] * 3,
                                    "responses": ["x"] * 3}))
        rows.append({"name": name, "group": "sft" if name == "sft" else "ppo-h",
                     "sft": "" if name == "sft" else "sft", "cache": str(path)})
    (tmp_path / "results.json").write_text(json.dumps({"runs": rows}))
    header, line = smol_study.paired_vs_sft(str(tmp_path))
    pooled = [2.0, 0.0, 1.0]
    sd = math.sqrt(sum((x - 1.0) ** 2 for x in pooled) / 2)
    half = t_quantile(2) * sd / math.sqrt(3)
    assert line.split()[:2] == ["ppo-h", "2"]
    assert f"+1.000 [{1 - half:+.3f}, {1 + half:+.3f}]" in line


def test_training_curves_average_seeds_then_smooth(tmp_path):
    for seed, offset in ((0, 0.0), (1, 2.0)):
        run = tmp_path / f"gapo-p2-s{seed}"
        run.mkdir()
        with open(run / "log.jsonl", "w") as f:
            for t in range(1, 9):
                f.write(json.dumps({"iteration": t, "score_helpful": t + offset,
                                    "score_harmless": -t, "kl": 0.1 * t,
                                    "response_length": 10.0}) + "\n")
    curves = smol_study.training_curves([str(tmp_path / "gapo-p2-s0"),
                                         str(tmp_path / "gapo-p2-s1")], smooth=4)
    c = curves["gapo-p2"]
    assert c["seeds"] == 2 and c["iterations"] == list(range(1, 9))
    # seed mean t + 1, then a 4-wide moving average: (t + 1) + 1.5 at t = 1..5
    assert c["score_helpful"] == pytest.approx([3.5, 4.5, 5.5, 6.5, 7.5])
    # the last quarter (iterations 7-8, seed mean 8.5) minus the one before (5-6, 6.5)
    assert c["score_helpful_moved"] == pytest.approx(2.0)
    assert c["score_harmless_moved"] == pytest.approx(-2.0)
    assert c["response_length_moved"] == 0.0
    short = tmp_path / "ppo-s-s0"  # 7 log lines: quarters of 1 iteration, too short to say
    short.mkdir()
    first = (tmp_path / "gapo-p2-s0" / "log.jsonl").read_text().splitlines(keepends=True)[0]
    (short / "log.jsonl").write_text(first * 7)
    c = smol_study.training_curves([str(short)], smooth=10)["ppo-s"]
    assert c["score_helpful_moved"] is None and c["score_helpful"] == pytest.approx([1.0])
    smol_study.plot_training_curves(curves, str(tmp_path))
    assert (tmp_path / "smol_curves.png").stat().st_size > 0


def test_dry_run_plans_every_method_through_the_shared_runner(tmp_path, capsys):
    """The smol study hands experiments/study.py's runner every field it reads (a missing one,
    eval_every, once crashed the study before its first run)."""
    smol_study.main(["--dry_run", "--out_root", str(tmp_path / "s")])
    planned = [line for line in capsys.readouterr().out.splitlines() if "[new]" in line]
    assert len(planned) == len(smol_study.plan([0, 1, 2]))
    assert all("--preset smol" in line and "--eval_every 0" in line for line in planned)
    # the budget's flags reach every run; a flag given on the command line wins over it
    assert all("--iterations 30 " in line and "--actor_lr 0.0003" in line for line in planned)
    smol_study.main(["--dry_run", "--out_root", str(tmp_path / "s"), "--budget", "gpu",
                     "--seeds", "0", "--methods", "ppo-s", "--actor_lr", "1e-5"])
    planned = [line for line in capsys.readouterr().out.splitlines() if "[new]" in line]
    assert len(planned) == 1 and "--iterations 100 " in planned[0]
    assert "--batch_size 32" in planned[0] and planned[0].count("--actor_lr") == 1
    assert "--actor_lr 1e-5" in planned[0]
    with pytest.raises(SystemExit, match="unknown method 'gapo'"):
        smol_study.main(["--dry_run", "--methods", "gapo"])
    assert not (tmp_path / "s" / "logs").exists()  # a dry run trains nothing


def test_a_run_is_stale_for_a_setting_it_learns_with_not_for_a_volatile_one(tmp_path):
    """The studies' runner retrains a finished run only when a setting that changes what it
    learns differs; --resume-able settings (cli.VOLATILE: device, generation engine, ...) do not."""
    import dataclasses
    import train
    from experiments import study
    cfg = dataclasses.asdict(train.Config())
    (tmp_path / "train_config.json").write_text(json.dumps(cfg))
    assert study.changed_settings(str(tmp_path), ["--generation", "static",
                                                  "--num_threads", "2"]) == []
    assert study.changed_settings(str(tmp_path), ["--kl_coef", "0.1"]) == ["kl_coef 0.05 -> 0.1"]


def test_prompts_the_world_chose_do_not_make_a_run_stale(tmp_path):
    """A smol run records the prompts file its world handed it; the study's plan leaves --prompts
    empty, so that recorded path is no changed setting. Prompts given on purpose still count."""
    import dataclasses
    import cli
    import train
    from experiments import study
    cfg = cli.parse_config(train.Config, train.PRESETS, ["--preset", "smol"],
                           lora_lr=train.LORA_LR)
    cfg = dict(dataclasses.asdict(cfg), prompts="/cache/prompts.jsonl")
    (tmp_path / "train_config.json").write_text(json.dumps(cfg))
    assert study.changed_settings(str(tmp_path), ["--preset", "smol"]) == []
    assert study.changed_settings(str(tmp_path), ["--preset", "smol", "--prompts", "p.jsonl"]) == [
        "prompts /cache/prompts.jsonl -> p.jsonl"]
