"""Evaluations beyond the learned reward and cost models: evals/judge.py is the paper's pairwise
LLM-judge protocol (each run's answers against the SFT model's), evals/judge_prompts.py its
prompts."""
