"""Rewarded Soups, the baseline that interpolates two fine-tunes' weights instead of training.

theta(lam) = lam theta_ppo-h + (1 - lam) theta_ppo-s (docs/decisions.md, "Baselines"): a PPO-H and
a PPO-S run trained from the same start, mixed in memory for each lam of --soup_lambdas and
evaluated like any checkpoint (evaluate.py), so the soups' Helpful / Harmless points sit beside the
trained methods in Table 1 and on the Pareto front.
- interpolate_state_dicts / soup_state_dict: the weights, computed in float32.
- auto_soup_pairs: the PPO-H and PPO-S runs of one setup and seed (--soup auto).
- soup_targets / plan_soups: one evaluation Target per lam for each pair, from the flags.
- soup_loader: both ends loaded once, kept on the CPU; the PPO-H model is refilled per lam.

Run: through evaluate.py (python evaluate.py runs/study --soup auto; python evaluate.py RUNS...
--soup runs/ppo-h-s0 runs/ppo-s-s0 --soup_lambdas 0.2,0.4,0.6,0.8); tests/test_soups.py checks it.
Left out on purpose: soups of more than two models, and of runs with different starting policies
or LoRA ranks (refused: their weights do not line up).
"""
import json

from evals.tables import NOT_METHOD
from evals.targets import Target, resolve_run


def interpolate_state_dicts(sd_a, sd_b, lam):
    """Rewarded Soups: lam * a + (1 - lam) * b per float tensor (computed in fp32, cast back to a's
    dtype); integer/bool tensors (buffers) are copied from a."""
    if sd_a.keys() != sd_b.keys():
        diff = sorted(set(sd_a) ^ set(sd_b))
        raise ValueError(f"The two state dicts have different keys (e.g. {diff[:3]}); "
                         "interpolate checkpoints of the same model.")
    out = {}
    for k, a in sd_a.items():
        b = sd_b[k]
        if a.shape != b.shape:
            raise ValueError(f"Parameter '{k}' has shape {tuple(a.shape)} in one state dict and "
                             f"{tuple(b.shape)} in the other; "
                             "interpolate checkpoints of the same model.")
        if a.is_floating_point():
            out[k] = (lam * a.float() + (1.0 - lam) * b.to(a.device).float()).to(a.dtype)
        else:
            out[k] = a.clone()
    return out


def soup_state_dict(sd_h, sd_s, lam):
    """Rewarded Soups (docs/decisions.md, "Baselines"):
    theta(lam) = lam theta_ppo-h + (1 - lam) theta_ppo-s."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"a soup weight must lie in [0, 1], got {lam}; use --soup_lambdas like "
                         f"0.2,0.4,0.6,0.8.")
    return interpolate_state_dicts(sd_h, sd_s, lam)


def parse_lambdas(text):
    """'0.2,0.4' -> [0.2, 0.4]; None unless every weight is a number in [0, 1]."""
    try:
        lambdas = [float(x) for x in text.split(",")]
    except ValueError:
        return None
    return lambdas if all(0 <= lam <= 1 for lam in lambdas) else None


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


def plan_soups(soup, soup_lambdas, targets):
    """[[a Target per lam] per pair] from --soup (lists of two run folders, or ['auto']: pairs
    among the evaluated targets) and --soup_lambdas. Raises ValueError / FileNotFoundError with
    one sentence for a pair that cannot be souped."""
    lambdas = [float(x) for x in soup_lambdas.split(",")]
    pairs = auto_soup_pairs(targets) if ["auto"] in soup else []
    if ["auto"] in soup and not pairs:
        print("soup auto: no PPO-H and PPO-S runs with the same setup among the given runs; "
              "no soups.")
    pairs += [tuple(map(resolve_run, s)) for s in soup if s != ["auto"]]
    return [soup_targets(h, s, lambdas) for h, s in pairs]


def soup_loader(load):
    """A loader for one pair's targets: load(config, checkpoint) -> (policy, tokenizer) with whole
    (merged) float32 weights. Loads both ends once, keeps their weights on the CPU, and reuses the
    PPO-H model for every lam."""
    def loader(t):
        policy, tokenizer = load(t.config, t.soup[0])
        cpu = lambda m: {k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()}
        return policy, tokenizer, cpu(policy), cpu(load(t.config, t.soup[1])[0])
    return loader
