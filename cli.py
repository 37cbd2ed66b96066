"""The command line of train.py and the checks that refuse bad values before any model loads.

- `parse_config`: the command line, generated from train.Config (one flag per field; `--help`
  prints each field's comment and default), presets first, then a --config JSON file (a run's
  train_config.json; its learning rates stand, LoRA or not), explicit flags win.
- `resume_config`: `--resume` reuses the run folder's saved configuration, so no flag needs
  retyping; explicit flags must agree with it unless they do not change what the run computes.
- `check_config`: one sentence per bad value (docs/errors.md), before any model loads.

Run: nothing to run; `python -m pytest -q tests/test_train.py` exercises it through train.py.
Left out on purpose: YAML config files (JSON only), and a config framework: Config is the schema.
"""
import argparse
import dataclasses
import inspect
import json
import math
import os
import re

import torch

import gapo
from tracking import trackers

# Fields a resumed run may change: they do not change what the run computes.
VOLATILE = {"resume", "overwrite", "save_every", "stop_after", "device", "num_threads", "out_dir",
            "eval_every", "eval_samples", "keep_checkpoints", "report_to", "config", "generation"}
DEVICES = re.compile(r"(auto|cpu|cuda(:\d+)?)$")  # match() anchors the start
DTYPES = ("auto", "float32", "bfloat16", "float16")



# ------------------------------------------------------------------------------------ command line

def _parse_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def field_comments(config_class):
    """{field name: its trailing comment} read from the class source: the comments are the docs."""
    comments = {}
    for line in inspect.getsource(config_class).splitlines():
        match = re.match(r"\s+(\w+)\s*:\s*[\w\[\], ]+=.*?#\s*(.*)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def parse_config(config_class, presets, argv=None, description="", lora_lr=None):
    """The command line, generated from the Config dataclass: --name value, --name=value, a bare
    --flag for booleans. The preset fills defaults first; explicit flags win. lora_lr: {preset: lr}
    that replaces actor_lr and critic_lr when lora_r > 0 and they were not given explicitly."""
    comments = field_comments(config_class)
    parser = argparse.ArgumentParser(description=description, argument_default=argparse.SUPPRESS,
                                     usage="%(prog)s [--field value ...]  (every field of Config)")
    for f in dataclasses.fields(config_class):
        kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str,
                                                         "bool": bool, "list": list}[f.type]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        help_text = f"{comments.get(f.name, '')} (default: {default!r})".replace("%", "%%")
        if kind is list:  # a repeatable flag, its values in order
            parser.add_argument(f"--{f.name}", action="append", type=str, help=help_text,
                                metavar="VALUE")
        elif kind is bool:
            parser.add_argument(f"--{f.name}", nargs="?", const=True, type=_parse_bool,
                                help=help_text, metavar="BOOL")
        else:
            parser.add_argument(f"--{f.name}", type=kind, help=help_text,
                                metavar=kind.__name__.upper())
    explicit = vars(parser.parse_args(argv))
    # --config FILE: its values sit between the preset's and the command line's
    if explicit.get("config") and explicit.get("resume"):
        raise ValueError("--config starts a run and --resume continues one with its saved "
                         "settings; drop one of them.")
    from_file = config_file(explicit["config"], config_class) if explicit.get("config") else {}
    preset = explicit.get("preset", from_file.get("preset", config_class.preset))
    if preset not in presets:
        raise SystemExit(f"error: unknown preset {preset!r}; choose one of {', '.join(presets)}.")
    given = {**from_file, **explicit}
    lora = {}
    if lora_lr and given.get("lora_r", presets[preset].get("lora_r", config_class.lora_r)) > 0:
        lora = {"actor_lr": lora_lr[preset], "critic_lr": lora_lr[preset]}  # LoRA's own rates
    cfg = config_class(**{**presets[preset], **lora, **given})
    return resume_config(cfg, explicit) if cfg.resume else cfg


def config_file(path, config_class):
    """The Config fields of a JSON file (a saved train_config.json, or one written by hand), each
    checked against the field's type; how this run starts (resume, overwrite), where it goes
    (out_dir) and the file's own --config are not taken from it."""
    try:
        with open(path) as f:
            values = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"--config {path} does not exist; check the path.") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"--config {path} is not a JSON file ({err}); fix it.") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} holds a JSON {type(values).__name__}, not an object of "
                         f"Config fields; write {{\"field\": value, ...}}.")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"--config {path} has fields Config does not know: {', '.join(unknown)}; "
                         f"remove them (python train.py --help lists every field).")
    for name, value in values.items():
        want = getattr(fields[name].type, "__name__", fields[name].type)  # "int", "float", ...
        ok = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list}[want]
        if not isinstance(value, ok) or isinstance(value, bool) and want != "bool":
            article = "an" if want == "int" else "a"
            raise ValueError(f"--config {path}: field {name!r} should be {article} {want}, not "
                             f"{value!r}; fix it.")
        if want == "list" and not all(isinstance(item, str) for item in value):
            raise ValueError(f"--config {path}: field {name!r} should be a list of strings "
                             f"(NAME=SOURCE), not {value!r}; fix it.")
    # How this run starts and where it goes are not the file's: a run's saved out_dir would make
    # the new run land on (and --overwrite delete) the run the file came from.
    return {k: v for k, v in values.items()
            if k not in ("resume", "overwrite", "config", "out_dir")}


def saved_config(out_dir):
    """The configuration saved in a run folder (the checkpoint's first: the newest), or None."""
    for path in (os.path.join(out_dir, "checkpoint", "train_config.json"),
                 os.path.join(out_dir, "checkpoint.old", "train_config.json"),
                 os.path.join(out_dir, "train_config.json")):
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    return json.load(f)
            except (OSError, ValueError) as err:
                raise ValueError(f"{path} cannot be read ({err}); start the run afresh with "
                                 f"--overwrite or pass another --out_dir.") from None
    return None


def resume_config(cfg, explicit):
    """--resume continues the run as it was started: its saved configuration, not today's defaults,
    so no flag needs retyping. Explicit flags must agree with it, unless they are VOLATILE. The
    folder is the one given (a renamed or copied run resumes where it now is)."""
    out_dir = cfg.out_dir or default_out_dir(cfg)
    saved = saved_config(out_dir)
    if saved is None:
        return cfg  # nothing saved: prepare_out_dir says so and starts afresh
    # Empty model paths are filled from the toy world later, so they match whatever was saved.
    different = sorted(k for k, v in explicit.items()
                       if k not in VOLATILE and k in saved and v not in (saved[k], ""))
    if different:
        given = ", ".join(f"--{k} {explicit[k]} (saved: {saved[k]})" for k in different)
        raise ValueError(f"--resume with a different configuration than the run in {out_dir}: "
                         f"{given}; drop those flags (--resume reuses the saved ones) or use "
                         f"another --out_dir.")
    known = {f.name for f in dataclasses.fields(cfg)}
    # Saved bookkeeping (save_every, device, ...) carries over too, unless given again now.
    skip = {"resume", "overwrite", "stop_after", "out_dir"} | (explicit.keys() & VOLATILE)
    kept = {k: v for k, v in saved.items() if k in known and k not in skip}
    return dataclasses.replace(cfg, **kept, out_dir=out_dir)


def parse_pref(text, K):
    try:
        pref = [float(x) for x in str(text).split(",")]
    except ValueError:
        pref = []
    if (len(pref) != K or any(not math.isfinite(x) or x < 0 for x in pref)
            or abs(sum(pref) - 1) > 1e-6):
        raise ValueError(f"--pref must be {K} non-negative numbers summing to 1, such as 0.4,0.6 "
                         f"(got {text!r}).")
    return pref


def _check_numbers(cfg):
    """One sentence per out-of-range number; the ranges are those the loop can run with."""
    positive = ["batch_size", "minibatch_size", "micro_batch_size", "ppo_epochs", "max_new_tokens",
                "max_prompt_length", "save_every", "score_batch_size", "lambda_window", "actor_lr",
                "critic_lr", "temperature", "repetition_penalty", "clip_eps", "clip_value",
                "clip_score", "lambda_init", "lambda_max", "eval_samples", "keep_checkpoints"]
    at_least_zero = ["iterations", "stop_after", "eval_every", "lora_r", "num_threads", "seed",
                     "weight_decay", "max_grad_norm", "kl_coef", "lambda_lr", "fastrl_eta", "p"]
    fraction = ["top_p", "warmup_ratio", "gamma", "gae_lambda"]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{f.name} must be a finite number (got {value}).")
        if f.name in positive and not value > 0:
            raise ValueError(f"--{f.name} must be greater than 0 (got {value}).")
        if f.name in at_least_zero and not value >= 0:
            raise ValueError(f"--{f.name} must be 0 or more (got {value}).")
        if f.name in fraction and not 0 <= value <= 1:
            raise ValueError(f"--{f.name} must lie between 0 and 1 (got {value}).")
    if cfg.top_p == 0:
        raise ValueError("--top_p must be greater than 0 (got 0); 1 samples from the whole "
                         "vocabulary.")
    if cfg.iterations == 0 and not cfg.epochs > 0:
        raise ValueError(f"--epochs must be greater than 0 when --iterations is 0 "
                         f"(got {cfg.epochs}).")
    if cfg.lora_r > 0 and cfg.lora_alpha < 0:  # 0 means 2 * lora_r
        raise ValueError(f"--lora_alpha must be 0 (meaning 2 * lora_r) or more (got "
                         f"{cfg.lora_alpha}).")


def check_device(cfg):
    if not DEVICES.match(cfg.device):
        raise ValueError(f"unknown --device {cfg.device!r}; choose auto, cpu, cuda or cuda:N.")
    if cfg.device.startswith("cuda"):
        index = int(cfg.device.split(":")[1]) if ":" in cfg.device else 0
        if not torch.cuda.is_available():
            raise ValueError(f"--device {cfg.device} asks for a GPU, but torch sees no CUDA device "
                             f"here; use --device cpu (or auto).")
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {cfg.device}: there are only {torch.cuda.device_count()} "
                             f"CUDA devices; use cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"unknown --dtype {cfg.dtype!r}; choose one of {', '.join(DTYPES)}.")


def _check_prompt_file(path):
    """A local prompt file must be text: say so, naming the file, before any model loads."""
    if not path or not os.path.isfile(path) or path.endswith((".gz", ".parquet")):
        return
    try:
        with open(path, encoding="utf-8") as f:
            for _ in f:
                pass
    except UnicodeDecodeError as err:
        raise ValueError(f"--prompts {path} is not UTF-8 text (byte {err.start} cannot be "
                         f"decoded); give a .json or .jsonl file of prompts.") from None


def check_config(cfg, K):
    """Bad input stops here, before any model loads, with one sentence each. Returns the
    preference."""
    names = objective_names(cfg)  # refuses a malformed --objective
    if K != len(names):
        raise ValueError(f"{len(names)} objectives ({', '.join(names)}) where {K} were expected.")
    if cfg.method not in gapo.METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {', '.join(gapo.METHODS)}.")
    if not (cfg.p >= 0 and math.isfinite(cfg.p)):
        raise ValueError(f"--p must be a finite number >= 0 (got {cfg.p}); p = 0 is plain MGDA.")
    _check_numbers(cfg)
    # Only morlhf and pgapo read the preference; the others must not fail on a value they ignore.
    pref = parse_pref(cfg.pref, K) if cfg.method in ("morlhf", "pgapo") else [1 / K] * K
    if cfg.method == "ppo" and not 0 <= cfg.objective_index < K:
        raise ValueError(f"--objective_index {cfg.objective_index} names no objective; ppo trains "
                         f"one of the {K} ({', '.join(names)}): give 0 to {K - 1}.")
    if cfg.method == "safe-rlhf" and K != 2:
        raise ValueError("safe-rlhf needs exactly a reward and a cost objective.")
    if cfg.minibatch_size % cfg.micro_batch_size or cfg.batch_size % cfg.minibatch_size:
        raise ValueError(f"batch_size ({cfg.batch_size}) must be a multiple of minibatch_size "
                         f"({cfg.minibatch_size}), itself a multiple of micro_batch_size "
                         f"({cfg.micro_batch_size}).")
    if cfg.mgda_params not in ("last_block", "lm_head", "all"):
        raise ValueError(f"unknown mgda_params {cfg.mgda_params!r}; choose last_block, lm_head "
                         f"or all.")
    for name in ("toy_size", "smol_size"):
        if getattr(cfg, name) not in ("default", "tiny"):
            raise ValueError(f"unknown {name} {getattr(cfg, name)!r}; choose default or tiny.")
    if cfg.generation not in ("hf", "static"):
        raise ValueError(f"unknown generation {cfg.generation!r}; choose hf or static.")
    if cfg.critic_init not in ("first_rollout", "zero"):
        raise ValueError(f"unknown critic_init {cfg.critic_init!r}; choose first_rollout or zero.")
    if cfg.weight_scale not in ("sum_one", "raw"):
        raise ValueError(f"unknown weight_scale {cfg.weight_scale!r}; choose sum_one or raw.")
    from formats.models import SCORER_FORMATS  # here: cli stays light for evaluate and runs
    if cfg.scorer_format not in SCORER_FORMATS:
        raise ValueError(f"unknown scorer_format {cfg.scorer_format!r}; choose auto, chat or "
                         f"safe_rlhf.")
    if not (0 <= cfg.adam_beta1 < 1 and 0 <= cfg.adam_beta2 < 1):
        raise ValueError(f"--adam_beta1 and --adam_beta2 must lie in [0, 1) "
                         f"(got {cfg.adam_beta1}, {cfg.adam_beta2}).")
    if cfg.eval_every and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun sets it
        raise ValueError("--eval_every runs in one process; under torchrun evaluate the "
                         "checkpoints with evaluate.py instead.")
    if cfg.eval_every and cfg.objective:
        raise ValueError("--eval_every measures the reward and cost of two-objective runs; "
                         "with --objective the log's score_<name> keys are the curve.")
    trackers.check(cfg.report_to)
    check_device(cfg)
    _check_prompt_file(cfg.prompts)
    return pref


def default_out_dir(cfg):
    """runs/<method>[-p<p>|-pref<pref>|-<objective>]-s<seed>: the folder of a run without
    --out_dir."""
    tag = cfg.method
    if cfg.method in ("gapo", "gapo-eq17"):
        tag += f"-p{cfg.p:g}"
    if cfg.method in ("pgapo", "morlhf"):
        tag += "-pref" + cfg.pref.replace(",", "_")
    if cfg.method == "ppo":  # check_config refuses an index out of range; --resume comes first
        names = objective_names(cfg)
        tag += "-" + (names[cfg.objective_index] if 0 <= cfg.objective_index < len(names)
                      else str(cfg.objective_index))
    # runs of other presets get their own folder, so `evaluate.py runs/smol` takes them together
    folder = "runs" if cfg.preset == "toy" else os.path.join("runs", cfg.preset)
    return os.path.join(folder, f"{tag}-s{cfg.seed}")


# ------------------------------------------------------------------------------------ run folder


OBJECTIVE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")


def parse_objective(text):
    """`NAME=SOURCE` -> (name, source, sign). SOURCE: a scorer (local folder or Hub id), the same
    with a leading `-` for a score to minimise (a cost), or `py:MODULE.FUNCTION`."""
    name, sep, source = text.partition("=")
    if not sep or not OBJECTIVE_NAME.match(name) or not source.strip("-"):
        raise ValueError(f"--objective {text!r} must read NAME=SOURCE (for example "
                         f"harmless=-PKU-Alignment/beaver-7b-v1.0-cost or brevity=py:rules.short), "
                         f"NAME a word of letters, digits and _.")
    sign = -1.0 if source.startswith("-") else 1.0
    return name, source[1:] if sign < 0 else source, sign


def objective_names(cfg):
    """The run's objective names, in order: its --objective flags, else helpful and harmless."""
    if not cfg.objective:
        return ["helpful", "harmless"]
    names = [parse_objective(text)[0] for text in cfg.objective]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--objective names must differ; {', '.join(repeated)} is given twice.")
    if len(names) < 2:
        raise ValueError("give at least two --objective flags (one objective is plain PPO: "
                         "--method ppo-h with its scorer as --reward_model).")
    return names
