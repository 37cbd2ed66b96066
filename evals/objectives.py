"""The objectives evaluate.py scores a run with: its own --objective list, or the paper's two.

A run trained with --objective NAME=SOURCE flags (train.py; docs/decisions.md, "Objectives") is
evaluated on those K objectives, rebuilt from its train_config.json (docs/decisions.md,
"Evaluation at K > 2"):
- objective_specs: (name, source, sign) of each (cli.parse_objective); a run without a list has
  the paper's two, helpful = reward_model and harmless = -cost_model;
- check_same_objectives: the runs of one table share their objective names, in order, or the
  call stops with one sentence;
- table_columns: Table 1's columns (evals/tables.Columns): one per objective under its name, the
  mean of sign x score; Avg = the mean of those K; a "<name>_ratio" column for each objective
  that is a score model with sign -1 (a cost): the share of responses with score <= 0, as Harmless
  ratio is. A Python function with sign -1 gets none: its zero means nothing in particular;
- load_objectives: a rewards.Objective each, score models reading the run's scorer_format, py:
  functions imported from the current folder (loading.python_scorer); each model loaded once
  (load_scorers: the reward and cost Scorers of a run without a list);
- fingerprint, objective_identity: what makes cached results stale (the models' files, a py:
  function's source file);
- row_metrics: a row's numbers from its cached scores, for either kind of run.
Runs without a list keep evaluate.py's reward-and-cost path (same cache files, same numbers).

Run: nothing to run; evaluate.py calls it, tests/test_evaluate_k.py checks it.
Left out on purpose: the modules a py: function imports in the cache key (only its own file is
hashed: delete <out>/cache/ after editing a helper it imports).
"""
import hashlib
import inspect
import os

import numpy as np

from cli import parse_objective
from evals.tables import DEFAULT_COLUMNS, TOY_METRICS, Columns, response_metrics

# Keys a per-run or table row holds beside its numbers: an objective's column cannot take one.
ROW_KEYS = {"name", "group", "family", "lam", "seed", "seeds", "method", "prompts", "n_prompts",
            "n_responses", "cache", "sft", "kinds", "identity"}


def listed(cfg):
    """True when the run trained on its own --objective list."""
    return bool(cfg.get("objective"))


def objective_specs(cfg):
    """[(name, source, sign)] of a train_config, in order: its objective list, else helpful =
    reward_model and harmless = -cost_model."""
    if not listed(cfg):
        return [("helpful", cfg.get("reward_model"), 1.0),
                ("harmless", cfg.get("cost_model"), -1.0)]
    return [parse_objective(text) for text in cfg["objective"]]


def names_of(cfg):
    return [name for name, _, _ in objective_specs(cfg)]


def is_cost(spec):
    """A score model whose score is minimised: it says unsafe above 0, as the cost model does."""
    _, source, sign = spec
    return sign < 0 and not str(source).startswith("py:")


def check_same_objectives(targets):
    """One sentence (ValueError) when the targets' objective names differ in any way, order
    included: their columns would not line up."""
    for t in targets[1:]:
        first, names = targets[0], names_of(t.config)
        if names != names_of(first.config):
            raise ValueError(
                f"{first.name} was trained on the objectives ({', '.join(names_of(first.config))}) "
                f"and {t.name} on ({', '.join(names)}); evaluate runs with the same objective "
                f"names in the same order together, one evaluate.py call (and --out) per set.")


def table_columns(configs):
    """Table 1's objective columns for runs sharing their objective names (check_same_objectives):
    the paper's when none has a list; otherwise titled by the names, a ratio column for every name
    some run scores with a cost model. An objective name that would overwrite another column is
    one sentence (ValueError)."""
    if not any(listed(c) for c in configs):
        return DEFAULT_COLUMNS
    names = names_of(configs[0])
    costs = {spec[0] for c in configs for spec in objective_specs(c) if is_cost(spec)}
    columns = Columns(tuple(names), tuple(names), tuple(n for n in names if n in costs))
    from evals.chat import CHAT_METRICS
    # harmless_ratio too: the table prints it as a share, whatever it holds
    keys = columns.metrics
    taken = ROW_KEYS | {"harmless_ratio"} | set(TOY_METRICS) | set(CHAT_METRICS)
    for name in names:
        if name in taken or keys.count(name) > 1 or (name.endswith("_std")
                                                     and name[:-len("_std")] in keys):
            raise ValueError(f"the objective name {name!r} is also a column of Table 1; rename it "
                             f"in the runs' train_config.json objective lists (NAME=SOURCE) to "
                             f"evaluate them.")
    return columns


def describe_columns(cfg, columns):
    """The header's sentence on what each objective column holds (runs with a list)."""
    parts = []
    for name, source, sign in objective_specs(cfg):
        what = source if source.startswith("py:") else os.path.basename(os.path.normpath(source))
        parts.append(f"{name} = mean {'-' if sign < 0 else ''}{what}")
    ratios = "".join(f", {n} ratio = share with {n}'s cost <= 0" for n in columns.ratios)
    return f"{', '.join(parts)}, Avg = the mean of these {len(columns.names)}{ratios}"


def load_scorers(cfg, device, dtype, cache):
    """[reward, cost] Scorers of a run without a list, each reading the text the run trained
    with: its scorer_format ("auto" for runs saved before the flag, which is what they read).
    Loaded once per model and format (kept in cache)."""
    from rewards import describe_scorers, load_scorer
    scorer_format = cfg.get("scorer_format") or "auto"
    scorers, new = [], False
    for name in ("reward", "cost"):
        key = ("scorer", cfg[name + "_model"], scorer_format)
        if key not in cache:
            cache[key] = load_scorer(key[1], device, dtype, name, scorer_format)
            new = True
        scorers.append(cache[key])
    if new:
        print(describe_scorers(scorers))
    return scorers


def load_objectives(cfg, device, dtype, cache):
    """The run's rewards.Objective list: score models (loaded once per source, format and name,
    kept in cache) read in its scorer_format ("auto" for runs saved before the flag); py:
    functions imported from the current folder. Says which text each newly loaded model reads."""
    from loading import python_scorer
    from rewards import Objective, describe_scorers, load_scorer
    scorer_format = cfg.get("scorer_format") or "auto"
    objectives, new = [], []
    for name, source, sign in objective_specs(cfg):
        if source.startswith("py:"):
            scorer = python_scorer(source)
        else:
            key = ("scorer", source, scorer_format, name)
            if key not in cache:
                cache[key] = load_scorer(source, device, dtype, name, scorer_format)
                new.append(cache[key])
            scorer = cache[key]
        objectives.append(Objective(name, scorer, sign))
    if new:
        print(describe_scorers(new))
    return objectives


def fingerprint(path):
    """What makes a cached result stale: a local folder's weight/config files (name, size, mtime),
    or a Hub id."""
    if not os.path.isdir(path):
        return [path]
    files = sorted(f for f in os.listdir(path)
                   if f.endswith((".safetensors", ".bin", ".pt", ".json")))
    stat = lambda f: os.stat(os.path.join(path, f))
    return [os.path.abspath(path)] + [(f, stat(f).st_size, stat(f).st_mtime) for f in files]


def objective_identity(cfg):
    """What the cached scores of a run with a list depend on: each objective's name, sign and
    scorer_format, and its score model's files (fingerprint) or its py: function's source file
    (hashed; the spec alone when there is no file)."""
    from loading import python_scorer
    out = []
    for name, source, sign in objective_specs(cfg):
        if source.startswith("py:"):
            what = [source]
            try:
                with open(inspect.getsourcefile(python_scorer(source)), "rb") as f:
                    what.append(hashlib.sha256(f.read()).hexdigest())
            except (TypeError, OSError):  # a built-in or a function without a file
                pass
        else:
            what = fingerprint(source)
        out.append([name, sign, cfg.get("scorer_format") or "auto", what])
    return out


def row_metrics(result, cfg):
    """(Table 1's numbers, the raw cost per response for the toy world's "cost sign ok", or None)
    of one evaluated target's cached result. Runs without a list: evals/tables.response_metrics
    of its reward and cost, unchanged. Runs with one: each objective's mean of sign x score, Avg
    = their mean, and <name>_ratio = share with score <= 0 for each cost model; the raw cost is
    the first cost model's."""
    if not listed(cfg):
        return response_metrics(result["reward"], result["cost"]), result["cost"]
    specs = objective_specs(cfg)
    values = {name: np.asarray(result["objectives"][name], dtype=np.float64)
              for name, _, _ in specs}
    out = {name: float(v.mean()) for name, v in values.items()}
    out["avg"] = float(np.mean([out[name] for name, _, _ in specs]))
    costs = [spec[0] for spec in specs if is_cost(spec)]
    for name in costs:
        out[name + "_ratio"] = float((values[name] >= 0).mean())  # sign -1: -score >= 0
    return out, (-values[costs[0]] if costs else None)
