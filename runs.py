"""Everything around the method that train.py needs: the command line, run folders, checkpoints, resume.

train.py holds the algorithm (Config, one iteration, the loop); this file holds the plumbing, so that
train.py reads top to bottom as the method:
- `parse_config`: the command line, generated from train.Config (one flag per field; `--help` prints
  each field's comment and default), presets first, explicit flags win; `check_config` refuses bad
  values with one sentence before any model loads.
- `prepare_out_dir`: one run per folder; `--resume` continues it, `--overwrite` replaces it.
- `save_checkpoint` / `load_checkpoint`: atomic checkpoints (everything written to checkpoint.tmp, then
  two renames), so a crash at any moment leaves the last good checkpoint; a resumed CPU run continues
  bit for bit (RNG states, optimizer and scheduler states, the method's state are all saved).
- `resolve_models` / `prompt_pool`: the built-in toy world fills any model or prompt path left empty.
- `log_record` helpers: log.jsonl (one JSON line per iteration) and the one-line terminal summary.

Run: nothing to run; `python -m pytest -q tests/test_train.py` exercises it through train.py.
Left out on purpose: experiment trackers (log.jsonl is plain JSON lines), multi-node file systems.
"""
import argparse
import dataclasses
import inspect
import json
import math
import os
import random
import re
import shutil

import numpy as np
import torch

import gapo
from data import format_policy_prompt, load_prompts
from scale import distributed

# Fields a resumed run may change: they do not change what the run computes.
VOLATILE = {"resume", "overwrite", "save_every", "stop_after", "device", "num_threads", "out_dir"}


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
            parser.add_argument(f"--{f.name}", nargs="?", const=True, type=_parse_bool, help=help_text,
                                metavar="BOOL")
        else:
            parser.add_argument(f"--{f.name}", type=kind, help=help_text, metavar=kind.__name__.upper())
    explicit = vars(parser.parse_args(argv))
    preset = explicit.get("preset", config_class.preset)
    if preset not in presets:
        raise SystemExit(f"error: unknown preset {preset!r}; choose one of {', '.join(presets)}.")
    lora = {}
    if lora_lr and explicit.get("lora_r", presets[preset].get("lora_r", config_class.lora_r)) > 0:
        lora = {"actor_lr": lora_lr[preset], "critic_lr": lora_lr[preset]}  # LoRA's own rates
    return config_class(**{**presets[preset], **lora, **explicit})


def parse_pref(text, K):
    try:
        pref = [float(x) for x in str(text).split(",")]
    except ValueError:
        pref = []
    if len(pref) != K or any(not math.isfinite(x) or x < 0 for x in pref) or abs(sum(pref) - 1) > 1e-6:
        raise ValueError(f"--pref must be {K} non-negative numbers summing to 1, such as 0.4,0.6 "
                         f"(got {text!r}).")
    return pref


def check_config(cfg, K):
    """Bad input stops here, before any model loads, with one sentence each. Returns the preference."""
    if cfg.method not in gapo.METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {', '.join(gapo.METHODS)}.")
    if not (cfg.p >= 0 and math.isfinite(cfg.p)):
        raise ValueError(f"--p must be a finite number >= 0 (got {cfg.p}); p = 0 is plain MGDA.")
    pref = parse_pref(cfg.pref, K)
    if cfg.method == "safe-rlhf" and K != 2:
        raise ValueError("safe-rlhf needs exactly a reward and a cost objective.")
    if cfg.minibatch_size % cfg.micro_batch_size or cfg.batch_size % cfg.minibatch_size:
        raise ValueError(f"batch_size ({cfg.batch_size}) must be a multiple of minibatch_size "
                         f"({cfg.minibatch_size}), itself a multiple of micro_batch_size "
                         f"({cfg.micro_batch_size}).")
    if cfg.mgda_params not in ("last_block", "lm_head", "all"):
        raise ValueError(f"unknown mgda_params {cfg.mgda_params!r}; choose last_block, lm_head or all.")
    if cfg.toy_size not in ("default", "tiny"):
        raise ValueError(f"unknown toy_size {cfg.toy_size!r}; choose default or tiny.")
    if cfg.critic_init not in ("first_rollout", "zero"):
        raise ValueError(f"unknown critic_init {cfg.critic_init!r}; choose first_rollout or zero.")
    if cfg.weight_scale not in ("sum_one", "raw"):
        raise ValueError(f"unknown weight_scale {cfg.weight_scale!r}; choose sum_one or raw.")
    if not (0 <= cfg.adam_beta1 < 1 and 0 <= cfg.adam_beta2 < 1):
        raise ValueError(f"--adam_beta1 and --adam_beta2 must lie in [0, 1) "
                         f"(got {cfg.adam_beta1}, {cfg.adam_beta2}).")
    return pref


def default_out_dir(cfg):
    tag = cfg.method
    if cfg.method in ("gapo", "gapo-eq17"):
        tag += f"-p{cfg.p:g}"
    if cfg.method in ("pgapo", "morlhf"):
        tag += "-pref" + cfg.pref.replace(",", "_")
    return os.path.join("runs", f"{tag}-s{cfg.seed}")


# ------------------------------------------------------------------------------------ run folder

def find_checkpoint(out_dir):
    """The last complete checkpoint folder, recovering from a crash between the two renames."""
    final, old = os.path.join(out_dir, "checkpoint"), os.path.join(out_dir, "checkpoint.old")
    if not os.path.isdir(final) and os.path.isdir(old):
        os.rename(old, final)
    if not os.path.isfile(os.path.join(final, "trainer_state.pt")):
        raise FileNotFoundError(f"no checkpoint to resume in {out_dir}; drop --resume to start a new "
                                f"run there.")
    return final


def prepare_out_dir(cfg):
    """Refuse to mix two runs in one folder unless --resume or --overwrite says what to do.
    Returns the checkpoint folder to resume from, or None for a new run."""
    config_file = os.path.join(cfg.out_dir, "train_config.json")
    if cfg.resume:
        saved = {}
        if os.path.isfile(config_file):
            with open(config_file) as f:
                saved = json.load(f)
        # Empty model paths are filled from the toy world later, so they match whatever was saved.
        different = sorted(k for k, v in saved.items()
                           if k not in VOLATILE and getattr(cfg, k, v) not in (v, ""))
        if different:
            raise ValueError(f"--resume with a different configuration ({', '.join(different)}) than "
                             f"the run in {cfg.out_dir}; use the same flags or another --out_dir.")
        return find_checkpoint(cfg.out_dir)
    if os.path.isdir(cfg.out_dir) and os.listdir(cfg.out_dir):
        if not cfg.overwrite:
            raise ValueError(f"{cfg.out_dir} already holds a run; pass --resume to continue it, "
                             f"--overwrite to replace it, or another --out_dir.")
        shutil.rmtree(cfg.out_dir)
    os.makedirs(cfg.out_dir, exist_ok=True)
    return None


def write_config(cfg):
    with open(os.path.join(cfg.out_dir, "train_config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)


def start_run(cfg):
    """Parse-time checks done: start the process group (torchrun), prepare the run folder (rank 0
    first, then the others find it), seed everything. Returns (rank, world, device, resume_from)."""
    cfg.out_dir = cfg.out_dir or default_out_dir(cfg)
    rank, world, device = distributed.init_distributed(cfg.device)  # torchrun: one process per GPU
    with distributed.main_first():
        if rank == 0:
            resume_from = prepare_out_dir(cfg)
        else:
            resume_from = find_checkpoint(cfg.out_dir) if cfg.resume else None
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    return rank, world, device, resume_from


# ------------------------------------------------------------------------------------ models and data

def resolve_models(cfg):
    """Fill policy / reward / cost from the toy world when they are empty (rank 0 builds it first).
    Returns the toy world module when the prompts come from it, else None."""
    if cfg.policy and cfg.reward_model and cfg.cost_model and cfg.prompts:
        return None
    from worlds import toyworld
    with distributed.main_first():
        print(f"toy world: using (or building, on first use) the toy helpful-vs-harmless world in "
              f"{cfg.toy_dir}")
        toyworld.ensure_toyworld(cfg.toy_dir, size=cfg.toy_size)
    paths = toyworld.toy_paths(cfg.toy_dir)
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
    """Prompt indices of the `position`-th batch: a seeded permutation per pass over the prompts, so a
    resumed run sees the same batches (under torchrun, rank r takes the r-th of `world` batches)."""
    start = position * cfg.batch_size
    epoch = start // n_prompts
    order = np.concatenate([np.random.default_rng(cfg.seed + epoch + i).permutation(n_prompts)
                            for i in (0, 1)])
    offset = start % n_prompts
    return order[offset:offset + cfg.batch_size].tolist()


# ------------------------------------------------------------------------------------ checkpoints

def save_checkpoint(out_dir, cfg, policy, tokenizer, critic, optimizers, schedulers, state, iteration):
    """Write out_dir/checkpoint atomically: everything goes to checkpoint.tmp, then two renames.
    A crash at any point leaves a complete checkpoint (or checkpoint.old, which load recovers)."""
    optimizer_states = [distributed.optimizer_state_dict(m, o) for m, o in zip((policy, critic), optimizers)]
    # torchrun: every rank gathers the full weights, rank 0 writes them, and the others wait for it,
    # so no rank runs ahead (or exits and tears the process group down) while the write goes on.
    with distributed.full_parameters(policy), distributed.full_parameters(critic):
        if distributed.is_main():
            _write_checkpoint(out_dir, cfg, policy, tokenizer, critic, optimizer_states, schedulers, state,
                              iteration)
    distributed.barrier()


def _write_checkpoint(out_dir, cfg, policy, tokenizer, critic, optimizer_states, schedulers, state,
                      iteration):
    final, tmp, old = (os.path.join(out_dir, n) for n in ("checkpoint", "checkpoint.tmp", "checkpoint.old"))
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(os.path.join(tmp, "policy"))  # HF format: from_pretrained loads it alone
    tokenizer.save_pretrained(os.path.join(tmp, "policy"))
    critic.save(os.path.join(tmp, "critic"))
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save({"iteration": iteration, "method_state": dataclasses.asdict(state),
                "optimizers": optimizer_states, "schedulers": [s.state_dict() for s in schedulers],
                "rng": rng}, os.path.join(tmp, "trainer_state.pt"))
    with open(os.path.join(tmp, "train_config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)
    if os.path.isdir(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


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
    saved = torch.load(os.path.join(resume_from, "trainer_state.pt"), weights_only=False, mmap=world > 1)
    for m, o, s in zip((policy, critic), optimizers, saved["optimizers"]):
        distributed.load_optimizer_state_dict(m, o, s)
    for scheduler, s in zip(schedulers, saved["schedulers"]):
        scheduler.load_state_dict(s)
    torch.set_rng_state(saved["rng"]["torch"])
    np.random.set_state(saved["rng"]["numpy"])
    random.setstate(saved["rng"]["python"])
    if saved["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    return saved["iteration"], saved["method_state"]


# ------------------------------------------------------------------------------------ logging

def truncate_log(log_path, iteration):
    """Keep only the log lines of iterations <= the checkpoint's, so a resumed log has no duplicates."""
    if not os.path.isfile(log_path):
        return
    with open(log_path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["iteration"] <= iteration]
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
