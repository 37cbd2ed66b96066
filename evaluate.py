"""Evaluate checkpoints: sample on held-out prompts, score, print Table 1, draw the Pareto front.

    python evaluate.py                          # every run under runs/, plus the SFT baseline
    python evaluate.py runs/gapo-p2-s0 runs/ppo-h-s0 --limit 40
    python evaluate.py runs/study --soup auto   # every run in runs/study, + Rewarded Soups
    python evaluate.py RUNS... --soup runs/ppo-h-s0 runs/ppo-s-s0 --soup_lambdas 0.2,0.4,0.6,0.8
    python evaluate.py runs/my-run --prompts PKU-Alignment/PKU-SafeRLHF --prompt_split test
    python evaluate.py runs/smol                # smol runs: the real prompt sets, refusals
    python evaluate.py runs/smol --judge gpt-4o --judge_url https://api.openai.com/v1

The paper's Sec. 4.2 and Table 1 (docs/decisions.md, "Evaluation"). Each run's train_config.json
gives the models and generation settings; prompts are the toy world's test prompts for toy runs,
else the run's source with --prompt_split (or --prompts); sampling uses a fixed seed per batch, so
every checkpoint sees the same noise. Helpful = mean reward, Harmless = mean -cost, Avg = their
mean, Harmless ratio = share with cost <= 0. On the toy world the ground truth (toyworld.judge)
stands beside the learned scores: harmful compliance, over-refusal, truly safe share and how often
the cost's sign agrees with it, so reward hacking shows as a gap. Runs that differ only by seed are
one row, mean ± sample std. Soups theta(lam) = lam theta_ppo-h + (1 - lam) theta_ppo-s are
interpolated in memory (merged LoRA weights for LoRA runs). Generations and scores are cached per
checkpoint in <out>/cache/ (keyed by the checkpoint's files and time stamps, scorers, prompts,
limit, seed, generation settings). Writes <out>/table.csv, runs.csv, results.json and pareto.png
(non-dominated front, hypervolume per method family).

Smol runs (or any run with --eval_sets) are evaluated on the real prompt sets instead (evals/:
red-team, AlpacaEval, XSTest; --limit applies per set): the learned scores over all of them, plus
over-refusal, compliance, length and empty answers (evals/chat.py), and samples.md with a few
answers of every model. --judge MODEL --judge_url URL adds the paper's pairwise judgement against
the SFT model (evals/judge.py: both answer orders, a win only when both agree, cached per call;
--judge_dry_run counts the calls and tokens first): judge.json, judge.csv, judge.png.

Left out on purpose: the critic. The pure half (metrics, aggregation over seeds, dominance,
hypervolume, soup weights, the printed tables, the plot) is evals/tables.py; this file finds the
checkpoints, generates, scores and caches.
"""
import argparse
import hashlib
import json
import os
import sys
import textwrap
import time
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError

from evals.tables import (GEN_FIELDS, METHOD_ORDER, METRICS, NOT_METHOD, TOY_METRICS,  # noqa: F401
                          WIDTH, aggregate, dominates, format_table, group_labels, hypervolume_2d,
                          pareto_front, plot_pareto, reference_point, response_metrics, run_label,
                          soup_state_dict, sort_key, toy_metrics, write_outputs)


# ----------------------------------------------------------------------------- finding checkpoints

@dataclass
class Target:
    name: str  # what the user sees: the run folder, "sft", "soup λ_h=0.4 (ppo-h-s0 + ppo-s-s0)"
    # train_config.json (soups: the PPO-H run's, with method "soup" and pref "lam,1-lam")
    config: dict
    checkpoint: str = ""  # checkpoint folder ("" for sft)
    soup: tuple = ()  # (ppo-h checkpoint, ppo-s checkpoint) for a soup
    lam: float = None
    group: str = ""  # its table row (group_labels)
    progress: tuple = ()  # (iteration of the checkpoint, iterations planned), when known
    sft: str = ""  # name of the SFT target it is compared with (judge, samples)


def find_runs(root):
    """Every run folder (holding train_config.json) below root; run folders are not searched
    further."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"there is no {root}/ folder with runs; train one with python "
                                f"train.py or pass run folders.")
    found = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = [] if "train_config.json" in files else sorted(subdirs)
        found += [folder] if "train_config.json" in files else []
    return found


def resolve_run(path):
    """A run folder or its checkpoint folder -> Target; anything else -> one clear sentence."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist; pass a run folder written by train.py.")
    for ckpt in (os.path.join(path, "checkpoint"), path):
        if (os.path.isdir(os.path.join(ckpt, "policy"))
                and os.path.isfile(os.path.join(ckpt, "train_config.json"))):
            with open(os.path.join(ckpt, "train_config.json")) as f:
                cfg = json.load(f)
            run = os.path.normpath(path if ckpt != path else os.path.dirname(os.path.abspath(path)))
            import runs  # the checkpoint's files.json: sizes (a cut file) and the iteration reached
            runs.check_checkpoint(ckpt)
            return Target(os.path.basename(run) or path, cfg, checkpoint=os.path.abspath(ckpt),
                          progress=checkpoint_progress(ckpt, cfg))
    if os.path.isfile(os.path.join(path, "train_config.json")):
        raise ValueError(f"{path} is a run without a saved checkpoint yet; let train.py finish or "
                         f"resume it with python train.py --out_dir {path} --resume.")
    raise ValueError(f"{path} is not a run folder or checkpoint (no checkpoint/policy and "
                     f"train_config.json in it); pass a folder written by train.py.")


def checkpoint_progress(ckpt, cfg):
    """(iteration reached, iterations planned) from the checkpoint's files.json; () when unknown
    (checkpoints saved before files.json existed, with iterations given by --epochs)."""
    try:
        with open(os.path.join(ckpt, "files.json")) as f:
            saved = json.load(f)
        reached, total = saved["iteration"], saved.get("iterations") or cfg.get("iterations")
    except (OSError, ValueError, KeyError):
        return ()
    return (reached, total) if total else ()


def ensure_toy_models(cfg, name):
    """A toy run's models live in the toy world's cache: rebuild it, as train.py does, when it was
    deleted or damaged (the build is seeded, so it is the world the run trained in). A smol run's
    parts are only checked: preparing them needs the HH-RLHF data, so a missing one is an error."""
    if cfg.get("preset") == "smol":  # prepared once by train.py; rebuilding needs the HH data
        for key in ("policy", "reward_model", "cost_model"):
            if not os.path.isdir(str(cfg.get(key))):
                raise FileNotFoundError(
                    f"its {key} {cfg.get(key)} is gone; prepare the smol world again with python "
                    f"-m worlds.smol --out {os.path.dirname(str(cfg.get(key)))} --data DATA.")
        return
    from worlds import toyworld
    root = os.path.dirname(str(cfg.get("policy", "")))
    if not root or {k: cfg.get(k + "_model", cfg.get("policy")) for k in ("reward", "cost")} != \
            {k: toyworld.toy_paths(root)[k] for k in ("reward", "cost")}:
        return  # not the toy world's models
    size = cfg.get("toy_size", "default")
    problem = toyworld.check_toyworld(root, size=size)
    if problem is not None:
        print(f"{name}: the toy world it was trained in ({root}) needs a rebuild ({problem}); "
              f"rebuilding it")
        toyworld.ensure_toyworld(root, size=size)


def soup_targets(h, s, lambdas):
    """Targets for theta(lam) between a PPO-H and a PPO-S checkpoint trained from the same start."""
    for t, want in ((h, "ppo-h"), (s, "ppo-s")):
        if t.config.get("method") != want:
            raise ValueError(f"soup: {t.name} was trained with --method "
                             f"{t.config.get('method')}, not {want}; "
                             f"pass --soup PPO_H_RUN PPO_S_RUN in that order.")
    if ((h.config.get("policy"), h.config.get("lora_r"))
            != (s.config.get("policy"), s.config.get("lora_r"))):
        raise ValueError(f"soup: {h.name} and {s.name} start from different policies or LoRA "
                         f"ranks; a soup needs two fine-tunes of the same starting model.")
    return [Target(f"soup λ_h={lam:g} ({h.name} + {s.name})",
                   {**h.config, "method": "soup", "pref": f"{lam:g},{1 - lam:g}"},
                   soup=(h.checkpoint, s.checkpoint), lam=lam) for lam in lambdas]


def auto_soup_pairs(targets):
    """PPO-H and PPO-S runs that agree on every field but the method and folder (same seed, same
    setup)."""
    ignored = (NOT_METHOD - {"seed"}) | {"method"}
    key = lambda t: json.dumps({k: v for k, v in t.config.items() if k not in ignored},
                               sort_keys=True)
    ppo_s = {key(t): t for t in targets if t.config.get("method") == "ppo-s"}
    return [(t, ppo_s[key(t)]) for t in targets
            if t.config.get("method") == "ppo-h" and key(t) in ppo_s]


# --------------------------------------------------------------------- generation, scoring, caching

@dataclass
class Context:
    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype
    # scorers and prompt sets, loaded once for all checkpoints
    cache: dict = field(default_factory=dict)


def eval_sets(ctx, cfg):
    """(folder, set names) when the run is evaluated on the real prompt sets (evals/), else None:
    smol runs by default, any run with --eval_sets; --judge_sets' .jsonl files are added (a run
    is then evaluated on them too, so the judge has answers to compare)."""
    a = ctx.args
    judge_files = [n for n in (a.judge_sets_parsed or {}) if n.endswith(".jsonl")]
    smol = cfg.get("preset") == "smol" and not a.prompts
    if not (a.eval_sets or judge_files or smol):
        return None
    from evals.prompt_sets import STANDARD_SETS
    names = ([n for n in a.eval_sets.split(",") if n] if a.eval_sets
             else list(STANDARD_SETS) if smol else [])
    names += [n for n in judge_files if n not in names]
    from worlds.smol import eval_folder
    return a.eval_data or eval_folder(cfg.get("smol_data") or "data"), names


def prompt_set(ctx, cfg):
    """(name, raw prompts, kind) of a run's evaluation set, kind "toy", "sets" (the real prompt
    sets; their EvalPrompt rows are in ctx.cache["rows", name]) or "". The toy world's test
    prompts interleave benign and harmful ones, so --limit keeps both classes; --limit applies
    to each real set."""
    a = ctx.args
    sets = eval_sets(ctx, cfg)
    if sets:
        key = ("sets", sets[0], *sets[1], a.limit)
        if key not in ctx.cache:
            from evals.prompt_sets import load_eval_sets
            rows = load_eval_sets(*sets, limit=a.limit)
            name = f"{', '.join(sets[1])} ({sets[0]})"
            ctx.cache["rows", name] = rows
            ctx.cache[key] = (name, [r.prompt for r in rows], "sets")
        return ctx.cache[key]
    source = a.prompts or (cfg.get("prompts") or "toy")
    if not a.prompts and source != "toy" and os.path.isfile(source):
        raise ValueError(f"the run trained on the file {source}, which has no held-out split; "
                         f"pass --prompts.")
    key = ("prompts", source, a.prompt_split, a.limit)
    if key not in ctx.cache:
        if source == "toy":
            from evals.heldout import toy_test_prompts
            prompts, name = toy_test_prompts(a.limit), "toy world test prompts"
        else:
            from data import load_prompts
            prompts = load_prompts(source, split=a.prompt_split, limit=a.limit)
            name = source if os.path.isfile(source) else f"{source} ({a.prompt_split})"
        if not prompts:
            raise ValueError(f"the prompt set {source} is empty; give --prompts a file or data set "
                             f"with prompts.")
        ctx.cache[key] = (name, prompts, "toy" if source == "toy" else "")
    return ctx.cache[key]


def fingerprint(path):
    """What makes a cached result stale: a local folder's weight/config files (name, size, mtime),
    or a Hub id."""
    if not os.path.isdir(path):
        return [path]
    files = sorted(f for f in os.listdir(path)
                   if f.endswith((".safetensors", ".bin", ".pt", ".json")))
    stat = lambda f: os.stat(os.path.join(path, f))
    return [os.path.abspath(path)] + [(f, stat(f).st_size, stat(f).st_mtime) for f in files]


def load_eval_policy(cfg, checkpoint, ctx, merged=False):
    """(policy in eval mode, tokenizer): the checkpoint's policy (or the SFT start).

    A LoRA checkpoint is evaluated UNMERGED, as training ran it: bf16 base plus float32 adapters.
    Merging into a bf16 base rounds W + s B A back to bf16 and loses the small updates
    (docs/decisions.md). merged=True (soups, which interpolate whole weights): float32 weights,
    LoRA merged in float32, computing in ctx.dtype under autocast (model.master_weights), so the
    interpolation is not rounded either."""
    from model import _peft, load_policy, load_tokenizer
    path = os.path.join(checkpoint, "policy") if checkpoint else cfg["policy"]
    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        from peft import PeftModel
        base = load_policy(cfg["policy"], ctx.device, ctx.dtype, master=merged)
        policy = _peft(PeftModel.from_pretrained, base, path)
        policy = policy.merge_and_unload() if merged else policy
    else:
        policy = load_policy(path, ctx.device, ctx.dtype, master=merged)
    tokenizer = load_tokenizer(path if os.path.isfile(os.path.join(path, "tokenizer_config.json"))
                               else cfg["policy"])
    return policy.eval().requires_grad_(False), tokenizer


def sample_and_score(ctx, policy, tokenizer, cfg, prompts, desc):
    """Responses for every prompt x samples (batched, seeded per batch), their reward and cost
    (evals/heldout.py, which train.py's --eval_every shares)."""
    from tqdm import tqdm
    from evals import heldout
    from model import load_score_model
    from rewards import Scorer
    a = ctx.args
    scorers = []
    # loaded once, and before sampling, so a missing scorer fails fast
    for name in ("reward", "cost"):
        path = cfg[name + "_model"]
        if ("scorer", path) not in ctx.cache:
            ctx.cache["scorer", path] = Scorer(*load_score_model(path, ctx.device, ctx.dtype), name)
        scorers.append(ctx.cache["scorer", path])
    bar = lambda batches: tqdm(batches, desc=desc, leave=False, disable=None)
    raw, responses = heldout.sample(policy, tokenizer, prompts, [cfg[k] for k in GEN_FIELDS],
                                    a.samples_per_prompt, a.batch_size, a.seed, progress=bar)
    return {"prompts": raw, "responses": responses,
            **heldout.score(scorers, raw, responses, a.batch_size)}


def evaluate_targets(ctx, targets, loader):
    """Rows for targets sharing one loader (the SFT, a run, or the lambdas of one soup), from the
    cache when it has them; loader(target) -> (policy, tokenizer[, sd_h, sd_s]) runs only when
    something is missing."""
    rows, loaded, a = [], None, ctx.args
    for t in targets:
        name, prompts, kind = prompt_set(ctx, t.config)
        checkpoints = [t.checkpoint] if t.checkpoint else list(t.soup)  # none for the SFT start
        ident = {"models": [fingerprint(p) for c in checkpoints
                            for p in (c, os.path.join(c, "policy"))]
                 or fingerprint(t.config["policy"]), "lam": t.lam,
                 "prompts": [name, a.limit, len(prompts)],
                 "scorers": (fingerprint(t.config["reward_model"])
                             + fingerprint(t.config["cost_model"])),
                 "sampling": [a.seed, a.samples_per_prompt, a.batch_size, str(ctx.dtype)]
                 + [t.config[k] for k in GEN_FIELDS]}
        key = hashlib.sha256(json.dumps(ident, default=str).encode()).hexdigest()[:20]
        path = os.path.join(a.out, "cache", key + ".json")
        if os.path.isfile(path):
            with open(path) as f:
                result = json.load(f)
            print(f"{t.name}: cached ({path})")
        else:
            t0 = time.time()
            loaded = loaded or loader(t)
            if t.soup:
                loaded[0].load_state_dict(soup_state_dict(loaded[2], loaded[3], t.lam))
            result = sample_and_score(ctx, loaded[0], loaded[1], t.config, prompts,
                                      desc=t.name) | {"identity": ident}
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump(result, f)
            os.replace(path + ".tmp", path)  # a crash never leaves half a cache file
            print(f"{t.name}: {len(result['responses'])} responses generated and scored in "
                  f"{time.time() - t0:.1f} s")
        family, _, lam = run_label(t.config)
        if kind == "sets":  # the real sets: refusal metrics per set (evals/chat.py)
            from evals.chat import set_metrics
            rows_of = ctx.cache["rows", name] * a.samples_per_prompt
            extra = set_metrics(rows_of, result["responses"])
        else:
            extra = (toy_metrics(result["prompts"], result["responses"], result["cost"])
                     if kind == "toy" else {})
        rows.append({"name": t.name, "group": t.group, "family": family, "lam": lam,
                     "seed": t.config.get("seed"), "prompts": name, "n_prompts": len(prompts),
                     "n_responses": len(result["responses"]), "cache": path, "sft": t.sft,
                     **response_metrics(result["reward"], result["cost"]), **extra})
    return rows


def soup_loader(ctx):
    """Loads both ends once, keeps their (merged) weights on the CPU, and reuses the PPO-H model for
    every lam."""
    def load(t):
        policy, tokenizer = load_eval_policy(t.config, t.soup[0], ctx, merged=True)
        cpu = lambda m: {k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()}
        return policy, tokenizer, cpu(policy), cpu(load_eval_policy(t.config, t.soup[1], ctx,
                                                                    merged=True)[0])
    return load


# ----------------------------------------------------------------------------- outputs

def _answers(row):
    """(prompts, responses) of an evaluated row, from its cache file."""
    with open(row["cache"]) as f:
        result = json.load(f)
    return result["prompts"], result["responses"]


def write_chat_samples(ctx, per_run, path):
    """samples.md: a few prompts of every real set, the SFT answer first, then each run's."""
    from evals.chat import write_samples
    rows = sorted(per_run, key=lambda r: (r["sft"] != "", r["name"]))  # SFT rows first
    answers = {r["name"]: dict(zip(*_answers(r))) for r in rows}
    write_samples(path, ctx.cache["rows", rows[0]["prompts"]], answers, ctx.args.samples)
    print(f"wrote {path} (sample answers of every model)")


def judge_runs(ctx, per_run):
    """The paper's pairwise judgement (evals/judge.py) of every run against its SFT model on the
    --judge_sets, from the answers just evaluated; writes judge.json, judge.csv, judge.png."""
    from evals.chat import judge_groups
    from evals.judge import JudgeClient, JudgeError, format_plan, judge_and_write, plan_calls
    a = ctx.args
    set_of = {r.prompt: r.set for key, rows in ctx.cache.items() if key[0] == "rows"
              for r in rows}
    sft = {r["name"]: _answers(r) for r in per_run if not r["sft"]}
    runs = [(r["name"], r["sft"], *_answers(r)) for r in per_run if r["sft"] in sft]
    from evals.prompt_sets import custom_set_name
    sets = {custom_set_name(k) if k.endswith(".jsonl") else k: v
            for k, v in a.judge_sets_parsed.items()}  # a .jsonl set is named after its file
    groups = judge_groups(runs, sft, sets, set_of)
    if not groups:
        raise ValueError(f"no answers to judge: the runs were not evaluated on any of the judge "
                         f"sets ({', '.join(a.judge_sets_parsed)}); add them with --eval_sets.")
    client = JudgeClient(a.judge, a.judge_url, max_tokens=a.judge_max_tokens)
    cache = os.path.join(a.out, "cache", "judge")
    print(format_plan([{"run": run, **plan_calls(client, criterion, items, cache)}
                       for (run, criterion), items in groups.items()]))
    if a.judge_dry_run:
        return None
    try:
        return judge_and_write(client, groups, cache, a.out, a.judge_workers)
    except JudgeError as err:
        raise ValueError(str(err)) from None


# ----------------------------------------------------------------------------- main

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = ap.add_argument
    add("runs", nargs="*",
        help="run folders or checkpoint folders (default: every run under runs/)")
    add("--prompts", default="",
        help="'toy', a Hub data set or a .json/.jsonl file (default: the run's own source)")
    add("--prompt_split", default="test")
    add("--limit", type=int, default=None, help="evaluate on the first N prompts only")
    add("--samples_per_prompt", type=int, default=None,
        help="default 4 on the toy world, 1 otherwise")
    add("--seed", type=int, default=0, help="sampling seed, the same for every checkpoint")
    add("--batch_size", type=int, default=32)
    add("--out", default="runs/eval", help="folder for the table, plot and cache")
    add("--soup", nargs="+", action="append", default=[], metavar="RUN",
        help="PPO_H_RUN PPO_S_RUN (repeatable), or 'auto': pair the given PPO-H and PPO-S runs "
        "by seed")
    add("--soup_lambdas", default="0.2,0.4,0.6,0.8")
    add("--eval_sets", default="",
        help="comma-separated real prompt sets: redteam, alpaca, xstest-safe, xstest-unsafe or "
        ".jsonl files (default: all four for smol runs, none for others)")
    add("--eval_data", default="",
        help="folder holding the real prompt sets' files (default: <the run's smol_data>/eval, "
        "else data/eval)")
    add("--samples", type=int, default=2, help="prompts per real set shown in samples.md")
    add("--judge", default="", metavar="MODEL",
        help="judge model name: compare each run's answers with its SFT model's (evals/judge.py)")
    add("--judge_url", default="https://api.openai.com/v1",
        help="OpenAI-compatible base URL of the judge; key from $OPENAI_API_KEY")
    add("--judge_sets", default="alpaca=helpfulness,redteam=harmlessness",
        help="SET=CRITERION pairs; a SET may be a .jsonl file of prompts")
    add("--judge_dry_run", action="store_true",
        help="print the judge calls and tokens still needed, send none")
    add("--judge_workers", type=int, default=4, help="judge requests in flight at once")
    add("--judge_max_tokens", type=int, default=512, help="cap on each judge reply")
    add("--device", default="auto")
    add("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16")
    add("--num_threads", type=int, default=1,
        help="CPU threads for torch (0 = torch's default); as train.py: tiny "
        "models run fastest on one")
    args = ap.parse_args(argv)
    if any(s != ["auto"] and len(s) != 2 for s in args.soup):
        ap.error("--soup takes two runs (PPO-H then PPO-S) or the word auto.")
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be a positive number of prompts.")
    if args.samples_per_prompt is not None and args.samples_per_prompt < 1:
        ap.error(f"--samples_per_prompt must be 1 or more (got {args.samples_per_prompt}).")
    if args.batch_size < 1:
        ap.error(f"--batch_size must be 1 or more (got {args.batch_size}).")
    if args.num_threads < 0:
        ap.error(f"--num_threads must be 0 or more (got {args.num_threads}).")
    for flag in ("samples", "judge_workers", "judge_max_tokens"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be 1 or more (got {getattr(args, flag)}).")
    if args.judge_dry_run and not args.judge:
        ap.error("--judge_dry_run needs --judge MODEL (and --judge_url) to know what it counts.")
    from evals.prompt_sets import STANDARD_SETS
    unknown = [n for n in args.eval_sets.split(",") if n and n not in STANDARD_SETS
               and not n.endswith(".jsonl")]
    if unknown:
        ap.error(f"--eval_sets: unknown set {unknown[0]!r}; use {', '.join(STANDARD_SETS)} or "
                 f".jsonl files.")
    if args.eval_data and not os.path.isdir(args.eval_data):
        ap.error(f"--eval_data {args.eval_data} is not a folder; give the folder holding the "
                 f"evaluation sets' files.")
    args.judge_sets_parsed = {}
    if args.judge:
        from evals.chat import parse_judge_sets
        try:
            args.judge_sets_parsed = parse_judge_sets(args.judge_sets)
        except ValueError as err:
            ap.error(str(err))
    try:
        lambdas = [float(x) for x in args.soup_lambdas.split(",")]
    except ValueError:
        lambdas = [-1.0]
    if not all(0 <= lam <= 1 for lam in lambdas):
        ap.error(f"--soup_lambdas must be numbers in [0, 1] such as 0.2,0.4,0.6,0.8 "
                 f"(got {args.soup_lambdas!r}).")
    import runs  # the same device and dtype rules as train.py
    try:
        runs._check_device(argparse.Namespace(device=args.device, dtype=args.dtype))
    except ValueError as err:
        ap.error(str(err))
    return args


def plan_jobs(args, ctx, fail):
    """[(targets, loader)]: the SFT baselines (one per distinct start x scorers x prompts x
    generation settings), the runs, and the soups (all lambdas of one pair share a loader)."""
    targets, paths = [], []
    # a folder of runs (runs/study) stands for the runs inside it
    # by default every run under runs/ but the other presets' folders (runs/smol: other prompts)
    given = args.runs or [p for p in find_runs("runs")
                          if os.path.relpath(p, "runs").split(os.sep)[0] not in ("smol", "paper")]
    if not given:
        raise FileNotFoundError("no run under runs/ (smol runs are evaluated on their own: "
                                "python evaluate.py runs/smol).")
    for p in given:
        is_run = any(os.path.exists(os.path.join(p, f)) for f in ("train_config.json", "policy"))
        paths += (find_runs(p) if os.path.isdir(p) and not is_run else []) or [p]
    for p in paths:
        try:
            targets.append(resolve_run(p))
        except (ValueError, FileNotFoundError, OSError, json.JSONDecodeError) as err:
            fail(p, err)
    soups = []
    try:
        lambdas = [float(x) for x in args.soup_lambdas.split(",")]
        pairs = auto_soup_pairs(targets) if ["auto"] in args.soup else []
        if ["auto"] in args.soup and not pairs:
            print("soup auto: no PPO-H and PPO-S runs with the same setup among the given runs; "
                  "no soups.")
        pairs += [tuple(map(resolve_run, s)) for s in args.soup if s != ["auto"]]
        soups = [soup_targets(h, s, lambdas) for h, s in pairs]
    except (ValueError, FileNotFoundError) as err:
        fail("--soup", err)
    for t in list(targets):
        try:
            ensure_toy_models(t.config, t.name)
        except (ValueError, OSError) as err:
            fail(t.name, err)
            targets.remove(t)
    if not targets:
        raise SystemExit("error: nothing to evaluate: no valid run or checkpoint was given.")
    sft = {}

    def start_of(t):  # the SFT target a run (or soup) started from, shared by equal starts
        fields = ["policy", "reward_model", "cost_model", "prompts", "prompt_split"] + GEN_FIELDS
        if t.config.get("preset") == "smol":  # evaluated on the real sets (prompt_set)
            fields += ["preset", "smol_data"]
        cfg = {k: t.config.get(k) for k in fields}
        key = json.dumps(cfg, sort_keys=True)
        return sft.setdefault(key, Target(f"sft (start of {t.name})", {**cfg, "method": "sft"}))
    for t in targets + [t for s in soups for t in s]:
        t.sft = start_of(t)
    if len(sft) == 1:
        next(iter(sft.values())).name = "sft"
    for t in targets + [t for s in soups for t in s]:
        t.sft = t.sft.name
    if args.samples_per_prompt is None:
        toy = not args.eval_sets and all((args.prompts or t.config.get("prompts") or "toy")
                                         == "toy" for t in targets)
        args.samples_per_prompt = 4 if toy else 1  # the toy test set is small (40 prompts)
    jobs = [([t], lambda t: load_eval_policy(t.config, "", ctx)) for t in sft.values()]
    jobs += [([t], lambda t: load_eval_policy(t.config, t.checkpoint, ctx)) for t in targets]
    return jobs + [(s, soup_loader(ctx)) for s in soups]


def label_targets(jobs):
    """Give every target its table row, keeping a row honest: runs that stopped before their last
    iteration get a row of their own, and a second run of the same row and seed is not counted
    again.
    Returns (jobs left, notes for the user)."""
    everything = [t for group, _ in jobs for t in group]
    for t, label in zip(everything, group_labels([t.config for t in everything])):
        t.group = label
    notes, seen, kept = [], {}, []
    for group, loader in jobs:
        t = group[0]
        if t.progress and t.progress[0] < t.progress[1]:
            t.group += f" [stopped at {t.progress[0]}/{t.progress[1]}]"
            notes.append(f"{t.name} stopped at iteration {t.progress[0]} of {t.progress[1]}; it "
                         f"has its own row, not averaged with finished runs (finish it with "
                         f"python train.py --out_dir {os.path.dirname(t.checkpoint)} --resume).")
        key = (t.group, t.config.get("seed"))
        if len(group) == 1 and t.checkpoint and key in seen:
            notes.append(f"{t.name} is the same setup and seed as {seen[key]}, so it is left "
                         f"out: a seed counts once in a row's mean and std.")
            continue
        seen.setdefault(key, t.name)
        kept.append((group, loader))
    return kept, notes


def main(argv=None):
    args = parse_args(argv)
    from model import default_dtype, pick_device
    device = pick_device() if args.device == "auto" else torch.device(args.device)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    ctx = Context(args, device,
                  default_dtype(device) if args.dtype == "auto" else getattr(torch, args.dtype))
    failed = []

    def fail(what, err):
        print(f"error: {what}: {err}", file=sys.stderr)
        failed.append(what)

    try:
        jobs = plan_jobs(args, ctx, fail)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}")
    jobs, notes = label_targets(jobs)
    for note in notes:
        print(textwrap.fill("note: " + note, WIDTH, subsequent_indent="  "))
    per_run = []
    for group, loader in jobs:
        try:
            per_run += evaluate_targets(ctx, group, loader)
        except (ValueError, OSError, KeyError, RuntimeError, SafetensorError) as err:
            fail(group[0].name if len(group) == 1
                 else group[0].name.split(" (")[-1].rstrip(")"), err)
    if not per_run:
        raise SystemExit("error: no checkpoint could be evaluated (see the errors above).")
    toy = all(TOY_METRICS[0] in r for r in per_run)
    chat = not toy and all("words" in r for r in per_run)  # the real prompt sets (evals/chat.py)
    from evals.chat import CHAT_METRICS
    extra = TOY_METRICS if toy else (CHAT_METRICS if chat else [])
    agg = sorted(aggregate(per_run, METRICS + extra), key=sort_key)
    pts = [(r["helpful"], r["harmless"]) for r in agg]
    ref, front = reference_point(pts), [agg[i]["group"] for i in pareto_front(pts)]
    volumes = ({fam: hypervolume_2d([(r["helpful"], r["harmless"]) for r in agg
                                     if r["family"] == fam], ref)
                for fam in dict.fromkeys(r["family"] for r in agg)}
               | {"all points": hypervolume_2d(pts, ref)})
    sets = sorted({r["prompts"] for r in per_run})
    counts = sorted({(r["n_prompts"], r["n_responses"]) for r in per_run})
    scored = "; ".join(f"{p} prompts x {n // p} samples = {n} responses" for p, n in counts)
    header = (f"Evaluated on {', '.join(sets)}: {scored} per run (seeds = runs averaged in a row), "
              f"sampling seed {args.seed}. Helpful = mean reward, Harmless = mean -cost, Avg = "
              f"their mean, Harmless ratio = share with cost <= 0; ± = sample std over seeds.")
    print("\n" + textwrap.fill(header, WIDTH) + "\n\n" + format_table(agg, toy, chat) + "\n")
    print(textwrap.fill(f"non-dominated (Helpful, Harmless): {', '.join(front)}", WIDTH))
    rule = "per-axis minimum over all points minus 5% of the axis range"
    print(textwrap.fill(f"hypervolume w.r.t. the reference point ({ref[0]:.3f}, {ref[1]:.3f}) = "
                        f"{rule}: " + ", ".join(f"{k} {v:.3f}" for k, v in volumes.items()), WIDTH))
    os.makedirs(args.out, exist_ok=True)
    write_outputs(args.out, per_run, agg, {"header": header, "toy": toy, "chat": chat,
                                           "prompt_sets": sets,
                                           "seed": args.seed,
                                           "samples_per_prompt": args.samples_per_prompt,
                                           "pareto_front": front,
                                           "hypervolume": volumes, "hypervolume_reference": ref,
                                           "hypervolume_reference_rule": rule, "failed": failed,
                                           "notes": notes})
    try:
        plot_pareto(agg, os.path.join(args.out, "pareto.png"), ref, volumes)
    except ImportError:
        print("matplotlib is not installed, so there is no pareto.png; pip install matplotlib.")
    print(f"wrote {args.out}/table.csv, runs.csv, results.json, pareto.png (every column and "
          f"std; the cached responses are in {args.out}/cache/)")
    if chat:
        write_chat_samples(ctx, per_run, os.path.join(args.out, "samples.md"))
    if args.judge:
        try:
            summaries = judge_runs(ctx, per_run)
            if summaries:  # results.json holds the judge's rows too, beside the table's
                path = os.path.join(args.out, "results.json")
                with open(path) as f:
                    results = json.load(f)
                with open(path + ".tmp", "w") as f:
                    json.dump({**results, "judge": summaries}, f, indent=1)
                os.replace(path + ".tmp", path)
        except (OSError, ValueError) as err:
            fail("--judge", err)
    if failed:
        print(f"{len(failed)} input(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
