"""The run folder of train.py: one run per folder, atomic checkpoints, resume, the log.

- `prepare_out_dir`: one run per folder; `--resume` continues it, `--overwrite` replaces it.
  One process per folder (a flock on out_dir/.lock); a folder with no checkpoint is a failed
  start and starts afresh; `--resume` reuses the saved configuration (cli.py, docs/errors.md).
- `batch_indices`: a seeded prompt order, so a resumed run sees the same batches.
- `save_checkpoint` / `load_checkpoint`: atomic checkpoints (everything written to checkpoint.tmp,
  then two renames), so a crash at any moment leaves the last good checkpoint; a resumed CPU run
  continues bit for bit (RNG states, optimizer and scheduler states, the method's state are all
  saved). Every rank writes its own shard of the optimizer states (optim/), which resume on any
  number of ranks.
- `read_log` / `append_log` / `format_log_line` / `summary`: log.jsonl (one JSON line per
  iteration), the one-line terminal record, and the start-to-end summary with the next command.

Run: nothing to run; `python -m pytest -q tests/test_train.py` exercises it through train.py.
Left out on purpose: experiment trackers (log.jsonl is plain JSON lines), multi-node file systems.
"""
import dataclasses
import fcntl
import json
import os
import random
import re
import shutil
import socket
import sys

import numpy as np
import torch

from cli import default_out_dir
from scale import distributed

LOCK = ".lock"  # in the run folder: held (flock) by the one process driving the run
# What train.py writes in a run folder; only these and no checkpoint: a failed start.
RUN_FILES = {"train_config.json", "log.jsonl", "checkpoint", "checkpoint.tmp", "checkpoint.old",
             LOCK}
HISTORY = re.compile(r"checkpoint-(\d+)$")  # earlier checkpoints kept by --keep_checkpoints


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
    if cfg.resume and not os.path.isdir(cfg.out_dir):  # a typo must not start a new run
        raise ValueError(f"--resume: {cfg.out_dir} does not exist, so there is no run to "
                         f"continue; check the path, or drop --resume to start a new run there.")
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
    elif any(e not in RUN_FILES and not HISTORY.match(e) for e in entries):
        strays = ", ".join(e for e in entries if e not in RUN_FILES and not HISTORY.match(e))
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


# ------------------------------------------------------------------------------------ batches

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
        if cfg.keep_checkpoints > 1 and os.path.isdir(old):
            keep_history(out_dir, old, cfg.keep_checkpoints - 1)
        shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()  # the renamed checkpoint is there before any rank goes on
    if error is not None:
        if distributed.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        raise SaveError(f"saving the checkpoint of iteration {iteration} failed ({error}); free "
                        f"disk space")


def keep_history(out_dir, previous, n):
    """--keep_checkpoints: the checkpoint just replaced becomes checkpoint-<its iteration> (a
    rename, no copy), and only the newest n of those stay. Each is a complete checkpoint folder
    that evaluate.py scores like the latest (python evaluate.py RUN/checkpoint-50)."""
    try:
        with open(os.path.join(previous, "files.json")) as f:
            iteration = json.load(f)["iteration"]
    except (OSError, ValueError, KeyError):  # saved before files.json: no iteration to name it by
        return  # the caller deletes it, as without --keep_checkpoints
    os.rename(previous, os.path.join(out_dir, f"checkpoint-{iteration}"))
    history = sorted((int(m.group(1)), name) for name in os.listdir(out_dir)
                     if (m := HISTORY.match(name)))
    for _, name in history[:-n]:
        shutil.rmtree(os.path.join(out_dir, name))


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
        names = [k[len("score_"):] for k in last if k.startswith("score_")]  # the objectives
        change = ", ".join(f"{k} {first[f'score_{k}']:+.3f} -> {last[f'score_{k}']:+.3f}"
                           for k in names)
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
    scores = " ".join(f"{k[len('score_'):]} {v:+.3f}" for k, v in r.items()
                      if k.startswith("score_"))  # one per objective, in order
    return (f"iter {r['iteration']:4d} {scores} kl {r['kl']:.3f} len {r['response_length']:.1f} "
            f"clip {r['clip_fraction']:.2f}{extra} | gen {r['time_generate']:.2f}s "
            f"score {r['time_score']:.2f}s update {r['time_update']:.2f}s")
