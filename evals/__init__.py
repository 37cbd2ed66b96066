"""Evaluation beyond training: what evaluate.py evaluates (targets.py), Table 1 (tables.py), its
Pareto front (pareto.py), Rewarded Soups (soups.py), held-out sampling shared with train.py
(heldout.py), learning curves (curves.py), the real prompt sets (prompt_sets.py), refusal detection
(refusal.py, chat.py), and the paper's pairwise LLM-judge protocol (judge.py; the client and cache
in judge_client.py, its prompts in judge_prompts.py, evaluate.py's wiring in judging.py)."""
