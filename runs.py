"""Everything around the method that train.py needs: the command line, run folders, checkpoints,
resume.

train.py holds the algorithm (Config, one iteration, the loop); this file holds the plumbing, so
that train.py reads top to bottom as the method:
- `parse_config`: the command line, generated from train.Config (one flag per field; `--help` prints
  each field's comment and default), presets first, explicit flags win; `check_config` refuses bad
  values with one sentence before any model loads.
- `prepare_out_dir`: one run per folder; `--resume` continues it, `--overwrite` replaces it.
  One process per folder (a flock on out_dir/.lock); a folder with no checkpoint is a failed
  start and starts afresh; `--resume` reuses the saved configuration (docs/errors.md).
- `save_checkpoint` / `load_checkpoint`: atomic checkpoints (everything written to checkpoint.tmp,
  then two renames), so a crash at any moment leaves the last good checkpoint; a resumed CPU run
  continues bit for bit (RNG states, optimizer and scheduler states, the method's state are all
  saved). Every rank writes its own shard of the optimizer states (optim/), which resume on any
  number of ranks.
- `resolve_models` / `prompt_pool`: the built-in toy world fills any model or prompt path left
  empty; `load_models` builds the networks (sharded by FSDP2 under torchrun, from the checkpoint
  on resume).
- `read_log` / `append_log` / `format_log_line` / `summary`: log.jsonl (one JSON line per
  iteration), the one-line terminal record, and the start-to-end summary with the next command.

Run: nothing to run; `python -m pytest -q tests/test_train.py` exercises it through train.py.
Left out on purpose: experiment trackers (log.jsonl is plain JSON lines), multi-node file systems.
"""
import argparse
import dataclasses
import fcntl
import inspect
import json
import math
import os
import random
import re
import shutil
import socket
import sys

import numpy as np
import torch

import gapo
from data import format_policy_prompt, load_prompts
from model import (Critic, default_dtype, load_policy, load_reference, load_score_model,
                   load_tokenizer)
from rewards import Scorer
from scale import distributed

# Fields a resumed run may change: they do not change what the run computes.
VOLATILE = {"resume", "overwrite", "save_every", "stop_after", "device", "num_threads", "out_dir",
            "eval_every", "eval_samples"}
LOCK = ".lock"  # in the run folder: held (flock) by the one process driving the run
# What train.py writes in a run folder; only these and no checkpoint: a failed start.
RUN_FILES = {"train_config.json", "log.jsonl", "checkpoint", "checkpoint.tmp", "checkpoint.old",
             LOCK}
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
                                                         "bool": bool}[f.type]
        help_text = f"{comments.get(f.name, '')} (default: {f.default!r})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(f"--{f.name}", nargs="?", const=True, type=_parse_bool,
                                help=help_text, metavar="BOOL")
        else:
            parser.add_argument(f"--{f.name}", type=kind, help=help_text,
                                metavar=kind.__name__.upper())
    explicit = vars(parser.parse_args(argv))
    preset = explicit.get("preset", config_class.preset)
    if preset not in presets:
        raise SystemExit(f"error: unknown preset {preset!r}; choose one of {', '.join(presets)}.")
    lora = {}
    if lora_lr and explicit.get("lora_r", presets[preset].get("lora_r", config_class.lora_r)) > 0:
        lora = {"actor_lr": lora_lr[preset], "critic_lr": lora_lr[preset]}  # LoRA's own rates
    cfg = config_class(**{**presets[preset], **lora, **explicit})
    return resume_config(cfg, explicit) if cfg.resume else cfg


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
                "clip_score", "lambda_init", "lambda_max", "eval_samples"]
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


def _check_device(cfg):
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
    if not path or not os.path.isfile(path) or path.endswith(".gz"):
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
    if cfg.method not in gapo.METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {', '.join(gapo.METHODS)}.")
    if not (cfg.p >= 0 and math.isfinite(cfg.p)):
        raise ValueError(f"--p must be a finite number >= 0 (got {cfg.p}); p = 0 is plain MGDA.")
    _check_numbers(cfg)
    # Only morlhf and pgapo read the preference; the others must not fail on a value they ignore.
    pref = parse_pref(cfg.pref, K) if cfg.method in ("morlhf", "pgapo") else [1 / K] * K
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
    if cfg.critic_init not in ("first_rollout", "zero"):
        raise ValueError(f"unknown critic_init {cfg.critic_init!r}; choose first_rollout or zero.")
    if cfg.weight_scale not in ("sum_one", "raw"):
        raise ValueError(f"unknown weight_scale {cfg.weight_scale!r}; choose sum_one or raw.")
    if not (0 <= cfg.adam_beta1 < 1 and 0 <= cfg.adam_beta2 < 1):
        raise ValueError(f"--adam_beta1 and --adam_beta2 must lie in [0, 1) "
                         f"(got {cfg.adam_beta1}, {cfg.adam_beta2}).")
    _check_device(cfg)
    _check_prompt_file(cfg.prompts)
    return pref


def default_out_dir(cfg):
    tag = cfg.method
    if cfg.method in ("gapo", "gapo-eq17"):
        tag += f"-p{cfg.p:g}"
    if cfg.method in ("pgapo", "morlhf"):
        tag += "-pref" + cfg.pref.replace(",", "_")
    # runs of other presets get their own folder, so `evaluate.py runs/smol` takes them together
    folder = "runs" if cfg.preset == "toy" else os.path.join("runs", cfg.preset)
    return os.path.join(folder, f"{tag}-s{cfg.seed}")


# ------------------------------------------------------------------------------------ run folder

def find_checkpoint(out_dir):
    """The last complete checkpoint folder (recovering from a crash between the two renames), or
    None."""
    final, old = os.path.join(out_dir, "checkpoint"), os.path.join(out_dir, "checkpoint.old")
    if not os.path.isdir(final) and os.path.isdir(old):
        os.rename(old, final)
    return final if os.path.isfile(os.path.join(final, "trainer_state.pt")) else None


def check_checkpoint(path):
    """Every weight and state file of a checkpoint has the size recorded when it was saved
    (files.json): a file cut short by a full disk or a bad copy stops here, before any model
    loads."""
    manifest = os.path.join(path, "files.json")
    if not os.path.isfile(manifest):
        return  # saved before checkpoints listed their files
    with open(manifest) as f:
        files = json.load(f)["files"]
    for rel, size in files.items():
        if not rel.endswith((".safetensors", ".bin", ".pt", ".distcp", ".metadata")):
            continue  # text files (configs) may be edited by hand; weights may not shrink
        full = os.path.join(path, rel)
        actual = os.path.getsize(full) if os.path.isfile(full) else None
        if actual != size:
            state = "missing" if actual is None else f"{actual} bytes instead of {size}"
            raise ValueError(f"the checkpoint {path} is damaged: {rel} is {state}; restore the "
                             f"folder from a copy, or start afresh with --overwrite.")


def checkpoint_iteration(out_dir):
    """The iteration of the run's checkpoint, from its files.json (None when there is none)."""
    try:
        with open(os.path.join(out_dir, "checkpoint", "files.json")) as f:
            return json.load(f)["iteration"]
    except (OSError, ValueError, KeyError):
        return None


_held_locks = {}  # out_dir -> the open lock file; the lock lasts as long as the file is open


def lock_run_folder(out_dir):
    """Only one process drives a run folder: an exclusive flock on out_dir/.lock, kept until the
    process ends. The file names its holder, so a second process can say who it is."""
    key = os.path.abspath(out_dir)
    lock = open(os.path.join(out_dir, LOCK), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise ValueError(f"{out_dir} is in use by {holder}; wait for it to finish (or stop it) "
                         f"before starting or resuming this run there.") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    lock.flush()
    _held_locks[key] = lock


def unlock_run_folders():
    """Release the run folder locks this process holds (main returns; the process may go on)."""
    while _held_locks:
        _held_locks.popitem()[1].close()


def _clear_folder(out_dir):
    """Delete what a run folder holds, except the lock this process holds on it."""
    for entry in os.listdir(out_dir):
        if entry != LOCK:
            path = os.path.join(out_dir, entry)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def prepare_out_dir(cfg):
    """Lock the run folder and decide: --resume continues its checkpoint, --overwrite replaces the
    run, a folder with no checkpoint (a failed or killed start) starts afresh, and a finished or
    partial run is never mixed with a new one. Returns the checkpoint to resume from, or None."""
    if os.path.exists(cfg.out_dir) and not os.path.isdir(cfg.out_dir):
        raise ValueError(f"--out_dir {cfg.out_dir} is a file; pass a folder for the run.")
    os.makedirs(cfg.out_dir, exist_ok=True)
    lock_run_folder(cfg.out_dir)
    # A save cut short (kill, full disk) left this; the last checkpoint is intact.
    shutil.rmtree(os.path.join(cfg.out_dir, "checkpoint.tmp"), ignore_errors=True)
    checkpoint = find_checkpoint(cfg.out_dir)
    entries = sorted(set(os.listdir(cfg.out_dir)) - {LOCK})
    if cfg.resume and checkpoint:
        check_checkpoint(checkpoint)
        return checkpoint
    if cfg.overwrite:
        _clear_folder(cfg.out_dir)
    elif checkpoint:
        raise ValueError(f"{cfg.out_dir} already holds a run; pass --resume to continue it, "
                         f"--overwrite to replace it, or another --out_dir.")
    elif not set(entries) <= RUN_FILES:
        strays = ", ".join(e for e in entries if e not in RUN_FILES)
        raise ValueError(f"{cfg.out_dir} holds files train.py did not write ({strays}); pass "
                         f"another --out_dir, or --overwrite to delete them.")
    elif entries or cfg.resume:
        print(f"{cfg.out_dir} has no checkpoint (its start stopped before the first save); "
              f"starting the run afresh there.")
        _clear_folder(cfg.out_dir)
    return None


def write_config(cfg):
    with open(os.path.join(cfg.out_dir, "train_config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)


def start_run(cfg):
    """Parse-time checks done: start the process group (torchrun), prepare the run folder (rank 0
    first, then the others find it), seed everything. Returns (rank, world, device, resume_from)."""
    cfg.out_dir = cfg.out_dir or default_out_dir(cfg)
    _current["out_dir"] = None  # set once the folder is this run's; Ctrl-C before wrote nothing
    rank, world, device = distributed.init_distributed(cfg.device)  # torchrun: one process per GPU
    with distributed.main_first():
        if rank == 0:
            resume_from = prepare_out_dir(cfg)
        else:
            resume_from = find_checkpoint(cfg.out_dir) if cfg.resume else None
    _current["out_dir"] = cfg.out_dir
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    return rank, world, device, resume_from


# ---------------------------------------------------------------------------------- models and data

def resolve_models(cfg):
    """Fill policy / reward / cost from the toy world when they are empty (rank 0 builds it first).
    Returns the toy world module when the prompts come from it, else None."""
    if cfg.policy and cfg.reward_model and cfg.cost_model and cfg.prompts:
        return None
    if cfg.preset == "smol":
        from worlds import smol
        with distributed.main_first():
            print(f"smol: using (or preparing, on first use) SmolLM2-135M-Instruct and its reward "
                  f"and cost models in {cfg.smol_dir}")
            paths = smol.ensure_smol(cfg.smol_dir, cfg.smol_data, cfg.smol_policy, cfg.smol_size)
        for key, part in (("policy", "policy"), ("reward_model", "reward"),
                          ("cost_model", "cost"), ("prompts", "prompts")):
            setattr(cfg, key, getattr(cfg, key) or paths[part])
        return None
    from worlds import toyworld
    toy_dir = cfg.toy_dir or toyworld.default_dir(cfg.toy_size)
    with distributed.main_first():  # says the world is valid, or builds it (a minute, once)
        toyworld.ensure_toyworld(toy_dir, size=cfg.toy_size)
    paths = toyworld.toy_paths(toy_dir)
    cfg.policy = cfg.policy or paths["sft"]
    cfg.reward_model = cfg.reward_model or paths["reward"]
    cfg.cost_model = cfg.cost_model or paths["cost"]
    return toyworld


def prompt_pool(cfg, toyworld_module, tokenizer):
    """(raw prompts for the scorers, formatted prompts for the policy), same order."""
    if cfg.prompts:
        raw = load_prompts(cfg.prompts, split=cfg.prompt_split)
    else:
        raw = [p.text for p in toyworld_module.train_prompts()]
    if not raw:
        raise ValueError("the prompt set is empty; give --prompts a file or data set with prompts.")
    return raw, [format_policy_prompt(tokenizer, p) for p in raw]


def batch_indices(cfg, n_prompts, position):
    """Prompt indices of the `position`-th batch: a seeded permutation per pass over the prompts, so
    a resumed run sees the same batches (under torchrun, rank r takes the r-th of `world`
    batches)."""
    start = position * cfg.batch_size
    epoch = start // n_prompts
    # Seeded by the pair (seed, epoch): seed + epoch would give seed s at epoch e + 1 the order of
    # seed s + 1 at epoch e, so the seeds of a study would not be independent.
    order = np.concatenate([np.random.default_rng((cfg.seed, epoch + i)).permutation(n_prompts)
                            for i in (0, 1)])
    offset = start % n_prompts
    return order[offset:offset + cfg.batch_size].tolist()


# ------------------------------------------------------------------------------------ models

def loaded_scorer(loaded, path, dtype):
    """(score model, its tokenizer) through `loaded` (whole, or sharded on every rank)."""
    tokenizers = []

    def load(device):
        model, tokenizer = load_score_model(path, device, dtype)
        tokenizers.append(tokenizer)
        return model
    return loaded(load), tokenizers[-1]


def load_models(cfg, device, dtype, world, resume_from, K):
    """The networks of a run: (tokenizer, policy, reference, critic with K heads, [reward, cost]
    Scorers, MGDA parameters or None), fresh or from the checkpoint resume_from. Under torchrun
    FSDP2 shards them, keeping the MGDA parameters whole."""
    # One dtype for every rank's build: sharded loading builds on `device` but reads on the CPU.
    dtype = dtype or default_dtype(device)
    tokenizer = load_tokenizer(cfg.policy, padding_side="left")
    # torchrun, full fine-tuning: each model built empty on every rank, sharded by FSDP2, then
    # filled from rank 0's copy (distributed.load_sharded); otherwise loaded whole.
    sharded = world > 1 and cfg.lora_r == 0
    gradient_method = cfg.method in gapo.GRADIENT_METHODS

    def loaded(load, shard=distributed.shard_model):
        return distributed.load_sharded(load, device, shard) if sharded else load(device)

    # The parameters whose objective gradients g_i feed the Gram matrix (docs/decisions.md):
    # kept whole by FSDP.
    def mgda(model):
        return gapo.mgda_parameters(model, cfg.mgda_params) if gradient_method else []

    # Sharded loading reads a resumed policy straight from the checkpoint (HF format).
    policy_path = os.path.join(resume_from, "policy") if resume_from and sharded else cfg.policy
    policy = loaded(lambda d: load_policy(policy_path, d, dtype, cfg.gradient_checkpointing,
                                          cfg.lora_r, cfg.lora_alpha),
                    distributed.policy_sharder(mgda))
    reference = loaded(lambda d: load_reference(cfg.policy, d, dtype, policy=policy))
    if resume_from and not sharded:
        load_policy_weights(policy, os.path.join(resume_from, "policy"))
    if resume_from:
        critic = loaded(lambda d: Critic.load(os.path.join(resume_from, "critic"), d, dtype,
                                              cfg.gradient_checkpointing),
                        distributed.critic_sharder)
    else:
        critic = loaded(lambda d: Critic.from_policy(cfg.policy, K, d, dtype,
                                                     cfg.gradient_checkpointing, cfg.lora_r,
                                                     cfg.lora_alpha),
                        distributed.critic_sharder)
    scorers = [Scorer(*loaded_scorer(loaded, path, dtype), name=name)
               for path, name in [(cfg.reward_model, "reward"), (cfg.cost_model, "cost")]]
    return tokenizer, policy, reference, critic, scorers, mgda(policy) or None


# ------------------------------------------------------------------------------------ checkpoints

def save_checkpoint(out_dir, cfg, policy, tokenizer, critic, optimizers, schedulers, state,
                    iteration, total=None):
    """Write out_dir/checkpoint atomically: everything goes to checkpoint.tmp, then two renames.
    A crash at any point leaves a complete checkpoint (or checkpoint.old, which load recovers); a
    failed write (full disk) removes checkpoint.tmp and says which checkpoint is still there.
    files.json lists every file's size (resume and evaluate.py check them) and the iteration.

    Collective under torchrun. The AdamW states (two float32 numbers per weight, the bulk) go to
    optim/ with torch.distributed.checkpoint: each rank writes its own shard, nothing is gathered,
    and any world size resumes them. The policy (Hugging Face format, for from_pretrained and
    evaluate.py) and the critic are gathered and written by rank 0."""
    from torch.distributed.checkpoint.api import CheckpointException

    final, tmp, old = (os.path.join(out_dir, n)
                       for n in ("checkpoint", "checkpoint.tmp", "checkpoint.old"))
    if distributed.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    distributed.barrier()  # no rank writes its shard into the folder rank 0 is still clearing
    error = None
    try:
        distributed.save_optimizers(_optimized(policy, critic, optimizers),
                                    os.path.join(tmp, "optim"))
    except (Exception, CheckpointException) as err:
        error = _checkpoint_error(err)  # the same on every rank: the save gathers all results
    if error is None:
        # Every rank gathers the full weights, rank 0 writes them, and the others wait for its
        # verdict, so no rank runs ahead (or exits and tears the process group down) meanwhile.
        with distributed.full_parameters(policy), distributed.full_parameters(critic):
            if distributed.is_main():
                error = _write_checkpoint(tmp, cfg, policy, tokenizer, critic, schedulers, state,
                                          iteration, total)
        error = distributed.broadcast_object(error)
    if error is None and distributed.is_main():
        if os.path.isdir(final):
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()  # the renamed checkpoint is there before any rank goes on
    if error is not None:
        if distributed.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        raise SaveError(f"saving the checkpoint of iteration {iteration} failed ({error}); free "
                        f"disk space")


def _optimized(policy, critic, optimizers):
    """{name: (model, optimizer)}: the names key the optimizer states in optim/."""
    return dict(zip(("policy", "critic"), zip((policy, critic), optimizers)))


def _checkpoint_error(err):
    """What a failed write (or read) says: for torch.distributed.checkpoint's exception (a page
    of every rank's traceback), the first rank's error alone."""
    if getattr(err, "failures", None):  # CheckpointException
        errors = [e for e, _ in err.failures.values()]  # (exception, traceback) per rank
        if any(isinstance(e, KeyboardInterrupt) for e in errors):
            raise KeyboardInterrupt  # Ctrl-C inside the write: stop as Ctrl-C, not as a disk error
        err = errors[0]
    return (str(err).strip().splitlines() or [type(err).__name__])[-1]


def _write_checkpoint(tmp, cfg, policy, tokenizer, critic, schedulers, state, iteration, total):
    """Rank 0's part of a save into tmp, optim/ already there: None, or why it failed."""
    try:
        # HF format: from_pretrained loads it alone
        policy.save_pretrained(os.path.join(tmp, "policy"))
        tokenizer.save_pretrained(os.path.join(tmp, "policy"))
        critic.save(os.path.join(tmp, "critic"))
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
               "python": random.getstate(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        torch.save({"iteration": iteration, "method_state": dataclasses.asdict(state),
                    "schedulers": [s.state_dict() for s in schedulers],
                    "rng": rng}, os.path.join(tmp, "trainer_state.pt"))
        with open(os.path.join(tmp, "train_config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=1)
        # Walked here, after every rank's optim/ shard is complete (the save above returned on
        # every rank only once all of them had written).
        files = {os.path.relpath(os.path.join(d, n), tmp): os.path.getsize(os.path.join(d, n))
                 for d, _, names in os.walk(tmp) for n in names}
        with open(os.path.join(tmp, "files.json"), "w") as f:
            json.dump({"iteration": iteration, "iterations": total, "files": files}, f, indent=1)
    except Exception as err:  # OSError, SafetensorError, torch's writer error: "could not write"
        return str(err)
    return None


def checkpoint_note(out_dir):
    """Where the last good checkpoint is, or that there is none: said whenever a run stops early."""
    reached = checkpoint_iteration(out_dir)
    if reached is None and not os.path.isdir(os.path.join(out_dir, "checkpoint")):
        return "no checkpoint was saved yet, so rerunning the same command starts the run afresh"
    at = f" (iteration {reached})" if reached is not None else ""
    return f"the last good checkpoint{at} is kept in {os.path.join(out_dir, 'checkpoint')}"


class CheckpointError(ValueError):
    """A checkpoint to resume from cannot be read; the message says which file."""


class SaveError(OSError):
    """A checkpoint could not be written (full disk, say); the previous one is intact."""


_current = {"out_dir": None}  # the run this process drives, for stopped()


def stopped(err):
    """What main says when a run stops early: one line with why, what is kept and what to do next.
    Returns SystemExit's argument: the message, or 130 after printing it for Ctrl-C."""
    out_dir = _current["out_dir"]
    if isinstance(err, CheckpointError):
        return f"error: {err}"
    if isinstance(err, KeyboardInterrupt):
        if out_dir is None:
            print("interrupted before the run started; nothing was written.", file=sys.stderr)
            return 130
        why = "interrupted"
    else:
        why = f"error: {err}"
    note = checkpoint_note(out_dir)
    if not note.startswith("no checkpoint"):
        note += f"; continue with: python train.py --out_dir {out_dir} --resume"
    message = f"{why}; {note}."
    if isinstance(err, KeyboardInterrupt):
        print(message, file=sys.stderr)
        return 130
    return message


def summary(cfg, log_path, start, reached, total, seconds):
    """What the run did, start to end, and the command to run next."""
    records = read_log(log_path)
    done = [r for r in records if start < r["iteration"] <= reached]
    if not done:
        head = f"nothing to do: {cfg.out_dir} is already at iteration {reached} of {total}"
    else:
        first, last = records[0], done[-1]
        change = ", ".join(f"{k} {first[f'score_{k}']:+.3f} -> {last[f'score_{k}']:+.3f}"
                           for k in ("helpful", "harmless"))
        head = (f"done: iterations {start + 1}-{reached} of {total} in {seconds:.0f} s; "
                f"{change} (iteration {first['iteration']} -> {reached}), kl {last['kl']:.3f}")
    lines = [head, f"checkpoint: {cfg.out_dir}/checkpoint (policy in Hugging Face format under "
                   f"policy/); log: {log_path}"]
    if reached < total:
        lines.append(f"next: python train.py --out_dir {cfg.out_dir} --resume   (goes on to "
                     f"iteration {total})")
    else:
        lines.append(f"next: python evaluate.py {cfg.out_dir}   (scores it beside the SFT start)")
    return "\n".join(lines)


def load_policy_weights(policy, path):
    """Load a checkpoint's policy weights into the freshly built policy (full or LoRA adapter)."""
    if hasattr(policy, "peft_config"):
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights
        set_peft_model_state_dict(policy, load_peft_weights(path))
    else:
        from transformers import AutoModelForCausalLM
        saved = AutoModelForCausalLM.from_pretrained(path, dtype=next(policy.parameters()).dtype)
        policy.load_state_dict(saved.state_dict())


def load_checkpoint(resume_from, policy, critic, optimizers, schedulers, world):
    """Restore optimizer, scheduler and RNG states of a checkpoint (the weights were loaded with the
    models). Returns (iteration reached, the method's state as a dict)."""
    path = os.path.join(resume_from, "trainer_state.pt")
    try:
        saved = torch.load(path, weights_only=False, mmap=world > 1)
    except Exception as err:  # a truncated or foreign file: pickle, zip and EOF errors alike
        reason = str(err).split(". ")[0]  # torch's messages run on for a paragraph
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {reason}); restore "
                              f"the checkpoint from a copy, or start afresh with "
                              f"--overwrite.") from None
    if "optimizers" in saved:  # saved before optim/: full state dicts, rank 0's layout
        for m, o, s in zip((policy, critic), optimizers, saved["optimizers"]):
            distributed.load_optimizer_state_dict(m, o, s)
    else:  # each rank reads the slices it holds now, whatever the world size that saved them
        from torch.distributed.checkpoint.api import CheckpointException
        optim = os.path.join(resume_from, "optim")
        if not os.path.isfile(os.path.join(optim, ".metadata")):
            raise CheckpointError(f"{optim} holds no optimizer states (.metadata is missing); "
                                  f"restore the checkpoint from a copy, or start afresh with "
                                  f"--overwrite.")
        try:
            distributed.load_optimizers(_optimized(policy, critic, optimizers), optim)
        except (Exception, CheckpointException) as err:  # a missing or foreign folder
            reason = _checkpoint_error(err)
            raise CheckpointError(f"{optim} cannot be read ({reason}); restore the checkpoint "
                                  f"from a copy, or start afresh with --overwrite.") from None
    for scheduler, s in zip(schedulers, saved["schedulers"]):
        scheduler.load_state_dict(_regrouped(s, len(scheduler.optimizer.param_groups)))
    torch.set_rng_state(saved["rng"]["torch"])
    np.random.set_state(saved["rng"]["numpy"])
    random.setstate(saved["rng"]["python"])
    if saved["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    return saved["iteration"], saved["method_state"]


def _regrouped(scheduler_state, groups):
    """A scheduler's state for `groups` param groups: its per-group lists (base_lrs, _last_lr,
    lr_lambdas) sized anew. One process has one group, torchrun two (sharded and whole, see
    distributed.adamw), and every group of an optimizer here follows the same learning rate."""
    out = dict(scheduler_state)
    for key, value in scheduler_state.items():
        if isinstance(value, list) and len(value) != groups:
            if any(repr(v) != repr(value[0]) for v in value):
                raise CheckpointError(f"the checkpoint's learning-rate schedule differs between "
                                      f"param groups ({key}); it cannot resume on "
                                      f"{groups} group(s).")
            out[key] = value[:1] * groups
    return out


# ------------------------------------------------------------------------------------ logging

def read_log(log_path):
    """The log's records; a line that is not JSON (a write cut short by a full disk or a kill) is
    skipped, so it can never block a resume."""
    if not os.path.isfile(log_path):
        return []
    records = []
    with open(log_path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return [r for r in records if isinstance(r, dict) and "iteration" in r]


def truncate_log(log_path, iteration):
    """Keep only the log lines of iterations <= the checkpoint's, so a resumed log has no
    duplicates."""
    if not os.path.isfile(log_path):
        return
    lines = [json.dumps(r) + "\n" for r in read_log(log_path) if r["iteration"] <= iteration]
    with open(log_path, "w") as f:
        f.writelines(lines)


def append_log(log_path, record):
    if distributed.is_main():
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")


def average_logs(logs):
    """Mean over minibatches of every numeric (or list of numbers) entry; booleans are counted."""
    out = {}
    for key in logs[0]:
        values = [entry[key] for entry in logs if key in entry]
        if isinstance(values[0], bool):
            out[key] = sum(values)
        elif isinstance(values[0], (int, float)):
            out[key] = float(np.mean(values))
        elif isinstance(values[0], list):
            out[key] = np.mean(np.array(values, dtype=float), axis=0).tolist()
    return out


def format_log_line(r):
    extra = ""
    if r.get("alpha"):
        extra += " alpha=" + ",".join(f"{a:.2f}" for a in r["alpha"])
    if r.get("grad_cosine"):
        extra += f" cos={r['grad_cosine'][0][1]:+.2f}"
    if r.get("lambda") is not None:
        extra += f" lambda={r['lambda']:.3f}"
    if r.get("actor_grad_norm") is not None:
        extra += f" gnorm={r['actor_grad_norm']:.3g}"
    return (f"iter {r['iteration']:4d} helpful {r['score_helpful']:+.3f} "
            f"harmless {r['score_harmless']:+.3f} kl {r['kl']:.3f} len {r['response_length']:.1f} "
            f"clip {r['clip_fraction']:.2f}{extra} | gen {r['time_generate']:.2f}s "
            f"score {r['time_score']:.2f}s update {r['time_update']:.2f}s")
