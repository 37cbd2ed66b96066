"""What evaluate.py evaluates: run folders found and resolved to Targets, their SFT starts, rows.

A Target is one row-to-be of Table 1 (paper Sec. 4.2): a run's checkpoint, the SFT start it is
compared with, or a soup (evals/soups.py).
- find_targets / find_runs / resolve_run: the folders given (a folder of runs, runs/study, stands
  for the runs in it), each a run folder or its checkpoint folder; the checkpoint's files are
  checked against files.json (runs.check_checkpoint: a cut file is one sentence, not a load error)
  and how far the run got is read (checkpoint_progress). A folder that is no run fails alone.
- ensure_toy_models: a deleted or damaged toy world is rebuilt, as train.py does (seeded, so it is
  the world the run trained in); a smol run's prepared parts are only checked.
- sft_targets: one SFT baseline per distinct start x scorers x prompts x generation settings
  (the scorers: a run's --objective list when it has one, so the baseline is scored as it is).
- label_targets: each target's table row, kept honest: an unfinished run gets a row of its own, a
  second run of the same row and seed is left out.

Run: nothing to run; evaluate.py calls it; tests/test_evaluate.py checks it through the command
line (bad folders, cut files, unfinished runs, duplicate seeds, a deleted toy world).
Left out on purpose: loading the models (evaluate.py does, only when a result is not cached).
"""
import json
import os
from dataclasses import dataclass

from evals.tables import GEN_FIELDS, group_labels
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



def find_targets(given, fail):
    """Targets for the run or checkpoint folders given (a folder of runs, runs/study, stands for
    the runs inside it); by default every run under runs/ but the other presets' folders
    (runs/smol, runs/paper: other prompts). A folder that is no run is reported through
    fail(path, error) and left out."""
    targets, paths = [], []
    given = given or [p for p in find_runs("runs")
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
    return targets


def sft_targets(targets):
    """The SFT baselines: one per distinct start x scorers x prompts x generation settings, named
    "sft" when there is only one. Sets each target's .sft to the name of the one it started
    from."""
    sft = {}

    def start_of(t):  # the SFT target a run (or soup) started from, shared by equal starts
        fields = ["policy", "reward_model", "cost_model", "prompts", "prompt_split"] + GEN_FIELDS
        if t.config.get("preset") == "smol":  # evaluated on the real sets (evaluate.prompt_set)
            fields += ["preset", "smol_data"]
        cfg = {k: t.config.get(k) for k in fields}
        # the scorers read as the run read them (runs from before the flag: auto)
        cfg["scorer_format"] = t.config.get("scorer_format") or "auto"
        if t.config.get("objective"):  # scored with the run's own objectives (evals/objectives)
            cfg["objective"] = list(t.config["objective"])
        key = json.dumps(cfg, sort_keys=True)
        return sft.setdefault(key, Target(f"sft (start of {t.name})", {**cfg, "method": "sft"}))
    for t in targets:
        t.sft = start_of(t)
    if len(sft) == 1:
        next(iter(sft.values())).name = "sft"
    for t in targets:
        t.sft = t.sft.name
    return list(sft.values())


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
