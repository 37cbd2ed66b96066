"""Rule-based objectives: Python functions a run can train on beside its scorers.

    python train.py --method gapo --p 2 --objective helpful=worlds/toy/reward \
        --objective harmless=-worlds/toy/cost --objective brief=py:worlds.rules.brevity

Each function is called as fn(prompts: list[str], responses: list[str]) -> list[float], one score
per response, larger is better (train.py's `--objective NAME=py:MODULE.FUNCTION`; loading.py
imports it, rewards.objective_matrix calls it). brevity is the toy world's third objective: a
reader sees it in the answers, which get shorter, and it pulls against the reward model (four
helpful steps are long) while it agrees with the cost model (a refusal is short).

Left out on purpose: rules that need a tokenizer or a model (write a scorer for those).
"""

WORDS_PER_POINT = 4  # -1 per 4 words: a toy answer of 4 steps (about 20 words) scores -5


def brevity(prompts, responses):
    """Minus the answer's length in words / WORDS_PER_POINT (the toy world's words are tokens)."""
    return [-len(response.split()) / WORDS_PER_POINT for response in responses]
