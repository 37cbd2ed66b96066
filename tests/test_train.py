"""train.py end to end on the tiny toy world: every method, resume, determinism, bad input."""
import fcntl
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import gapo
import cli
import runs
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--toy_size", "tiny", "--iterations", "2", "--batch_size", "4", "--minibatch_size", "4",
         "--micro_batch_size", "2", "--max_new_tokens", "8", "--ppo_epochs", "1"]


def run(args, toy, out):
    return train.main(SMALL + ["--toy_dir", toy, "--out_dir", str(out)] + args)


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("method", gapo.METHODS)
def test_every_method_trains_two_iterations(tiny_toyworld, tmp_path, method):
    args = ["--method", method]
    if method in ("morlhf", "pgapo"):
        args += ["--pref", "0.4,0.6"]
    run(args, tiny_toyworld, tmp_path / "run")
    log = read_log(tmp_path / "run")
    assert [r["iteration"] for r in log] == [1, 2]
    for r in log:
        assert all(abs(w) < 1e6 for w in r["weights"])
        if method in gapo.GRADIENT_METHODS:
            assert len(r["grad_norms"]) == 2 and -1 <= r["grad_cosine"][0][1] <= 1
        if method in ("mgda", "gapo", "gapo-eq17"):
            assert abs(sum(r["alpha"]) - 1) < 1e-6
        if method == "safe-rlhf":
            assert r["lambda"] > 0
        if method == "fast-rl":
            assert abs(sum(r["fastrl_weights"]) - 1) < 1e-6
    ckpt = tmp_path / "run" / "checkpoint"
    saved = json.loads((ckpt / "train_config.json").read_text())
    assert saved["method"] == method and os.path.isdir(saved["policy"])
    # The policy alone loads with from_pretrained.
    from transformers import AutoModelForCausalLM, AutoTokenizer
    AutoModelForCausalLM.from_pretrained(ckpt / "policy")
    AutoTokenizer.from_pretrained(ckpt / "policy")


def test_resume_gives_the_same_numbers_as_an_uninterrupted_run(tiny_toyworld, tmp_path):
    common = ["--method", "gapo", "--p", "2", "--iterations", "3", "--save_every", "5"]
    run(common, tiny_toyworld, tmp_path / "straight")
    run(common + ["--stop_after", "2"], tiny_toyworld, tmp_path / "resumed")  # as if interrupted
    assert len(read_log(tmp_path / "resumed")) == 2
    run(common + ["--resume"], tiny_toyworld, tmp_path / "resumed")
    straight, resumed = read_log(tmp_path / "straight"), read_log(tmp_path / "resumed")
    assert [r["iteration"] for r in resumed] == [1, 2, 3]
    keys = ["score_helpful", "score_harmless", "kl", "alpha", "weights", "value_loss"]
    assert [[r[k] for k in keys] for r in straight] == [[r[k] for k in keys] for r in resumed]


def test_same_seed_same_log_and_other_seed_differs(tiny_toyworld, tmp_path):
    for name, seed in [("a", "0"), ("b", "0"), ("c", "1")]:
        run(["--method", "pgapo", "--seed", seed], tiny_toyworld, tmp_path / name)
    strip = lambda log: [{k: v for k, v in r.items() if not k.startswith(("time_", "tokens_"))} for r in log]
    assert strip(read_log(tmp_path / "a")) == strip(read_log(tmp_path / "b"))
    assert strip(read_log(tmp_path / "a")) != strip(read_log(tmp_path / "c"))


def test_static_cache_generation_trains_the_same_run(tiny_toyworld, tmp_path, monkeypatch):
    """--generation static samples the same tokens as hf on the CPU (no compile here), so the
    whole log is the same; the engine reaches rollout.generate, is saved with the run and may
    change on --resume."""
    engines, generate = [], train.generate

    def recorded(*args):
        engines.append(args[-1])  # the engine, train.collect_rollout's last argument
        return generate(*args)

    monkeypatch.setattr(train, "generate", recorded)
    for name, engine in (("hf", "hf"), ("static", "static")):
        run(["--method", "gapo", "--generation", engine], tiny_toyworld, tmp_path / name)
    iterations = len(read_log(tmp_path / "hf"))
    assert engines == ["hf"] * iterations + ["static"] * iterations
    strip = lambda log: [{k: v for k, v in r.items() if not k.startswith(("time_", "tokens_"))}
                         for r in log]
    assert strip(read_log(tmp_path / "hf")) == strip(read_log(tmp_path / "static"))
    saved = json.loads((tmp_path / "static" / "train_config.json").read_text())
    assert saved["generation"] == "static"


@pytest.mark.parametrize("args,message", [
    (["--method", "dpo"], "unknown method"),
    (["--p", "-1"], "--p must be"),
    (["--method", "pgapo", "--pref", "0.7,0.7"], "--pref must be 2 non-negative numbers"),
    (["--method", "pgapo", "--pref", "1"], "--pref must be 2 non-negative numbers"),
    (["--preset", "huge"], "unknown preset"),
    (["--mgda_params", "middle"], "unknown mgda_params"),
    (["--device", "tpu"], "unknown --device 'tpu'; choose auto, cpu, cuda or cuda:N"),
    pytest.param(["--device", "cuda"], "asks for a GPU, but torch sees no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")),
    (["--dtype", "foo"], "unknown --dtype 'foo'"),
    (["--generation", "vllm"], "unknown generation 'vllm'; choose hf or static"),
    (["--save_every", "0"], "--save_every must be greater than 0"),
    (["--minibatch_size", "0"], "--minibatch_size must be greater than 0"),
    (["--batch_size", "0"], "--batch_size must be greater than 0"),
    (["--temperature", "0"], "--temperature must be greater than 0"),
    (["--max_new_tokens", "0"], "--max_new_tokens must be greater than 0"),
    (["--actor_lr", "nan"], "--actor_lr must be a finite number"),
    (["--kl_coef", "nan"], "--kl_coef must be a finite number"),
    (["--iterations", "-5"], "--iterations must be 0 or more"),
    (["--iterations", "0", "--epochs", "0"], "--epochs must be greater than 0"),
    (["--top_p", "0"], "--top_p must be greater than 0"),
    (["--gamma", "1.5"], "--gamma must lie between 0 and 1"),
    (["--seed", "-1"], "--seed must be 0 or more"),
    (["--eval_every", "-1"], "--eval_every must be 0 or more"),
    (["--eval_samples", "0"], "--eval_samples must be greater than 0"),
])
def test_bad_flags_stop_with_one_sentence(tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        train.main(args + ["--out_dir", str(tmp_path / "x")])
    assert not os.path.exists(tmp_path / "x")  # refused before the run folder is made


def test_pref_is_checked_only_for_the_methods_that_read_it():
    for method in ("gapo", "ppo-h", "safe-rlhf"):
        cfg = cli.parse_config(train.Config, train.PRESETS, ["--method", method, "--pref", "junk"])
        assert cli.check_config(cfg, 2) == [0.5, 0.5]


def test_binary_prompt_file_is_named(tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_bytes(b"\xe3\x81\x00\xff" * 10)
    with pytest.raises(SystemExit, match=f"--prompts {bad} is not UTF-8 text"):
        train.main(["--prompts", str(bad), "--out_dir", str(tmp_path / "x")])


def test_run_folder_guard_and_missing_checkpoint(tiny_toyworld, tmp_path):
    run(["--method", "ppo-h", "--iterations", "1"], tiny_toyworld, tmp_path / "run")
    with pytest.raises(SystemExit, match="already holds a run"):
        run(["--method", "ppo-h"], tiny_toyworld, tmp_path / "run")
    with pytest.raises(SystemExit, match="different configuration"):
        run(["--method", "ppo-s", "--resume"], tiny_toyworld, tmp_path / "run")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit, match=r"holds files train.py did not write \(mine.txt\)"):
        run(["--method", "ppo-h"], tiny_toyworld, tmp_path / "notes")
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match="is a file; pass a folder"):
        run(["--method", "ppo-h"], tiny_toyworld, tmp_path / "file")


def failed_start(folder):
    """What a start killed before its first checkpoint leaves: its config, a log line, a save cut
    short in checkpoint.tmp, and a half-written last log line."""
    folder.mkdir()
    (folder / "train_config.json").write_text(json.dumps({"method": "ppo-h"}))
    (folder / "log.jsonl").write_text('{"iteration": 1}\n{"iterat')
    (folder / "checkpoint.tmp").mkdir()


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_a_failed_start_is_rerun_as_typed(tiny_toyworld, tmp_path, capsys, resume):
    failed_start(tmp_path / "run")
    run(["--method", "ppo-h", "--iterations", "1"] + resume, tiny_toyworld, tmp_path / "run")
    assert "has no checkpoint (its start stopped before the first save); starting the run afresh" \
        in capsys.readouterr().out
    assert [r["iteration"] for r in read_log(tmp_path / "run")] == [1]
    assert not (tmp_path / "run" / "checkpoint.tmp").exists()


def test_resume_alone_reads_the_saved_flags_in_a_moved_folder_and_the_lock(tiny_toyworld, tmp_path,
                                                                          capsys):
    run(["--method", "ppo-h", "--kl_coef", "0.2", "--stop_after", "1"], tiny_toyworld,
        tmp_path / "first")
    shutil.move(tmp_path / "first", tmp_path / "moved")  # a renamed run resumes where it now is
    with open(tmp_path / "moved" / "log.jsonl", "a") as f:
        f.write('{"iteration": 2, "score_hel')  # a disk that filled during the append
    with open(tmp_path / "moved" / ".lock", "a+") as held:  # another process drives the folder
        fcntl.flock(held, fcntl.LOCK_EX)
        held.truncate(0)
        held.write("process 4242 on elsewhere")
        held.flush()
        with pytest.raises(SystemExit, match="is in use by process 4242 on elsewhere; wait for it"):
            train.main(["--out_dir", str(tmp_path / "moved"), "--resume"])
    cfg = train.main(["--out_dir", str(tmp_path / "moved"), "--resume"])
    assert (cfg.method, cfg.kl_coef, cfg.toy_size, cfg.iterations) == ("ppo-h", 0.2, "tiny", 2)
    assert [r["iteration"] for r in read_log(tmp_path / "moved")] == [1, 2]
    out = capsys.readouterr().out
    assert "done: iterations 2-2 of 2" in out
    assert f"next: python evaluate.py {tmp_path / 'moved'}" in out
    with pytest.raises(SystemExit, match=r"configuration .*--kl_coef 0.05 \(saved: 0.2\)"):
        train.main(["--out_dir", str(tmp_path / "moved"), "--resume", "--kl_coef", "0.05"])


@pytest.fixture(scope="module")
def one_checkpoint(tiny_toyworld, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    run(["--method", "ppo-h", "--iterations", "1"], tiny_toyworld, out)
    return out


@pytest.mark.parametrize("damaged,message", [
    ("trainer_state.pt", "is damaged: trainer_state.pt is"),
    ("policy/model.safetensors", "is damaged: policy/model.safetensors is"),
    ("critic/model.safetensors", "is damaged: critic/model.safetensors is"),
    ("optim/__0_0.distcp", "is damaged: optim/__0_0.distcp is"),  # the optimizer states
    ("files.json", "trainer_state.pt cannot be read"),  # a checkpoint from before files.json
])
def test_a_damaged_checkpoint_is_one_sentence_on_resume(one_checkpoint, tmp_path, damaged, message):
    out = tmp_path / "run"
    shutil.copytree(one_checkpoint, out)
    if damaged == "files.json":
        os.remove(out / "checkpoint" / "files.json")
        damaged = "trainer_state.pt"
    path = out / "checkpoint" / damaged
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SystemExit, match=message):
        train.main(["--out_dir", str(out), "--resume"])


def interrupt_at(monkeypatch, call):
    real, calls = train.collect_rollout, {"n": 0}

    def collect(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(train, "collect_rollout", collect)


def test_ctrl_c_is_one_line_naming_the_checkpoint_and_the_resume(tiny_toyworld, tmp_path, capsys,
                                                                 monkeypatch):
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 2)
    with pytest.raises(SystemExit) as stop:
        run(["--method", "ppo-h", "--save_every", "1"], tiny_toyworld, out)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 130 and len(err) == 1
    assert err[0] == (f"interrupted; the last good checkpoint (iteration 1) is kept in "
                      f"{out}/checkpoint; continue with: python train.py --out_dir {out} --resume.")
    interrupt_at(monkeypatch, 1)
    with pytest.raises(SystemExit):
        run(["--method", "ppo-h"], tiny_toyworld, tmp_path / "early")
    assert "no checkpoint was saved yet, so rerunning the same command starts the run afresh" in \
        capsys.readouterr().err
    monkeypatch.undo()
    run(["--method", "ppo-h", "--iterations", "1"], tiny_toyworld, tmp_path / "early")  # as typed


def test_a_full_disk_during_a_save_keeps_the_last_checkpoint_and_no_tmp(tiny_toyworld, tmp_path,
                                                                         monkeypatch):
    real, out = torch.save, tmp_path / "run"

    # The disk fills up during the second save (in torch.distributed.checkpoint's optimizer files,
    # the first thing a save writes with torch.save).
    def save(*args, **kwargs):
        if runs.checkpoint_iteration(out) == 1:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)
    monkeypatch.setattr(runs.torch, "save", save)
    with pytest.raises(SystemExit, match=r"saving the checkpoint of iteration 2 failed \(\[Errno "
                                         r"28\] No space left on device\); free disk space; the "
                                         r"last good checkpoint \(iteration 1\) is kept"):
        run(["--method", "ppo-h", "--save_every", "1"], tiny_toyworld, out)
    assert not (out / "checkpoint.tmp").exists() and runs.checkpoint_iteration(out) == 1


def test_command_line_forms_and_preset(tmp_path):
    cfg = cli.parse_config(train.Config, train.PRESETS, ["--method", "gapo", "--p=1", "--resume"])
    assert cfg.p == 1.0 and cfg.resume is True and cfg.method == "gapo"
    paper = cli.parse_config(train.Config, train.PRESETS, ["--preset", "paper", "--actor_lr", "2e-6"])
    assert paper.policy == "HuggingFaceH4/mistral-7b-sft-beta" and paper.kl_coef == 0.05
    assert paper.actor_lr == 2e-6 and paper.critic_lr == 5e-7 and paper.gradient_checkpointing is True


def test_cli_subprocess_smoke(tiny_toyworld, tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "train.py", *SMALL, "--iterations", "1", "--toy_dir", tiny_toyworld,
                             "--out_dir", str(out), "--method", "gapo", "--p", "2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "iter    1" in result.stdout + result.stderr
    assert "\r" not in result.stderr and len(result.stderr) < 2000  # no progress-bar redraws
    assert f"next: python evaluate.py {out}" in result.stdout
    assert (out / "checkpoint" / "policy" / "config.json").exists()


def test_nan_loss_stops_with_iteration_and_objective_and_keeps_the_last_checkpoint(tiny_toyworld, tmp_path,
                                                                                   monkeypatch):
    real = gapo.ppo_losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        losses, info = real(*args, **kwargs)
        calls["n"] += 1
        # iteration 1 makes 3 calls: 2 micro-batches, and the step's extra forward for its one
        # Gram matrix; poison iteration 2
        if calls["n"] > 3:
            losses = losses.clone()
            losses[1] = float("nan")
        return losses, info

    monkeypatch.setattr(gapo, "ppo_losses", poisoned)
    with pytest.raises(SystemExit, match="iteration 2: the PPO loss of objective 1 is not finite; "
                                         "the last good checkpoint \\(iteration 1\\) is kept in"):
        run(["--method", "gapo", "--save_every", "1"], tiny_toyworld, tmp_path / "run")
    state = __import__("torch").load(tmp_path / "run" / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert state["iteration"] == 1 and len(read_log(tmp_path / "run")) == 1


def test_value_heads_reach_the_score_scale_at_paper_learning_rates(tiny_toyworld, tmp_path):
    """With the paper's learning rates (actor 1e-6, critic 5e-7) the critic is on the score scale
    from the first update: value error (mean |V - Monte Carlo return|) below 0.6 of the mean
    |score| per objective in iterations 2 and 3 (what is left is the spread of scores between
    responses). The old zero-initialised heads stay near 0: their error stays above 0.9 of it."""
    paper = ["--method", "ppo-h", "--iterations", "3", "--actor_lr", "1e-6", "--critic_lr", "5e-7",
             "--batch_size", "16", "--minibatch_size", "8", "--micro_batch_size", "8"]
    ratios = {}
    for init in ("first_rollout", "zero"):
        run(paper + ["--critic_init", init], tiny_toyworld, tmp_path / init)
        log = read_log(tmp_path / init)
        ratios[init] = [[e / abs(s) for e, s in zip(r["value_error"], (r["score_helpful"], r["score_harmless"]))]
                        for r in log[1:]]  # (iterations 2-3, K) value error / |mean score|
    assert max(max(r) for r in ratios["first_rollout"]) < 0.6, ratios
    assert min(min(r) for r in ratios["zero"]) > 0.9, ratios
    state = __import__("torch").load(tmp_path / "first_rollout" / "checkpoint" / "trainer_state.pt",
                                     weights_only=False)
    assert state["method_state"]["value_heads_started"] is True


def test_safe_rlhf_multiplier_steps_every_micro_batch_and_flags_reach_the_update(tiny_toyworld, tmp_path,
                                                                                 monkeypatch):
    calls, flags = [], []
    real_update, real_advantages = gapo.update_lagrange_multiplier, gapo.method_advantages

    def update(state, costs, *args):
        calls.append(len(costs))
        return real_update(state, costs, *args)

    def advantages(*args):
        flags.append(args[5])
        return real_advantages(*args)

    monkeypatch.setattr(gapo, "update_lagrange_multiplier", update)
    monkeypatch.setattr(gapo, "method_advantages", advantages)
    run(["--method", "safe-rlhf", "--iterations", "1", "--ppo_epochs", "2", "--whiten_advantages"],
        tiny_toyworld, tmp_path / "run")
    # batch 4, micro-batches of 2: each episode joins the window once (first PPO epoch), and every
    # micro-batch step updates lambda (the second epoch from the window alone).
    assert calls == [2, 2, 0, 0]
    assert flags == [True] * 4
    saved = __import__("torch").load(tmp_path / "run" / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert len(saved["method_state"]["recent_costs"]) == 4


def test_actor_gradient_norm_is_logged_before_clipping_and_betas_reach_adam(tiny_toyworld, tmp_path):
    import torch
    one = ["--method", "gapo", "--p", "2", "--iterations", "1"]
    run(one + ["--max_grad_norm", "1e-9", "--adam_beta2", "0.95"], tiny_toyworld, tmp_path / "tight")
    run(one + ["--max_grad_norm", "0"], tiny_toyworld, tmp_path / "free")
    run(one + ["--max_grad_norm", "0", "--weight_scale", "raw"], tiny_toyworld, tmp_path / "raw")
    tight, free, raw = (read_log(tmp_path / n)[0] for n in ("tight", "free", "raw"))
    assert tight["actor_clipped"] == 1.0 and free["actor_clipped"] == 0.0
    assert tight["actor_grad_norm"] == free["actor_grad_norm"] > 0  # measured before clipping
    # Raw GAPO p = 2 weights (alpha_i / n_i^2) give a far larger gradient than the sum-one scale.
    assert raw["actor_grad_norm"] > 10 * free["actor_grad_norm"]
    assert raw["raw_weight_sum"] == free["raw_weight_sum"] > 1
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    dcp_to_torch_save(tmp_path / "tight" / "checkpoint" / "optim", tmp_path / "optim.pt")
    saved = torch.load(tmp_path / "optim.pt", weights_only=False)  # {model: flattened state}
    betas = {model: {v for k, v in state.items() if k.endswith(".betas")}
             for model, state in saved.items()}
    assert betas == {"policy": {(0.9, 0.95)}, "critic": {(0.9, 0.95)}}
    paper = cli.parse_config(train.Config, train.PRESETS, ["--preset", "paper"])
    assert (paper.adam_beta1, paper.adam_beta2) == (0.9, 0.95)
    toy = cli.parse_config(train.Config, train.PRESETS, [])
    assert (toy.adam_beta1, toy.adam_beta2) == (0.9, 0.999) and toy.whiten_advantages is False


def test_help_prints_every_field_with_its_meaning_and_default():
    import dataclasses
    result = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines
    comments = cli.field_comments(train.Config)
    for f in dataclasses.fields(train.Config):
        assert f"--{f.name} " in text and comments.get(f.name), f.name  # documented in Config
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert f"{comments[f.name].split()[0]}" in text and f"(default: {default!r})" in text, f.name


def test_nan_before_any_checkpoint_does_not_claim_one(tiny_toyworld, tmp_path, monkeypatch):
    real = gapo.ppo_losses
    monkeypatch.setattr(gapo, "ppo_losses", lambda *a, **k: (real(*a, **k)[0] * float("nan"),
                                                             real(*a, **k)[1]))
    with pytest.raises(SystemExit) as stop:
        run(["--method", "ppo-h"], tiny_toyworld, tmp_path / "run")
    assert "is not finite; no checkpoint was saved yet" in str(stop.value)
    assert "kept" not in str(stop.value)


def test_batch_orders_of_different_seeds_are_not_shifted_copies():
    """Seed s at epoch e + 1 must not replay seed s + 1 at epoch e (a study's seeds are independent;
    seeding by seed + epoch did exactly that), and the order is a deterministic function of
    (seed, position), which resume relies on."""
    n, B = 64, 32  # two batches per pass over the prompts: position p + 2 is one epoch later
    cfg = {seed: cli.parse_config(train.Config, train.PRESETS, ["--seed", str(seed)])
           for seed in range(3)}
    orders = {seed: [runs.batch_indices(cfg[seed], n, p) for p in range(6)] for seed in range(3)}
    assert orders[0][3] == runs.batch_indices(cfg[0], n, 3)  # deterministic
    assert sorted(orders[0][0] + orders[0][1]) == list(range(n))  # the first pass covers every prompt
    shifted = [orders[s][p + 2] == orders[s + 1][p] for s in (0, 1) for p in range(4)]
    assert not any(shifted), shifted


def test_ctrl_c_inside_the_optimizer_write_is_an_interruption_not_a_disk_error(
        tiny_toyworld, tmp_path, capsys, monkeypatch):
    """torch.distributed.checkpoint wraps whatever a rank raised, Ctrl-C included, in its own
    exception; the run must still stop as interrupted (exit 130), keeping the last checkpoint."""
    import traceback
    from torch.distributed.checkpoint.api import CheckpointException
    from scale import distributed
    real, calls = distributed.save_optimizers, []

    def save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint
            raise CheckpointException("save failed", {0: (KeyboardInterrupt(),
                                                          traceback.StackSummary())})
        return real(*args, **kwargs)

    monkeypatch.setattr(distributed, "save_optimizers", save)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        run(["--method", "ppo-h", "--save_every", "1"], tiny_toyworld, out)
    err = capsys.readouterr().err
    assert stop.value.code == 130 and "interrupted; the last good checkpoint (iteration 1)" in err
    assert "free disk space" not in err
    assert runs._checkpoint_error(CheckpointException("x", {0: (AssertionError(), None)})) == \
        "AssertionError"  # an empty message still names what failed


@pytest.mark.parametrize("method", ["gapo", "mgda"])
def test_one_gram_matrix_per_optimizer_step_whatever_the_micro_batch(tiny_toyworld, tmp_path,
                                                                      method):
    """The alpha of an optimizer step comes from the Gram matrix of its whole minibatch: one step
    of 16 samples in micro-batches of 16, 8 or 4 gives the same alpha, weights, gradient norms and
    step (to float tolerance). Before, each micro-batch solved its own Gram matrix: (0.023, 0.977)
    against (0, 1) on this world."""
    one = ["--method", method, "--p", "2", "--iterations", "1", "--batch_size", "16",
           "--minibatch_size", "16", "--ppo_epochs", "1"]
    logs = {}
    for micro in (16, 8, 4):
        run(one + ["--micro_batch_size", str(micro)], tiny_toyworld, tmp_path / f"m{micro}")
        logs[micro] = read_log(tmp_path / f"m{micro}")[0]
    for micro in (8, 4):
        for key in ("alpha", "weights", "grad_norms", "actor_grad_norm"):
            torch.testing.assert_close(torch.tensor(logs[micro][key]), torch.tensor(logs[16][key]),
                                       rtol=1e-4, atol=1e-6, msg=f"{key}, micro-batch {micro}")


def test_resume_of_a_folder_that_does_not_exist_is_one_sentence(tiny_toyworld, tmp_path):
    """A typo in --out_dir with --resume stops, non-zero, instead of starting a new run there."""
    missing = tmp_path / "no-such-run"
    with pytest.raises(SystemExit, match="--resume: .*no-such-run does not exist, so there is no "
                                         "run to continue"):
        run(["--resume"], tiny_toyworld, missing)
    assert not missing.exists()


def test_keep_checkpoints_keeps_the_last_n_by_iteration_and_each_is_evaluable(tiny_toyworld,
                                                                              tmp_path):
    """--keep_checkpoints 3 --save_every 1: the latest checkpoint (resumable) and checkpoint-3,
    checkpoint-2; checkpoint-1 pruned. A kept one is a complete checkpoint evaluate.py reads."""
    from evals.targets import resolve_run
    out = tmp_path / "run"
    flags = ["--iterations", "6", "--save_every", "1", "--keep_checkpoints", "3"]
    run(flags + ["--stop_after", "4"], tiny_toyworld, out)
    kept = sorted(name for name in os.listdir(out) if name.startswith("checkpoint"))
    assert kept == ["checkpoint", "checkpoint-2", "checkpoint-3"]
    assert runs.checkpoint_iteration(out) == 4
    target = resolve_run(str(out / "checkpoint-2"))
    assert target.progress == (2, 6) and target.checkpoint.endswith("checkpoint-2")
    # the folder with its history still resumes, and a new start there is refused as before
    run(flags + ["--resume"], tiny_toyworld, out)
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint")) == [
        "checkpoint", "checkpoint-4", "checkpoint-5"]
    assert runs.checkpoint_iteration(out) == 6
    with pytest.raises(SystemExit, match="already holds a run"):
        run(["--iterations", "6"], tiny_toyworld, out)
