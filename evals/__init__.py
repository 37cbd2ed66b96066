"""Evaluations beyond the learned reward and cost models: the real prompt sets (prompt_sets.py),
refusal detection (refusal.py), and the paper's pairwise LLM-judge protocol (judge.py, its prompts
in judge_prompts.py)."""
