"""The settings each world trains with: train.py's --preset fills the Config's defaults from
PRESETS[preset], and any flag given on the command line wins (cli.parse_config).

- toy: the Config's own defaults (the built-in toy world, worlds/toyworld.py);
- smol: SmolLM2-135M-Instruct and its learned scorers on a laptop CPU (worlds/smol.py);
- paper: the paper's setting (Sec. 4.1 models and data, Table 2), Mistral-7B-SFT with the beaver-7b
  reward and cost models on GPUs (worlds/paper.py).
The world itself (models, prompts) is the preset's namesake in worlds/__init__.py's WORLDS.

Run: nothing to run; `python train.py --preset smol --help` shows the filled defaults.
Left out on purpose: presets for other hardware (flags override any field).
"""
from worlds import paper

PRESETS = {
    "toy": {},
    # SmolLM2-135M-Instruct against reward and cost models learned from HH-RLHF (worlds/smol.py),
    # sized for a laptop CPU: LoRA on policy and critic (pi_ref = adapter off, no second copy),
    # short answers, the paper's sampling (temperature 0.7, repetition penalty 1.05) and betas,
    # bf16 compute (1.3x faster than float32 here, on a CPU with avx512_bf16; else --dtype
    # float32).
    "smol": dict(lora_r=16, iterations=40, batch_size=8, minibatch_size=8, micro_batch_size=8,
                 max_prompt_length=128, max_new_tokens=48, temperature=0.7, dtype="bfloat16",
                 repetition_penalty=1.05, ppo_epochs=1, actor_lr=1e-5, critic_lr=1e-5,
                 adam_beta1=0.9, adam_beta2=0.95, kl_coef=0.05, clip_eps=0.1, save_every=10),
    # The paper's setting: Sec. 4.1 models and data, Table 2 (shared by all methods).
    # Without internet: `python -m worlds.paper` fetches them first (worlds/paper.py).
    "paper": dict(policy=paper.POLICY, reward_model=paper.REWARD, cost_model=paper.COST,
                  prompts=paper.PROMPTS,
                  # 16 prompts per device x gradient accumulation 8 = 128 per update,
                  # generated 16 at a time
                  iterations=0, epochs=2.0, batch_size=128, max_prompt_length=256,
                  max_new_tokens=256, temperature=0.7, top_p=1.0, repetition_penalty=1.05,
                  ppo_epochs=1, minibatch_size=128, micro_batch_size=16, actor_lr=1e-6,
                  critic_lr=5e-7, weight_decay=0.0, warmup_ratio=0.03,
                  adam_beta1=0.9, adam_beta2=0.95,  # Safe RLHF's AdamW betas
                  kl_coef=0.05, clip_eps=0.1, gradient_checkpointing=True, save_every=50,
                  num_threads=0),
}

# actor and critic lr of LoRA runs (train.py, the comment above Config.lora_alpha)
LORA_LR = {"toy": 3e-3, "smol": 1e-4, "paper": 1e-5}
