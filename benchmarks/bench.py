"""GPU benchmark of GAPO at the paper's scale: one iteration of GAPO next to one of PPO-H,
same process.

What it does (the paper's setting, Sec. 4.1 and App. B; train.py's iteration recipe): builds the
paper's architectures from random weights (no download; benchmarks/paper_models.py) - a Mistral-7B
policy and critic, LLaMA-7B reward and cost models (model.LlamaModelForScore) - in bf16 on CUDA
with non-reentrant gradient checkpointing and, by default, the single-GPU recipe of the README
(LoRA r=64 on q,k,v,o; the reference = the policy with its adapter off). Then it runs the real
training pieces with the paper's batch shape (B = 16 prompts, P = 256 prompt tokens, R = 256
response tokens: T = 512; min_new_tokens forces R so every iteration has the same shape):
  generate   rollout.generate (sampling, KV cache)
  score      reward and cost models on the same token ids (the scorers' tokenizer is not available
             offline, so no decode / re-tokenise; that costs CPU time the real run also pays)
  forward    log pi_old, log pi_ref (rollout.response_logprobs), values (rollout.response_values),
             rollout.kl_shaped_rewards, rollout.gae
  update     train.ppo_update: gapo.method_advantages, gapo.ppo_losses, gapo.loss_weights (the K
             last-block gradients, Gram matrix, min-norm solve), the weighted backward,
             gapo.value_loss, AdamW steps; "loss_weights" is the part of it spent in
             gapo.loss_weights
for `gapo` and `ppo-h` alternately (so drift of clocks and caches hits both), and prints a table:
time and peak memory per phase, generation tokens/s, training tokens/s, the training phase's MFU
and the ratio of a GAPO iteration to a PPO-H iteration.

MFU of the update phase = ppo_epochs * B * T * F / t_update / peak_flops, F = model FLOPs per token
summed over the two trained networks (policy, critic), N = their parameters in matmuls (input
embeddings excluded):
  "MFU 6N"     F = 6 N, the usual convention (as if every weight trained);
  "exact"      F = 4 N + 2 N_trainable: 2N forward, 2N backward to the activations, 2 N_trainable
               for the weight gradients (= 6N for full fine-tuning; about 4N with LoRA, whose
               frozen weights get none).
Not counted: attention's T x T products (about 2% at T = 512), the recomputation of gradient
checkpointing, and GAPO's extra last-block gradients (overhead, so it shows up as lower MFU for
gapo). peak_flops defaults to 989e12 (H100 SXM / H200, bf16 dense, no sparsity); set --peak_tflops
for others.

Run:
    python -m benchmarks.bench                # one 80 GB GPU: LoRA r=64, 3 measured iterations each
    python -m benchmarks.bench --lora_r 0     # full fine-tuning (does not fit one 80 GB GPU: see
                                              # the memory plan)
    python -m benchmarks.bench --tiny         # 2-layer, hidden-64 versions of the same
                                              # architectures, CPU, seconds
    python -m benchmarks.bench --check        # the GPU check (--check --tiny: CPU, seconds)
    python -m benchmarks.bench --tiny --compare_paths   # old and new rollout paths side by side
    python -m benchmarks.bench --compare_engines        # generation tokens/s: hf vs static cache
Left out on purpose: real weights and tokenizers (throughput does not depend on them), text
decoding and re-tokenisation for the scorers, multi-GPU (see distributed.py), and any assertion on
timings.
"""
import argparse
import contextlib
import time

import torch

import gapo
import train
from benchmarks.paper_models import (build_models, configs, matmul_params, random_prompts,
                                     save_random_models, word_tokenizer)
# Not used here: the paper's sizes stay importable from bench, where other code has always taken
# them.
from formats.models import mgda_parameters
from scale.memory import param_count_from_config
from rollout import Rollout, gae, generate, kl_shaped_rewards, response_logprobs, response_values
from scale.memory import activation_and_cache_bytes, memory_plan, plan_bytes

# argparse's description: the docstring's first sentence, on one line as before the line wrap
DESCRIPTION = __doc__.split("\n\n")[0].replace("\n", " ")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=DESCRIPTION)
    add = ap.add_argument
    add("--tiny", action="store_true", help="tiny models on CPU (CI smoke test)")
    add("--methods", default="gapo,ppo-h", help="comma-separated gapo.METHODS, measured in turn")
    add("--p", type=float, default=2.0, help="GAPO's exponent p (Eq. 6)")
    add("--mgda_params", default="last_block", help="last_block | lm_head | all")
    add("--lora_r", type=int, default=None, help="0 = full fine-tuning (default 64; 8 with --tiny)")
    add("--gradient_checkpointing", type=int, default=1, help="1 (default) or 0")
    add("--batch_size", type=int, default=None, help="B prompts per rollout (16; 4 with --tiny)")
    add("--micro_batch_size", type=int, default=None, help="samples per training forward (= B)")
    add("--prompt_length", type=int, default=None, help="P (256; 16 with --tiny)")
    add("--new_tokens", type=int, default=None, help="R, forced (256; 16 with --tiny)")
    add("--iterations", type=int, default=3, help="measured iterations per method")
    add("--warmup", type=int, default=1, help="unmeasured iterations per method first")
    add("--peak_tflops", type=float, default=989.0, help="peak bf16 dense TFLOP/s of the GPU")
    add("--device", default="auto", help="auto | cuda | cpu")
    add("--seed", type=int, default=0)
    add("--compare_paths", action="store_true",
        help="rollout paths side by side: generation in micro-batch chunks vs one call, LM head on "
             "all T positions vs the last R + 1")
    add("--compare_engines", action="store_true",
        help="generation tokens/s of each rollout.generate engine (hf, static) on the same prompts")
    add("--check", action="store_true",
        help="the GPU check: gapo and ppo-h at the paper's rollout batch (128 prompts, micro-batch "
             "16), then two train.py iterations in bf16 with checkpointing on 7B-shaped random "
             "models saved locally (--tiny: the same on CPU in seconds)")
    add("--check_dir", default="cache/bench_check", help="where --check saves its random models")
    args = ap.parse_args(argv)
    tiny = args.tiny
    args.lora_r = (8 if tiny else 64) if args.lora_r is None else args.lora_r
    args.batch_size = args.batch_size or (4 if tiny else 16)
    args.micro_batch_size = args.micro_batch_size or args.batch_size
    args.prompt_length = args.prompt_length or (16 if tiny else 256)
    args.new_tokens = args.new_tokens or (16 if tiny else 256)
    args.methods = args.methods.split(",")
    for m in args.methods:
        if m not in gapo.METHODS:
            raise SystemExit(f"error: unknown method {m!r} in --methods; choose from "
                             f"{', '.join(gapo.METHODS)}.")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cpu" and not tiny:
        raise SystemExit("error: the 7B configurations need a CUDA GPU; pass --tiny to run small "
                         "versions on CPU.")
    if args.batch_size % args.micro_batch_size:
        raise SystemExit(f"error: --batch_size ({args.batch_size}) must be a multiple of "
                         "--micro_batch_size.")
    return args


# ----------------------------------------------------------------------------- timing

class Clock:
    """Wall time and peak memory of each phase; synchronises CUDA so the time is the GPU's, not the
    launch."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.seconds, self.peak = {}, {}
        # open phases -> their peak so far (phases nest: iteration > update > loss_weights)
        self.running = {}

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def _fold_peak(self):
        """Fold the allocator's peak counter into every open phase, then restart the counter."""
        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
            for name in self.running:
                self.running[name] = max(self.running[name], peak)
            torch.cuda.reset_peak_memory_stats()

    @contextlib.contextmanager
    def phase(self, name):
        self.sync()
        self._fold_peak()
        self.running[name] = 0
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self._fold_peak()
            peak = self.running.pop(name)
            if self.cuda:
                self.peak[name] = max(self.peak.get(name, 0), peak)


@contextlib.contextmanager
def timed_loss_weights(clock):
    """While the block runs, every call of gapo.loss_weights is timed as the clock's "loss_weights"
    phase: the GAPO-specific work (K autograd.grad calls, Gram matrix, solver) inside the update.
    The module attribute is replaced by a timed wrapper and restored afterwards, so train.py needs
    no hook for it."""
    inner = gapo.loss_weights

    def loss_weights(*args, **kwargs):
        with clock.phase("loss_weights"):
            return inner(*args, **kwargs)

    # train.ppo_update may bind gapo.loss_weights as a default argument when it is defined, where
    # the attribute swap does not reach: swap that default too (nothing to swap once ppo_update
    # looks gapo.loss_weights up when it calls it).
    defaults = train.ppo_update.__defaults__
    gapo.loss_weights = loss_weights
    if defaults:
        train.ppo_update.__defaults__ = tuple(loss_weights if d is inner else d for d in defaults)
    try:
        yield
    finally:
        gapo.loss_weights = inner
        train.ppo_update.__defaults__ = defaults


# ----------------------------------------------------------------------------- one iteration

def iteration(args, cfg, models, tokenizer, optimizers, schedulers, prompts, clock, step):
    """Recipe steps 1-5 (train.py), each phase timed; returns nothing (the clock keeps the
    figures)."""
    policy, reference, critic, reward, cost = models
    with clock.phase("generate"):
        input_ids, attention_mask, response_mask, P = generate(
            policy, tokenizer, prompts, args.prompt_length, args.new_tokens, temperature=0.7,
            repetition_penalty=1.05)
    B, T = input_ids.shape
    R = response_mask.shape[1]
    assert (B, P, R) == (args.batch_size, args.prompt_length, args.new_tokens), (B, P, R)
    # helpful = reward, harmless = -cost (docs/decisions.md)
    with clock.phase("score"), torch.no_grad():
        scores = torch.stack([reward(input_ids=input_ids, attention_mask=attention_mask),
                              -cost(input_ids=input_ids, attention_mask=attention_mask)],
                             dim=1)  # (B, K)
    with clock.phase("forward"), torch.no_grad():  # train.collect_rollout's step 3-4
        policy.eval()
        logprobs = response_logprobs(policy, input_ids, attention_mask, R)  # (B, R)
        ref_logprobs = response_logprobs(reference, input_ids, attention_mask, R)
        values = response_values(critic, input_ids, attention_mask, R)  # (B, R, K)
        policy.train()
        rewards = kl_shaped_rewards(scores, logprobs, ref_logprobs, response_mask, cfg.kl_coef,
                                    cfg.clip_score)
        advantages, returns = gae(rewards, values, response_mask, cfg.gamma, cfg.gae_lambda)
    rollout = Rollout(prompts, [""] * B, input_ids, attention_mask, response_mask, logprobs,
                      ref_logprobs, values, scores, rewards, advantages, returns)
    gradient = cfg.method in gapo.GRADIENT_METHODS
    mgda_params = mgda_parameters(policy, cfg.mgda_params) if gradient else None
    pref = [1.0 / len(train.OBJECTIVES)] * len(train.OBJECTIVES)
    with timed_loss_weights(clock), clock.phase("update"):
        orders = [torch.randperm(B) for _ in range(cfg.ppo_epochs)]
        step_costs = -scores[orders[0], -1].float().view(1, B)  # train.py's gathered last column
        train.ppo_update(cfg, pref, policy, critic, rollout, orders, step_costs, optimizers,
                         schedulers, gapo.MethodState(), mgda_params, step)


# ----------------------------------------------------------------------------- --compare_paths

def old_response_logprobs(model, input_ids, attention_mask, R):
    """The previous rollout.response_logprobs: LM head on all T positions, then the last R rows
    kept."""
    from formats.models import position_ids_from_mask

    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask), use_cache=False,
                   ).logits  # (B, T, V)
    logits = logits[:, -R - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, input_ids[:, -R:, None])[..., 0]  # (B, R)


def old_concat_chunks(chunks, pad_token_id):
    """The previous rollout.concat_chunks, kept here for the old path only: joins generate()
    outputs of several prompt chunks into one (B, T) layout, each chunk's prompt part left-padded
    to the longest P and its response part right-padded to the longest R (padding is masked out,
    and positions come from the mask, so nothing shifts)."""
    P = max(c[3] for c in chunks)
    R = max(c[2].shape[1] for c in chunks)
    ids, attn, resp = [], [], []
    for input_ids, attention_mask, response_mask, p in chunks:
        left, right = P - p, R - response_mask.shape[1]
        pad = lambda x, value: torch.nn.functional.pad(x, (left, right), value=value)
        ids.append(pad(input_ids, pad_token_id))
        attn.append(pad(attention_mask, 0))
        resp.append(torch.nn.functional.pad(response_mask, (0, right), value=0.0))
    return torch.cat(ids), torch.cat(attn), torch.cat(resp), P


def compare_paths(args, models, tokenizer, device, repeats=3):
    """Old and new rollout paths on the same prompts, alternately: generation in chunks of
    micro_batch_size prompts (old train.collect_rollout) vs the whole batch in one call;
    response_logprobs with the LM head on all T positions (old) vs the last R + 1 (new). Prints
    seconds (best of `repeats`) and the old / new ratios."""
    policy = models[0]
    generator = torch.Generator().manual_seed(args.seed)
    prompts = random_prompts(generator, args.batch_size, args.prompt_length)
    clock = Clock(device)
    chunk = args.micro_batch_size
    best = {}

    def timed(name, fn):
        clock.seconds.pop(name, None)
        with clock.phase(name):
            out = fn()
        best[name] = min(best.get(name, float("inf")), clock.seconds[name])
        return out

    def chunked(fn, *tensors):
        return [fn(*(t[i : i + chunk] for t in tensors)) for i in range(0, len(tensors[0]), chunk)]

    for _ in range(repeats):
        timed("generate, chunks", lambda: old_concat_chunks(
            chunked(lambda p: generate(policy, tokenizer, p, args.prompt_length, args.new_tokens),
                    prompts),
            tokenizer.pad_token_id))
        ids, mask, rmask, _ = timed("generate, one call", lambda: generate(
            policy, tokenizer, prompts, args.prompt_length, args.new_tokens))
        R = rmask.shape[1]
        with torch.no_grad():
            timed("logprobs, all T", lambda: chunked(
                lambda i, m: old_response_logprobs(policy, i, m, R), ids, mask))
            timed("logprobs, R + 1", lambda: chunked(
                lambda i, m: response_logprobs(policy, i, m, R), ids, mask))
    print(f"\nrollout paths, best of {repeats} (B={args.batch_size}, micro-batch {chunk}, "
          f"P={args.prompt_length}, R={args.new_tokens}):")
    for name, sec in best.items():
        print(f"  {name:<20}{sec:10.3f} s")
    ratios = {"generate": best["generate, chunks"] / best["generate, one call"],
              "logprobs": best["logprobs, all T"] / best["logprobs, R + 1"]}
    print(f"old / new: generation {ratios['generate']:.2f}x, log-probs {ratios['logprobs']:.2f}x")
    return ratios


# ----------------------------------------------------------------------------- --compare_engines

def compare_engines(args, policy, tokenizer, device, repeats=3):
    """rollout.generate's engines on the same prompts, alternately: "hf" (dynamic KV cache) and
    "static" (static KV cache, which transformers compiles on a GPU; its first call, the compile,
    is a warm-up and not timed). The prompts' lengths vary from P/4 to P words, as real prompts
    do, so the static engine pays for its padding to P. Prints generation tokens/s (best of
    `repeats`) and the ratio; returns {engine: tokens/s}."""
    generator = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(max(1, args.prompt_length // 4), args.prompt_length + 1,
                            (args.batch_size,), generator=generator).tolist()
    prompts = [" ".join(p.split()[:n]) for p, n in
               zip(random_prompts(generator, args.batch_size, args.prompt_length), lengths)]
    best = {}
    for repeat in range(repeats + 1):
        for engine in ("hf", "static"):
            clock = Clock(device)
            with clock.phase("generate"):
                _, _, response_mask, _ = generate(policy, tokenizer, prompts, args.prompt_length,
                                                  args.new_tokens, temperature=0.7,
                                                  repetition_penalty=1.05, engine=engine)
            if repeat:  # the first round warms up (and compiles)
                tokens = args.batch_size * response_mask.shape[1] / clock.seconds["generate"]
                best[engine] = max(best.get(engine, 0.0), tokens)
    print(f"\ngeneration engines, best of {repeats} after a warm-up (B={args.batch_size}, "
          f"P={args.prompt_length}, R={args.new_tokens}):")
    for engine, tokens in best.items():
        print(f"  {engine:<8}{tokens:12.1f} tokens/s")
    print(f"static / hf: {best['static'] / best['hf']:.2f}x")
    return best


# ----------------------------------------------------------------------------- --check

def check(args):
    """The GPU check (about 8 minutes on one H100 / H200; --tiny: CPU, seconds): bench's gapo and
    ppo-h side by side at the paper's rollout batch, then two iterations of train.py in bf16 with
    gradient checkpointing on random models saved first (LoRA r=64 on a GPU: full fine-tuning of
    7B does not fit one)."""
    import os

    tiny = ["--tiny"] if args.tiny else []
    batch, micro = (8, 4) if args.tiny else (128, 16)
    print(f"check 1/3: bench, gapo and ppo-h, B={batch}, micro-batch {micro}")
    main(tiny + ["--device", args.device, "--batch_size", str(batch),
                 "--micro_batch_size", str(micro), "--iterations", "1", "--warmup", "0",
                 "--methods", "gapo,ppo-h"])
    if args.device == "cuda":
        torch.cuda.empty_cache()
    print(f"check 2/3: generation engines, B={micro}")
    main(tiny + ["--device", args.device, "--batch_size", str(micro), "--compare_engines"])
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    paths = save_random_models(args, args.check_dir)
    print(f"check 3/3: train.py, 2 iterations, bf16, gradient checkpointing, static-cache "
          f"generation, models in {args.check_dir}")
    t0 = time.perf_counter()
    out = os.path.join(args.check_dir, "run")
    train.main(["--policy", paths["policy"], "--reward_model", paths["reward"],
                "--cost_model", paths["cost"], "--prompts", paths["prompts"],
                "--dtype", "bfloat16", "--gradient_checkpointing", "--device", args.device,
                "--iterations", "2", "--batch_size", str(micro), "--minibatch_size", str(micro),
                "--micro_batch_size", str(micro // 2 if args.tiny else 4),
                "--max_prompt_length", str(args.prompt_length),
                "--max_new_tokens", str(args.new_tokens), "--ppo_epochs", "1",
                "--lora_r", "8" if args.tiny else "64", "--out_dir", out, "--overwrite",
                "--num_threads", "1" if args.tiny else "0", "--generation", "static"])
    peak = (f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
            if args.device == "cuda" else "")
    print(f"check done: train.py 2 iterations in {time.perf_counter() - t0:.1f}s (with "
          f"loading){peak}")
    return out


# ----------------------------------------------------------------------------- the command

def main(argv=None):
    args = parse_args(argv)
    if args.check:
        return check(args)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(args.seed)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"bench: {'tiny' if args.tiny else '7B'} models on {name}, {str(dtype)[6:]}, "
          f"lora_r={args.lora_r}, checkpointing={bool(args.gradient_checkpointing)}, "
          f"B={args.batch_size} P={args.prompt_length} R={args.new_tokens}, "
          f"micro-batch {args.micro_batch_size}, methods {args.methods}")
    lora_lr = train.LORA_LR["paper"]
    cfg = train.Config(batch_size=args.batch_size, minibatch_size=args.batch_size,
                       micro_batch_size=args.micro_batch_size, ppo_epochs=1, p=args.p,
                       mgda_params=args.mgda_params, max_prompt_length=args.prompt_length,
                       max_new_tokens=args.new_tokens, actor_lr=lora_lr if args.lora_r else 1e-6,
                       critic_lr=lora_lr if args.lora_r else 5e-7)
    # The plan train.py checks (scale.memory.check_memory), from the configs alone, before
    # anything is built.
    mistral, llama = configs(args.tiny)
    counts = {"policy": param_count_from_config(mistral, "causal_lm"),
              "critic": param_count_from_config(mistral, "base"),
              "reward": param_count_from_config(llama, "score"),
              "cost": param_count_from_config(llama, "score")}
    checkpointing = bool(args.gradient_checkpointing)
    planned = plan_bytes(cfg, mistral, counts, dtype, 1, args.lora_r, checkpointing)
    extra = activation_and_cache_bytes(mistral, args.micro_batch_size,
                                       args.prompt_length + args.new_tokens, dtype, checkpointing,
                                       args.new_tokens, args.batch_size)
    print(f"estimate: KV cache {extra.kv_cache / 2**30:.2f} GiB, training activations "
          f"{(extra.activations + extra.logits) / 2**30:.2f} GiB -> planned peak "
          f"{planned / 2**30:.2f} GiB")
    if device.type == "cuda" and planned > torch.cuda.get_device_properties(device).total_memory:
        total = torch.cuda.get_device_properties(device).total_memory
        raise SystemExit(f"error: the plan needs about {planned / 2**30:.1f} GiB but {name} has "
                         f"{total / 2**30:.1f} GiB; use --lora_r 64 and --gradient_checkpointing 1 "
                         "(the defaults) or a smaller --micro_batch_size.")
    t0 = time.perf_counter()
    models = build_models(args, device, dtype)
    policy, reference, critic, reward, cost = models
    print(f"built the models in {time.perf_counter() - t0:.1f}s")
    listed = {"policy": policy, "critic": critic, "reward": reward, "cost": cost}
    if not args.lora_r:
        listed["reference"] = reference
    print(memory_plan(listed, dtype=dtype)[1])

    tokenizer = word_tokenizer()
    if args.compare_paths:
        return compare_paths(args, models, tokenizer, device)
    if args.compare_engines:
        return compare_engines(args, models[0], tokenizer, device)
    T = args.prompt_length + args.new_tokens
    optimizers = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr,
                                    weight_decay=0.0)
                  for m, lr in [(policy, cfg.actor_lr), (critic, cfg.critic_lr)]]
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1.0) for o in optimizers]
    generator = torch.Generator().manual_seed(args.seed)
    clocks = {m: Clock(device) for m in args.methods}
    for step in range(args.warmup + args.iterations):
        for method in args.methods:  # alternate: both methods see the same machine state
            clock = clocks[method] if step >= args.warmup else Clock(device)
            cfg.method = method
            prompts = random_prompts(generator, args.batch_size, args.prompt_length)
            with clock.phase("iteration"):
                iteration(args, cfg, models, tokenizer, optimizers, schedulers, prompts, clock,
                          step)
    report(args, clocks, policy, critic, T, name, planned)
    return clocks


def report(args, clocks, policy, critic, T, device_name, planned):
    n = args.iterations
    phases = ["generate", "score", "forward", "update", "loss_weights", "iteration"]
    methods = list(clocks)
    print(f"\nper iteration, mean of {n} after {args.warmup} warm-up ({device_name}):")
    print(f"{'phase':<14}" + "".join(f"{m + ' s':>12}{m + ' GiB':>12}" for m in methods))
    for ph in phases:
        cells = ""
        for m in methods:
            c = clocks[m]
            s = f"{c.seconds[ph] / n:12.3f}" if ph in c.seconds else f"{'-':>12}"
            g = f"{c.peak[ph] / 2**30:12.2f}" if ph in c.peak else f"{'-':>12}"
            cells += s + g
        print(f"{ph:<14}{cells}")
    N_pol, Nt_pol = matmul_params(policy)
    N_cri, Nt_cri = matmul_params(critic)
    N, N_train = N_pol + N_cri, Nt_pol + Nt_cri
    tokens = args.batch_size * T  # per PPO epoch (1)
    print(f"\nMFU = B*T*F / t_update / peak with F = 6N (exact: 4N + 2N_trainable), N = {N:,} "
          f"(policy + critic, no input embeddings), N_trainable = {N_train:,}, "
          f"peak = {args.peak_tflops:g} TFLOP/s")
    for m in methods:
        c = clocks[m]
        gen = args.batch_size * args.new_tokens * n / c.seconds["generate"]
        upd = c.seconds["update"] / n
        mfu = [tokens * f / upd / (args.peak_tflops * 1e12) for f in (6 * N, 4 * N + 2 * N_train)]
        gpu = (f"MFU 6N {100 * mfu[0]:5.1f}% (exact {100 * mfu[1]:5.1f}%) | peak memory "
               f"{max(c.peak.values()) / 2**30:.2f} GiB" if c.peak else "MFU n/a (CPU)")
        print(f"{m:<8} generation {gen:9.1f} tokens/s | training {tokens / upd:9.1f} tokens/s | "
              f"{gpu} (planned {planned / 2**30:.2f} GiB)")
    if "gapo" in clocks and "ppo-h" in clocks:
        g, h = clocks["gapo"].seconds, clocks["ppo-h"].seconds
        print(f"GAPO / PPO-H: iteration {g['iteration'] / h['iteration']:.3f}x, update "
              f"{g['update'] / h['update']:.3f}x (GAPO's loss_weights: "
              f"{g['loss_weights'] / n:.3f}s per iteration)")


if __name__ == "__main__":
    main()
