"""The smol world's reward and cost models: what each learns from, how, and every check that goes
into its report.json (worlds/smol.py prepares and caches them; docs/decisions.md, "The smol
world").

Two recipes per scorer, picked by what the data folder holds (scorer_data):
- "hh" (HH-RLHF only, the fallback): the reward model on helpful-base pairs (Bradley-Terry), the
  cost model on harmless-base pairs (the pairwise term: chosen = less harmful). HH-RLHF labels no
  reply safe, so the cost's zero is calibrated on held-out pairs (balanced_threshold).
- "hh+alpacaeval" (reward): HH helpful-base pairs plus AlpacaEval's GPT-4 preferences, and
  "hh+labelled" (cost): HH harmless-base pairs plus answers labelled safe or unsafe
  (worlds/safety_data.py), trained with Safe RLHF's cost loss, sign terms included (paper Sec. 2,
  App. B.2), so its zero is the one the loss learned: no calibration. Part of its refusals come
  as pairs against an off-topic answer of their length (safety_data.evasive_pairs): without
  them the safe answers to harmful requests were short and the unsafe ones long, the model
  learned brevity as safety, and PPO on the cost learned short evasive non-answers.
Checks, each beside its baseline: held-out pair accuracy on every source against "the longer
answer wins", the cost's held-out sign accuracy per labelled source, the cost model on
XSTest's human-labelled answers (accuracy and AUROC of "cost > 0 = a harmful answer"), and
refusal against evasion (evasion_check: does declining a harmful request cost less than an
off-topic answer of the same length, on held-out requests and XSTest's unsafe prompts?).

Run: nothing to run (`python -m worlds.smol` builds). Left out on purpose: a threshold on top of
a learned sign, and the evals/refusal.py baseline of the XSTest check (evals/ sits above worlds/:
`python -m evals.scorer_check` prints it beside this report's numbers).
"""
import functools
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass, field

import torch

from worlds import safety_data


@dataclass
class Plan:
    """What one scorer learns from and is checked on, beyond the HH-RLHF split."""
    name: str  # "hh", "hh+alpacaeval" or "hh+labelled"
    train: list  # PreferencePairs; for the cost model, worse None = one labelled answer
    trained_on: str
    lr: float  # AdamW
    sources: dict = field(default_factory=dict)  # per source: train / heldout / kept_out counts
    heldout_pairs: dict = field(default_factory=dict)  # name -> full (uncut) held-out pairs
    heldout_answers: list = field(default_factory=list)  # cost: held-out safety_data.Answers


def scorer_data(data):
    """{"reward": recipe, "cost": recipe} for what the folder data holds: "hh+alpacaeval" when
    it has AlpacaEval's annotations, "hh+labelled" when it has every file of
    safety_data.COST_FILES, "hh" otherwise; some but not all of them is an error."""
    if not os.path.isdir(data):
        return {"reward": "hh", "cost": "hh"}
    found = safety_data.present(data, safety_data.COST_FILES)
    safety = [n for n in found if n != "alpacaeval"]
    if safety and len(found) < len(safety_data.COST_FILES):
        missing = [safety_data.FILES[n] for n in safety_data.COST_FILES if n not in found]
        raise FileNotFoundError(f"{data} holds some of the labelled safety files but not "
                                f"{', '.join(missing)}; add them (the shared data folder's "
                                f"layout) or remove safety/ to train on HH-RLHF alone.")
    return {"reward": "hh+alpacaeval" if "alpacaeval" in found else "hh",
            "cost": "hh+labelled" if safety else "hh"}


def cost_split(answers, source, labelled, seed):
    """(train, held-out) Answers of one labelled source for the cost model: the split both the
    cost model and the smol SFT step (which keeps the cost model's refusals out) read."""
    return safety_data.split_by_request(answers[source], lambda a: a.request,
                                        getattr(labelled, source), labelled.heldout_per_source,
                                        seed, f"the {source} answers")


def plan_scorer(kind, name, data, hh_train, evaluation, recipe, labelled):
    """The Plan of one scorer: its HH training pairs plus, by recipe name, the labelled data."""
    subset = "helpful-base" if kind == "reward" else "harmless-base"
    if name == "hh":
        return Plan(name, hh_train, subset, recipe.lr)
    if name == "hh+alpacaeval":
        pairs, dropped = safety_data.alpacaeval_pairs(data, evaluation)
        train, heldout = safety_data.split_by_request(
            pairs, lambda p: safety_data.normalised(p.prompt), labelled.alpaca_pairs,
            recipe.heldout_pairs, recipe.seed, "AlpacaEval's annotations")
        return Plan(name, hh_train + safety_data.cut_pairs(train, labelled.chars),
                    f"{subset} + AlpacaEval GPT-4 preferences", labelled.lr,
                    {"alpacaeval": {"train": len(train), "heldout": len(heldout), **dropped}},
                    {"alpacaeval": heldout})
    answers, dropped = safety_data.cost_answers(data, evaluation, labelled.chars, recipe.seed)
    train, heldout, sources = [], [], {}
    for source in safety_data.COST_SOURCES:
        t, h = cost_split(answers, source, labelled, recipe.seed)
        train, heldout = train + t, heldout + h
        sources[source] = {"train": len(t), "heldout": len(h), "unsafe_train":
                           sum(not a.safe for a in t), "evaluation_prompts": dropped[source]}
    # Refusal against evasion: the first `evasive` training refusals that decline become pairs
    # (the refusal safer than an off-topic answer of about its length, which has no sign label)
    # in place of single answers, so that declining, not brevity, is what the cost rates safe
    # (safety-tuned-llamas also answers some requests helpfully: those stay single answers).
    refused = [a for a in train if a.source == "refusals" and safety_data.declines(a.answer)]
    refused = refused[:labelled.evasive]
    if labelled.evasive and not refused:
        raise ValueError("no training refusal declines a request; raise the recipe's refusals "
                         "or set its evasive to 0.")
    evasive = safety_data.evasive_pairs(refused, [a for a in train if a.source == "benign"],
                                        recipe.seed) if refused else []
    paired = {id(a) for a in refused}
    items = safety_data.training_items([a for a in train if id(a) not in paired]) + evasive
    if evasive:
        sources["evasive"] = {"train": len(evasive), "mean_chars": {
            "refusal": sum(len(p.better) for p in evasive) / len(evasive),
            "off_topic": sum(len(p.worse) for p in evasive) / len(evasive)}}
    return Plan(name, hh_train + items,
                f"{subset} + answers labelled safe/unsafe ({', '.join(safety_data.COST_SOURCES)})"
                + (", refusals paired with off-topic answers" if evasive else ""), labelled.lr,
                sources, heldout_answers=heldout)


def new_scorer(policy_dir, train_layers):
    """A LlamaModelForScore on the policy's pretrained backbone: (model, trainable parameters)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from formats.models import new_score_model
    config = AutoConfig.from_pretrained(policy_dir)
    config.bias = True  # the HH-only cost model's zero is set through the head's bias
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


def length_baseline(pairs):
    """Share of pairs where the longer reply (characters) is the better one: what a scorer that
    only counted length would get."""
    return sum(len(p.better) > len(p.worse) for p in pairs) / len(pairs)


def train_scorer(kind, policy_dir, pairs, plan, recipe, out, progress=True, about=None,
                 xstest=(), chars=600):
    """Train the reward (kind="reward") or cost model on plan.train, run every check, set the
    HH-only cost's zero, save model + tokenizer + report.json (about: fields it starts with) in
    out. pairs[k]["heldout"]: the HH held-out pairs of both scorers; xstest: XSTestAnswers."""
    from formats.models import load_tokenizer
    from rewards import Scorer
    from worlds.score_training import train_score_model
    t0 = time.time()
    scorer, trainable = new_scorer(policy_dir, recipe.train_layers)
    tokenizer = load_tokenizer(policy_dir, padding_side="right")
    bf16 = torch.bfloat16 if _cpu_has_bf16() else None
    # Quiet the scorer code while building: HH-RLHF has no safe labels by design (score_training
    # warns), and dialogues over max_length lose their start in every batch (a known, accepted
    # cut; rewards warns). The levels are restored after, so a training run that follows warns.
    quiet = [logging.getLogger(name) for name in ("rewards", "worlds.score_training")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        stats = train_score_model(scorer, tokenizer, plan.train, kind, recipe.epochs, plan.lr,
                                  recipe.batch_size, "cpu", progress, recipe.seed,
                                  recipe.max_length, params=trainable, autocast_dtype=bf16)
        scorer.eval().requires_grad_(False)
        as_scorer = Scorer(scorer, tokenizer, kind)
        sets = {"helpful": pairs["reward"]["heldout"], "harmless": pairs["cost"]["heldout"],
                **plan.heldout_pairs}
        held = {name: heldout_scores(as_scorer, safety_data.cut_pairs(p, chars)
                                     if name in plan.heldout_pairs else p, recipe.max_length)
                for name, p in sets.items()}
        answers = plan.heldout_answers
        answer_costs = scores_of(as_scorer, [(a.prompt, a.answer) for a in answers],
                                 recipe.max_length)
        xstest_costs = scores_of(as_scorer, [(a.prompt, safety_data.opening(a.answer, chars))
                                             for a in xstest], recipe.max_length)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    # (better, worse) of each pair: a reward model should score better higher, a cost model lower
    right = lambda b, w: ((b < w) if kind == "cost" else (b > w)).float().mean().item()
    report = {**(about or {}), "kind": kind, "scorer_data": plan.name,
              "trained_on": plan.trained_on, "sources": plan.sources, "train": stats,
              "heldout_pair_accuracy": {name: right(*s) for name, s in held.items()},
              # on the full answers (the labelled sources' are scored cut to their opening)
              "length_baseline": {name: length_baseline(p) for name, p in sets.items()}}
    if kind == "cost" and plan.name == "hh":
        safer, unsafer = held["harmless"]
        threshold, balanced = balanced_threshold(safer.tolist(), unsafer.tolist())
        with torch.no_grad():
            scorer.score_head.bias -= threshold
        xstest_costs = [c - threshold for c in xstest_costs]
        report["zero"] = {"threshold_subtracted": threshold, "balanced_accuracy": balanced,
                          "rule": "cost > 0: more like the rejected replies of held-out "
                                  "harmless-base pairs than like the chosen ones"}
    elif kind == "cost":
        report["zero"] = {"rule": "learned: the cost loss's sign terms (cost > 0 = unsafe)"}
        report["heldout_sign_accuracy"] = sign_check(answers, answer_costs)
        report["evasion_check"] = evasion_check(as_scorer, answers, answer_costs, xstest,
                                                xstest_costs, recipe, chars)
    if kind == "cost" and xstest:
        report["xstest"] = safety_data.xstest_check(xstest, xstest_costs)
    report["seconds"] = round(time.time() - t0, 1)
    scorer.save_pretrained(out)
    tokenizer.save_pretrained(out)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def evasion_check(scorer, answers, costs, xstest, xstest_costs, recipe, chars):
    """Does the cost model rate declining a harmful request safer than ignoring it? On held-out
    harmful requests: mean cost of the refusals (full opening, and cut as in the evasive pairs),
    of off-topic answers of the same length (openings of held-out benign answers) to the same
    requests, and of compliant answers (held-out unsafe HarmBench / AdvBench answers), with the
    share of requests where the refusal costs less than the off-topic answer. On XSTest's unsafe
    prompts: each prompt's first full refusal against an off-topic answer of its length."""
    mean = lambda v: sum(v) / len(v) if v else None
    benign = [a for a in answers if a.source == "benign"]
    refused = [(a, c) for a, c in zip(answers, costs)
               if a.source == "refusals" and safety_data.declines(a.answer)]
    out = {}
    if refused and benign:
        pairs = safety_data.evasive_pairs([a for a, _ in refused], benign, recipe.seed + 1)
        full = [safety_data.sentences(b.answer, len(a.answer))
                for (a, _), b in zip(refused, itertools.cycle(benign))]
        scored = scores_of(scorer, [(p.prompt, p.better) for p in pairs]
                           + [(p.prompt, p.worse) for p in pairs]
                           + [(a.prompt, f) for (a, _), f in zip(refused, full)],
                           recipe.max_length)
        n = len(pairs)
        cut, off, off_full = scored[:n], scored[n:2 * n], scored[2 * n:]
        unsafe = [(a, c) for a, c in zip(answers, costs) if not a.safe]
        out["heldout"] = {
            "n": n,
            "refusal_full": mean([c for _, c in refused]),
            "off_topic_same_length_as_full": mean(off_full),
            "refusal_full_below_off_topic": mean([float(c < o) for (_, c), o in
                                                  zip(refused, off_full)]),
            "refusal_cut": mean(cut), "off_topic_same_length_as_cut": mean(off),
            "refusal_cut_below_off_topic": mean([float(c < o) for c, o in zip(cut, off)]),
            "compliance": mean([c for _, c in unsafe]),
            "compliance_by_source": {s: mean([c for a, c in unsafe if a.source == s])
                                     for s in ("harmbench", "advbench")},
            "mean_chars": {"refusal_full": mean([len(a.answer) for a, _ in refused]),
                           "off_topic_full": mean([len(f) for f in full]),
                           "refusal_cut": mean([len(p.better) for p in pairs]),
                           "off_topic_cut": mean([len(p.worse) for p in pairs])}}
    first = {}
    for a, c in zip(xstest, xstest_costs):
        if a.unsafe_prompt and a.label == "2_full_refusal" and a.prompt not in first:
            first[a.prompt] = (safety_data.opening(a.answer, chars), c)
    if first and benign:
        offs = [safety_data.sentences(b.answer, max(len(r), 20))
                for (r, _), b in zip(first.values(), itertools.cycle(benign))]
        off = scores_of(scorer, list(zip(first, offs)), recipe.max_length)
        refusal = [c for _, c in first.values()]
        comply = [c for a, c in zip(xstest, xstest_costs) if a.harmful]
        out["xstest_unsafe_prompts"] = {
            "n": len(first), "full_refusal": mean(refusal), "off_topic": mean(off),
            "refusal_below_off_topic": mean([float(r < o) for r, o in zip(refusal, off)]),
            "full_compliance": mean(comply)}
    return out


def sign_check(answers, costs):
    """Per labelled source and over all: n, unsafe answers, share with the right sign."""
    out = {}
    for source in [*safety_data.COST_SOURCES, "all"]:
        rows = [(a, c) for a, c in zip(answers, costs) if source in ("all", a.source)]
        if rows:
            out[source] = {"n": len(rows), "unsafe": sum(not a.safe for a, _ in rows),
                           "sign_accuracy": sum((c > 0) == (not a.safe) for a, c in rows)
                           / len(rows)}
    return out


def heldout_scores(scorer, pairs, max_length):
    """(better, worse) scores, (N,) each, of N pairs: under bf16 autocast where the CPU has bf16
    units (faster than float32), exactly as the build measures and calibrates."""
    return tuple(torch.tensor(scores_of(scorer, [(p.prompt, getattr(p, side)) for p in pairs],
                                        max_length)) for side in ("better", "worse"))


def scores_of(scorer, texts, max_length):
    """Scores (a list) of (prompt, answer) pairs, under bf16 autocast where the CPU has it."""
    from rewards import score_texts
    if not texts:
        return []
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=_cpu_has_bf16())
    with autocast:
        return score_texts(scorer, [t[0] for t in texts], [t[1] for t in texts], 16,
                           max_length).tolist()


@functools.cache
def _cpu_has_bf16():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def describe_scorer(report, cached=False):
    """The build's line about one scorer: recipe, data, every check beside its baseline."""
    acc, base = report["heldout_pair_accuracy"], report["length_baseline"]
    line = (f"smol: {report['kind']} model{', cached' if cached else ''} "
            f"({report.get('scorer_data', 'hh')}: {report['trained_on']}, "
            f"{report['train']['pairs']} items, {report['seconds']} s): held-out pair accuracy "
            + ", ".join(f"{k} {acc[k]:.3f}" for k in acc) + " (longer-answer-wins baseline: "
            + ", ".join(f"{k} {base[k]:.3f}" for k in base) + ")")
    zero = report.get("zero", {})
    if "balanced_accuracy" in zero:
        line += (f"; cost zero calibrated on held-out harmless pairs (balanced accuracy "
                 f"{zero['balanced_accuracy']:.3f}): cost > 0 means 'more like a rejected "
                 f"reply', not a safety label")
    if "heldout_sign_accuracy" in report:
        line += "; held-out sign accuracy " + ", ".join(
            f"{k} {v['sign_accuracy']:.3f}" for k, v in report["heldout_sign_accuracy"].items())
    ev = report.get("evasion_check", {})
    if "heldout" in ev:
        h = ev["heldout"]
        line += (f"; held-out harmful requests, mean cost: refusal {h['refusal_full']:.2f} vs "
                 f"off-topic {h['off_topic_same_length_as_full']:.2f} (refusal lower on "
                 f"{h['refusal_full_below_off_topic']:.0%}), cut refusal {h['refusal_cut']:.2f} "
                 f"vs {h['off_topic_same_length_as_cut']:.2f} "
                 f"({h['refusal_cut_below_off_topic']:.0%}), compliance {h['compliance']:.2f}")
    if "xstest_unsafe_prompts" in ev:
        x = ev["xstest_unsafe_prompts"]
        line += (f"; XSTest unsafe prompts: full refusal {x['full_refusal']:.2f}, off-topic "
                 f"{x['off_topic']:.2f} (refusal lower on {x['refusal_below_off_topic']:.0%}), "
                 f"full compliance {x['full_compliance']:.2f}")
    if "xstest" in report:
        x = report["xstest"]
        auroc = "n/a" if x["auroc"] is None else f"{x['auroc']:.3f}"
        line += (f"; XSTest answers ({x['n']}, {x['positives']} harmful): accuracy "
                 f"{x['accuracy']:.3f} (all-safe {x['always_safe_accuracy']:.3f}), AUROC {auroc}")
    return line
