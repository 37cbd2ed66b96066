"""The toy world: a tiny helpful-vs-harmless conversation world that trains on a laptop; this file
builds it, caches it and checks it.

What it does
- The world's text (topics, prompts, the response grammar, the ground-truth judge and the
  preference pairs it labels) is in worlds/toytext.py; the names other code reads from here
  (train_prompts, test_prompts, judge, ground_truth_rates, harmful_steps) are imported from there.
- Builds, into one cached folder: a word-level Hugging Face tokenizer; an SFT policy (a tiny
  MistralForCausalLM, the paper's policy architecture) trained on a deliberately mixed response
  distribution, so it over-refuses some benign prompts and complies with some harmful ones; a
  reward model trained on helpfulness-only pairs (compliance beats refusal even on harmful
  prompts) and a cost model trained on safety pairs plus safe/unsafe labels (cost > 0 means
  unsafe, as for the beaver cost model), both with the beaver score-model class of model.py and
  the trainer of worlds/score_training.py.
- prepare(cfg): the World a run trains in (the contract in worlds/__init__.py): the checked (or
  built) world's models, its train prompts, its held-out prompts interleaved (test_texts), its
  judge.
- Writes a manifest with the build's figures and the SHA-256 of every file, and a fingerprint of
  the world's text and recipe (world_hash), so a stale or damaged world is rebuilt, never used.
Both score models start from the SFT policy's backbone (as InstructGPT and Safe RLHF do); from a
random init they did not learn in the time budget whether steps fit the prompt.

The default world ships built in worlds/toy/ (1.3 MB, its manifest holds the SHA-256 of every
file): every machine trains and evaluates in the same world, and nothing is built on first use. A
rebuild is seeded but not bit-identical across machines (float rounding in training differs
between CPUs and library versions), which is why the built world is shipped rather than rebuilt.

Run:  python -m worlds.toyworld                  # check the shipped world and print its figures
      python -m worlds.toyworld --force          # rebuild it in place (about a minute on 2 cores;
                                                 # git checkout worlds/toy restores the shipped one)
      python -m worlds.toyworld --out DIR [--seed 0] [--size default|tiny]   # build elsewhere
Left out on purpose: learning-rate tuning per size beyond the two recipes in SIZES, GPU builds
(the models are tiny; CPU threads are pinned to one), and what worlds/toytext.py leaves out.
"""
import argparse
import fcntl
import hashlib
import json
import os
import resource
import shutil
import sys
import time

import numpy as np
import torch

# The world's text (worlds/toytext.py).
from worlds import World
from worlds.toytext import (BENIGN, CLASS, HARD, HARMFUL, REFUSALS, SFT_MIX,
                            SFT_NSTEPS, TEMPLATES, VAGUE, ToyPrompt, ground_truth_rates,
                            harmful_steps, make_pairs, make_response, sft_response,
                            test_prompts, train_prompts, world_words)

FORMAT_VERSION = 1
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy")  # the default world
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


# ---------------------------------------------------------------------------------------------
# Tokenizer: one id per word, a bos like Mistral's, and a chat template
# data.format_policy_prompt uses.
CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'] }} "
                 "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def build_tokenizer(path=None):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + world_words())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # "ASSISTANT:" is split off even when a decoded response (no leading space) is glued to it.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("ASSISTANT:", "isolated"),
                                                 pre_tokenizers.WhitespaceSplit()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", 1)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                 eos_token="</s>", unk_token="<unk>",
                                 clean_up_tokenization_spaces=False,  # keep " ." as is
                                 model_max_length=128, chat_template=CHAT_TEMPLATE)
    if path is not None:
        hf.save_pretrained(path)
        # the class name transformers 4 also knows
        cfg_path = os.path.join(path, "tokenizer_config.json")
        cfg = json.load(open(cfg_path)) | {"tokenizer_class": "PreTrainedTokenizerFast"}
        json.dump(cfg, open(cfg_path, "w"), indent=2)
    return hf


# ---------------------------------------------------------------------------------------------
# SFT policy: next-token loss on response tokens only (prompt tokens are context, label -100).
def train_sft(tok, prompts, cfg, steps, batch_size, lr, seed, progress=True):
    from tqdm.auto import tqdm
    from transformers import MistralConfig, MistralForCausalLM
    from data import format_policy_prompt

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    policy = MistralForCausalLM(MistralConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                              bos_token_id=tok.bos_token_id,
                                              eos_token_id=tok.eos_token_id,
                                              tie_word_embeddings=False, **cfg))
    prompt_ids = [tok(format_policy_prompt(tok, p.text))["input_ids"] for p in prompts]
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    # disable=None: no bar when stderr is not a terminal (a log file would collect every redraw)
    bar = tqdm(range(steps), desc="sft policy", disable=None if progress else True, leave=False)
    for _ in bar:
        idx = rng.integers(len(prompts), size=batch_size)
        resp = tok([sft_response(rng, prompts[i]) for i in idx],
                   add_special_tokens=False)["input_ids"]
        seqs = [prompt_ids[i] + r + [tok.eos_token_id] for i, r in zip(idx, resp)]
        T = max(map(len, seqs))
        ids = torch.full((batch_size, T), tok.pad_token_id)  # (B, T), right padded
        labels = torch.full((batch_size, T), -100)
        for b, (i, s) in enumerate(zip(idx, seqs)):
            ids[b, :len(s)] = torch.tensor(s)
            # response + eos
            labels[b, len(prompt_ids[i]):len(s)] = torch.tensor(s[len(prompt_ids[i]):])
        loss = policy(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(),
                      labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return policy.eval(), loss.item()


@torch.no_grad()
def sample_responses(policy, tok, prompts, temperature=1.0, max_new_tokens=32, seed=0):
    """Sampled response texts (no leading space, as decode gives them), one per prompt,
    reproducible on CPU."""
    from data import format_policy_prompt

    texts = [format_policy_prompt(tok, p.text if isinstance(p, ToyPrompt) else p) for p in prompts]
    side, tok.padding_side = tok.padding_side, "left"  # generation appends on the right
    enc = tok(texts, return_tensors="pt", padding=True)
    tok.padding_side = side
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = policy.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                              max_new_tokens=max_new_tokens,
                              pad_token_id=tok.pad_token_id)  # (B, P + R)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------
# Score models: trained on the world's own preference pairs (toytext.make_pairs), then shown.
def teaching_table(reward, cost, prompts, reps, rng):
    """Mean reward and cost per response kind and prompt class on held-out prompts, plus the cost
    sign accuracy over all of them: the table that shows what the learned scorers believe."""
    from rewards import score_texts

    rows = [("helpful", 1), ("helpful", 2), ("helpful", 4)]
    rows += [(k, None) for k in list(CLASS)[1:] + HARD]
    items = [(f"{k} {n}" if n else k, p, make_response(rng, p.topic, k, n)) for k, n in rows
             for p in prompts for _ in range(reps)]
    texts, resps = [p.text for _, p, _ in items], [r for _, _, r in items]
    r = score_texts(reward, texts, resps, batch_size=256)
    c = score_texts(cost, texts, resps, batch_size=256)
    unsafe = torch.tensor([harmful_steps(x) > 0 for x in resps])
    table = {}
    for name in dict.fromkeys(n for n, _, _ in items):
        for harmful in (False, True):
            sel = torch.tensor([n == name and p.harmful == harmful for n, p, _ in items])
            means = [round(r[sel].mean().item(), 2), round(c[sel].mean().item(), 2)]
            table.setdefault(name, {})["harmful" if harmful else "benign"] = means
    return table, ((c > 0) == unsafe).float().mean().item()


def train_scorers(tok, policy, out, sz, seed, progress):
    """Reward and cost models (beaver LlamaModelForScore), each initialised from the SFT policy's
    backbone (as InstructGPT and Safe RLHF do: a random init never learned whether steps fit the
    prompt in our budget) and trained with score_training.train_score_model on fresh pairs per
    phase with a falling learning rate. Saved to out/reward and out/cost, each with the
    tokenizer."""
    from formats.models import new_score_model
    from rewards import Scorer
    from worlds.score_training import pair_accuracy, train_score_model

    rng = np.random.default_rng(seed + 2)
    train, test = train_prompts(seed), test_prompts(seed)
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
            "rms_norm_eps", "rope_parameters", "rope_theta", "pad_token_id", "bos_token_id",
            "eos_token_id")  # rope_theta: transformers 4
    same = {k: v for k in keys if (v := getattr(policy.config, k, None)) is not None}
    figures = {}
    for name, objective in (("reward", "helpful"), ("cost", "safety")):
        # Llama and Mistral share their weight layout (no sliding window here)
        model = new_score_model(same)
        model.model.load_state_dict(policy.model.state_dict())
        for i, (n_pairs, lr) in enumerate(sz[name]):
            fit = train_score_model(model, tok, make_pairs(train, n_pairs, rng, objective),
                                    kind=name, epochs=1, lr=lr, batch_size=32, device="cpu",
                                    progress=progress, seed=seed + i, max_length=128)
        model.save_pretrained(os.path.join(out, name))
        build_tokenizer(os.path.join(out, name))
        scorer = Scorer(model.eval().requires_grad_(False), tok, name)
        held_out = make_pairs(test, sz["eval_pairs"], rng, objective)
        figures[name] = {"params": sum(p.numel() for p in model.parameters()),
                         "final_loss": round(fit["loss"], 4),
                         "pair_accuracy": pair_accuracy(scorer, held_out, batch_size=256,
                                                        max_length=128),
                         "scorer": scorer}
    table, sign = teaching_table(figures["reward"].pop("scorer"), figures["cost"].pop("scorer"),
                                 test, sz["reps"], rng)
    figures["cost"]["sign_accuracy"] = sign
    return figures, table


# ---------------------------------------------------------------------------------------------
# Build, cache, validate.
_CAUSAL = dict(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
# "tiny" is for tests: seconds, no accuracy targets. reward/cost: (pairs, learning rate) per phase
SIZES = {
    "default": dict(policy=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                **_CAUSAL),
                    sft_steps=300, sft_batch=64, sft_lr=1e-2,
                    reward=[(5000, 1e-3), (5000, 5e-4), (5000, 2e-4)],
                    cost=[(2500, 7e-4)], eval_pairs=1000, reps=3, samples=8),
    "tiny": dict(policy=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, **_CAUSAL),
                 sft_steps=15, sft_batch=16, sft_lr=3e-3, reward=[(48, 1e-3)], cost=[(48, 1e-3)],
                 eval_pairs=32, reps=1, samples=1),
}
PATHS = {"tokenizer": "tokenizer", "sft": "sft", "reward": "reward", "cost": "cost"}


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root)
                  for f in fs if f != "manifest.json")


def default_dir(size="default"):
    """The shipped world for the default size; other sizes (tests) are built in cache/, never over
    the shipped files."""
    return SHIPPED if size == "default" else os.path.join("cache", f"toyworld-{size}")


def toy_paths(path=SHIPPED):
    """Absolute paths of the built world's parts: {"tokenizer", "sft", "reward", "cost"}."""
    return {k: os.path.abspath(os.path.join(path, v)) for k, v in PATHS.items()}


def test_texts(seed=0):
    """The held-out prompts' text, benign and harmful interleaved so that a prefix keeps both
    classes (seed 0: the split train.py trains on)."""
    test = test_prompts(seed)
    benign = [p.text for p in test if not p.harmful]
    harmful = [p.text for p in test if p.harmful]
    return ([p for pair in zip(benign, harmful) for p in pair] + benign[len(harmful):]
            + harmful[len(benign):])


def prepare(cfg):
    """The toy world of a run (the contract in worlds/__init__.py): the world at cfg.toy_dir (the
    shipped one for the default size), checked, or built when it is missing or stale (a minute,
    once); its own train and test prompts, and its judge."""
    toy_dir = cfg.toy_dir or default_dir(cfg.toy_size)
    ensure_toyworld(toy_dir, size=cfg.toy_size)
    paths = toy_paths(toy_dir)
    return World("toy", paths["sft"], paths["reward"], paths["cost"],
                 train_prompts=[p.text for p in train_prompts()], test_prompts=test_texts(),
                 ground_truth=True)


def world_hash():
    """A fingerprint of the world's text and recipe, so that a cached world built from an older
    grammar (other step phrases, templates, mixture or sizes) is rebuilt rather than judged by the
    new one."""
    text = json.dumps([BENIGN, HARMFUL, TEMPLATES, REFUSALS, VAGUE, SFT_MIX, SFT_NSTEPS, SIZES],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_toyworld(path, seed=0, size="default"):
    """None when the folder holds a complete world built with this seed and size, else why not."""
    try:
        with open(os.path.join(path, "manifest.json")) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return "manifest.json is missing or unreadable"
    if (m.get("format_version"), m.get("seed"), m.get("size")) != (FORMAT_VERSION, seed, size):
        return (f"it was built as version {m.get('format_version')}, seed {m.get('seed')}, "
                f"size {m.get('size')}")
    if m.get("world_hash") != world_hash():
        return ("it was built from another version of the world's text or recipe "
                "(worlds/toytext.py or toyworld.py changed since)")
    needed = ([f"{PATHS[k]}/{f}" for k in PATHS for f in TOKENIZER_FILES]
              + [f"{PATHS[k]}/{f}" for k in ("sft", "reward", "cost")
                 for f in ("config.json", "model.safetensors")])
    files = m.get("files", {})
    for rel in needed + sorted(files):
        full = os.path.join(path, rel)
        if rel not in files or not os.path.isfile(full) or _sha256(full) != files[rel]:
            return f"{rel} is missing or changed"
    return None


def build_toyworld(out, seed=0, size="default", progress=True):
    """Build every part into the folder `out` (which must not exist) and write its manifest."""
    import transformers
    t0, c0, threads = time.time(), time.process_time(), torch.get_num_threads()
    # tiny models: a 2nd thread gains ~nothing, and on a busy CPU it is 10x slower
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    sz = SIZES[size]
    try:
        tok = build_tokenizer(os.path.join(out, PATHS["tokenizer"]))
        policy, sft_loss = train_sft(tok, train_prompts(seed), sz["policy"], sz["sft_steps"],
                                     sz["sft_batch"], sz["sft_lr"], seed, progress)
        policy.generation_config.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                        max_new_tokens=32)
        policy.save_pretrained(os.path.join(out, PATHS["sft"]))
        build_tokenizer(os.path.join(out, PATHS["sft"]))
        rates = {}
        for split, prompts in (("train", train_prompts(seed)), ("test", test_prompts(seed))):
            prompts = prompts * sz["samples"]
            responses = sample_responses(policy, tok, prompts, seed=seed)
            rates[split] = ground_truth_rates(prompts, responses)
        sft_seconds = round(time.time() - t0, 1)
        scorers, table = train_scorers(tok, policy, out, sz, seed, progress)
    finally:
        torch.set_num_threads(threads)
    manifest = {"format_version": FORMAT_VERSION, "world_hash": world_hash(), "seed": seed,
                "size": size, "paths": PATHS,
                "vocab_size": len(tok), "n_train_prompts": len(train_prompts(seed)),
                "n_test_prompts": len(test_prompts(seed)),
                "policy": {"architecture": "MistralForCausalLM", **sz["policy"],
                           "params": sum(p.numel() for p in policy.parameters()),
                           "sft_loss": round(sft_loss, 4)},
                "sft_rates_temperature_1": rates, "reward": scorers["reward"],
                "cost": scorers["cost"],
                "teaching_table_reward_cost": table, "build_seconds": round(time.time() - t0, 1),
                "sft_seconds": sft_seconds,
                "cpu_seconds": round(time.process_time() - c0, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    manifest["files"] = {f: _sha256(os.path.join(out, f)) for f in _files(out)}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def remove_stale_builds(path):
    """Delete <path>.building-<pid> folders whose process is gone (a killed build); the caller
    holds the build lock, so a live builder elsewhere keeps its folder."""
    parent, name = os.path.split(os.path.abspath(path))
    for entry in os.listdir(parent):
        pid = entry[len(name) + len(".building-"):]
        if not (entry.startswith(name + ".building-") and pid.isdigit()):
            continue
        try:
            os.kill(int(pid), 0)
            alive = int(pid) != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:  # another user's live process
            alive = True
        if not alive:
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def ensure_toyworld(path=SHIPPED, seed=0, size="default", progress=True, force=False):
    """The manifest of a valid toy world at `path`, building it first when it is missing, partial,
    stale (or force). Builds in a temporary folder and renames it into place, so an interrupted
    build never looks valid; a lock file beside it makes concurrent callers (torchrun ranks) wait
    and then reuse it."""
    if size not in SIZES:
        raise ValueError(f"unknown toy world size {size!r}; use one of {', '.join(SIZES)}.")
    path = os.path.normpath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        remove_stale_builds(path)
        problem = "a rebuild was asked for" if force else check_toyworld(path, seed, size)
        if problem is None:
            if progress:
                print(f"toyworld: the toy world at {path} is valid (seed {seed}, size {size})")
            with open(os.path.join(path, "manifest.json")) as f:
                return json.load(f)
        known = set(PATHS.values()) | {"manifest.json"}
        if os.path.exists(path) and not (os.path.isdir(path) and set(os.listdir(path)) <= known):
            strays = "it is a file" if not os.path.isdir(path) else "it holds " + ", ".join(
                sorted(set(os.listdir(path)) - known)[:3]) + f" besides a toy world, and {problem}"
            raise ValueError(f"{path} is not a toy world folder ({strays}), so it is not rebuilt "
                             f"over; delete it, or pass another folder (--toy_dir to train.py, "
                             f"--out to python -m worlds.toyworld).")
        if progress:
            again = "re" if os.path.exists(path) else ""
            print(f"toyworld: {again}building the toy world in {path}"
                  f"{f' ({problem})' if again else ''}: tokenizer, SFT policy, reward and cost "
                  "models (about a minute on a 2-core CPU, once)")
        tmp = f"{path}.building-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        manifest = build_toyworld(tmp, seed, size, progress)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    if progress:
        print(describe(manifest))
    return manifest


def describe(m):
    """The build's figures as printable lines."""
    pct = lambda x: f"{100 * x:.1f}%"
    lines = [f"toy world: seed {m['seed']}, size {m['size']}, vocab {m['vocab_size']}, prompts "
             f"{m['n_train_prompts']} train / {m['n_test_prompts']} test, built in "
             f"{m['build_seconds']} s, peak memory {m['peak_rss_mb']} MB"]
    for split, r in m["sft_rates_temperature_1"].items():
        lines.append(f"SFT policy ({m['policy']['params']} params) at temperature 1 on {split} "
                     f"prompts: harmful compliance {pct(r['harmful_compliance'])}, over-refusal "
                     f"{pct(r['over_refusal'])}, benign helpful {pct(r['benign_helpful'])}, "
                     f"kinds {r['kinds']}")
    lines.append(f"reward model: held-out pair accuracy {pct(m['reward']['pair_accuracy'])}; "
                 f"cost model: held-out pair accuracy {pct(m['cost']['pair_accuracy'])}, sign "
                 f"accuracy {pct(m['cost']['sign_accuracy'])}")
    lines.append(f"{'held-out mean scores':22s} {'benign R':>9s} {'benign C':>9s} "
                 f"{'harmful R':>9s} {'harmful C':>9s}")
    for kind, v in m["teaching_table_reward_cost"].items():
        lines.append(f"{kind:22s} {v['benign'][0]:9.2f} {v['benign'][1]:9.2f} "
                     f"{v['harmful'][0]:9.2f} {v['harmful'][1]:9.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Build the toy helpful-vs-harmless world (tokenizer, "
                                 "SFT policy, reward and cost models) or check the cached one, "
                                 "and print its figures.")
    ap.add_argument("--out", default=SHIPPED,
                    help="folder of the built world (default: the shipped one, worlds/toy)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the prompt split, data and model weights")
    ap.add_argument("--size", default="default", choices=list(SIZES),
                    help="'tiny' builds in seconds, for tests")
    ap.add_argument("--force", action="store_true",
                    help="rebuild even when the cached world is valid")
    args = ap.parse_args()
    try:
        cached = not args.force and check_toyworld(args.out, args.seed, args.size) is None
        manifest = ensure_toyworld(args.out, args.seed, args.size, force=args.force)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    if cached:  # a fresh build has printed its figures already
        print(describe(manifest))
    elif os.path.abspath(args.out) == SHIPPED:
        print("note: this rebuilt world replaces the shipped one in worlds/toy and differs from it "
              "on other machines (float rounding); `git checkout worlds/toy` restores the shipped "
              "world.")
