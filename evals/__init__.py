"""Evaluation pieces beyond the learned scores: refusal detection, real prompt sets, the LLM judge."""
