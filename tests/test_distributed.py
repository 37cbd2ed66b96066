"""distributed.py: memory arithmetic by hand, and the data-parallel path with 2 gloo processes on CPU.

The 2-process checks run this file as a script under `python -m torch.distributed.run --nproc_per_node 2`
(one launch for all of them: process start-up is most of the cost); each rank writes what it measured and
the test compares it with one process doing the same on the union of the two ranks' data.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scale import distributed, memory  # noqa: E402
import gapo  # noqa: E402
from formats.models import mgda_parameters  # noqa: E402
from conftest import make_tiny_mistral  # noqa: E402
from mgda import gapo_weights, gram_matrix  # noqa: E402
from rollout import response_logprobs  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft's noise
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, B, T, R, K = 40, 4, 12, 6, 2  # 4 sequences: rank r holds rows 2r, 2r+1


# ----------------------------------------------------------------------------- memory arithmetic

def test_activation_and_cache_bytes_by_hand():
    from transformers import MistralConfig
    c = MistralConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)  # head dim 16, kv width 32
    est = memory.activation_and_cache_bytes(c, 3, 10, torch.bfloat16, True, response_len=4)
    per_layer = 9 * 64 + 2 * 32 + 4 * 128  # 1152 elements per token and layer
    assert est.kv_cache == 2 * 2 * 3 * 10 * 2 * 16 * 2 == 7680
    assert est.activations == 3 * 10 * 2 * (2 * 64 + per_layer) == 76800
    assert est.logits == 3 * 100 * (10 * 2 + 3 * 4 * 4) == 20400
    assert est.peak == 76800 + 20400
    full = memory.activation_and_cache_bytes(c, 3, 10, torch.bfloat16, False, response_len=4)
    assert full.activations == 3 * 10 * 2 * 2 * per_layer and full.kv_cache == est.kv_cache
    f32 = memory.activation_and_cache_bytes(c, 3, 10, torch.float32, True, response_len=4, generation_batch=6)
    assert f32.kv_cache == 4 * est.kv_cache  # twice the batch, twice the bytes


def mistral_7b():
    from benchmarks.paper_models import MISTRAL_7B, TOKEN_IDS
    from transformers import MistralConfig
    return MistralConfig(**MISTRAL_7B, **TOKEN_IDS)


def test_paper_kv_cache_is_one_gib():
    # 2 (k, v) * 32 layers * 16 prompts * 512 tokens * 8 kv heads * 128 dims * 2 bytes = 2^30 exactly
    est = memory.activation_and_cache_bytes(mistral_7b(), 16, 512, torch.bfloat16, True, response_len=256)
    assert est.kv_cache == 2**30


def test_lora_param_count_matches_peft():
    from peft import LoraConfig, get_peft_model

    from formats.models import LORA_TARGETS
    policy = make_tiny_mistral(VOCAB)
    peft_model = get_peft_model(policy, LoraConfig(r=4, target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM"))
    counted = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert memory.lora_param_count(policy.config, 4) == counted


def test_memory_check_refuses_full_finetuning_on_one_80gb_gpu_and_names_the_fix(tmp_path):
    import cli
    import train
    from benchmarks.paper_models import LLAMA_7B, TOKEN_IDS
    from transformers import LlamaConfig
    policy, scorer = tmp_path / "policy", tmp_path / "scorer"
    mistral_7b().save_pretrained(policy)
    LlamaConfig(**LLAMA_7B, **TOKEN_IDS, architectures=["LlamaModelForScore"]).save_pretrained(scorer)
    paths = ["--policy", str(policy), "--reward_model", str(scorer), "--cost_model", str(scorer)]
    h100 = 79 * 2**30  # what torch reports for an H100 80 GB, about
    full = cli.parse_config(train.Config, train.PRESETS, ["--preset", "paper"] + paths)  # full fine-tuning, checkpointing on
    with pytest.raises(ValueError, match="add --lora_r 64 "):
        memory.check_memory(full, h100)
    lora = cli.parse_config(train.Config, train.PRESETS, ["--preset", "paper", "--lora_r", "64"] + paths)
    need = memory.check_memory(lora, h100)
    assert 50 * 2**30 < need < 70 * 2**30  # four 7B models in bf16 (about 51 GiB) + adapters + activations
    no_ckpt = cli.parse_config(train.Config, train.PRESETS, ["--preset", "paper", "--lora_r", "64", "--gradient_checkpointing", "false"] + paths)
    with pytest.raises(ValueError, match="add --gradient_checkpointing "):
        memory.check_memory(no_ckpt, h100)
    # FSDP over 8 GPUs: full fine-tuning with float32 master weights (16 bytes per trainable parameter) fits
    assert memory.check_memory(full, h100, world=8) < h100
    for world in (2, 4):  # shards + the whole last block + the policy gathered for rollout: too much
        with pytest.raises(ValueError, match="add --lora_r 64 "):
            memory.check_memory(full, h100, world=world)


def test_plan_counts_float32_master_weights_and_the_kept_block():
    """Full fine-tuning in bf16: trainable parameters cost 16 bytes (fp32 weight, gradient, two moments),
    frozen ones 2; the last block is whole on every rank."""
    import train
    from transformers import MistralConfig
    c = MistralConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    assert memory.block_param_count(c) == 64 * 64 * 2 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64
    cfg = train.Config(micro_batch_size=1, batch_size=1, max_prompt_length=1, max_new_tokens=1)
    counts = {"policy": 1000, "critic": 900, "reward": 500, "cost": 500}
    one = memory.plan_bytes(cfg, c, counts, torch.bfloat16, 1, 0, True)
    extra = memory.activation_and_cache_bytes(c, 1, 2, torch.bfloat16, True, 1, 1).peak
    # reference and scorers frozen in bf16, but for the reference's float32 embedding and norms
    reference_fp32 = 100 * 64 + (2 * 2 + 1) * 64
    assert memory.reference_float32_params(c) == reference_fp32
    assert one - extra == 16 * (1000 + 900) + 2 * (1000 + 500 + 500) + 2 * reference_fp32
    two = memory.plan_bytes(cfg, c, counts, torch.bfloat16, 2, 0, True)
    assert two > (one - extra) / 2 + 16 * memory.block_param_count(c) / 2


def test_load_peak_by_hand_and_for_the_paper():
    """Sharded loading: shards + the whole last block + the float32 embedding in flight per
    GPU, one float32 policy on rank 0's host; whole loads: every model per GPU, one model per
    rank on the host."""
    from transformers import MistralConfig
    c = MistralConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    counts = {"policy": 10000, "critic": 9000, "reward": 500, "cost": 500}  # >= the embedding
    gpu, host = memory.load_bytes(c, counts, torch.bfloat16, 2, 0)
    weights = 4 * (10000 + 9000) + 2 * (10000 + 500 + 500) + 2 * memory.reference_float32_params(c)
    assert gpu == int(weights / 2 + 4 * memory.block_param_count(c) / 2 + 4 * 100 * 64)
    assert host == 4 * 10000
    assert memory.load_bytes(c, counts, torch.bfloat16, 1, 0) == (weights, 4 * 10000)
    lora = memory.load_bytes(c, counts, torch.bfloat16, 4, 2, local_world=2)
    adapter = 4 * memory.lora_param_count(c, 2)
    assert lora == (2 * (10000 + 9000 + 500 + 500) + 2 * adapter, 2 * (2 * 10000 + adapter))
    from scale.memory import param_count_from_config
    m = mistral_7b()
    n = param_count_from_config(m, "causal_lm")
    paper = {"policy": n, "critic": param_count_from_config(m, "base"), "reward": n, "cost": n}
    gpu, host = memory.load_bytes(m, paper, torch.bfloat16, 8, 0)
    assert 12 * 2**30 < gpu < 14 * 2**30 and 26 * 2**30 < host < 28 * 2**30  # was ~94 GiB per GPU


# ----------------------------------------------------------------------------- shared by ranks and the reference

def make_batch(policy):
    """Fixed data: ids (B, T), old log-probs a little off the current ones (ratios != 1, some clipped),
    advantages (B, R, K), full response masks (equal token counts on both ranks)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        old = response_logprobs(policy, ids, mask, R) + 0.1 * torch.randn(B, R, generator=g)
    return ids, mask, old, torch.randn(B, R, K, generator=g), torch.ones(B, R)


def losses_on(policy, batch, rows):
    ids, mask, old, adv, rmask = (t[rows] for t in batch)
    losses, _ = gapo.ppo_losses(response_logprobs(policy, ids, mask, R), old, adv, rmask, clip_eps=0.1)
    return losses  # (K,)


def objective_grads(losses, params):
    return [list(torch.autograd.grad(loss, params, retain_graph=True)) for loss in losses]


def gapo_step(policy, batch, rows, p=2.0, max_norm=0.05, lr=0.5):
    """One GAPO step as train.ppo_update does it (the objective gradients, global under torchrun
    through average_whole_gradients' hooks; one weighted backward; the mixed sharded/whole clip),
    with SGD so the comparison is not Adam's sign-sensitive."""
    params = mgda_parameters(policy, "last_block")
    losses = losses_on(policy, batch, rows)
    weights = gapo_weights(gram_matrix(objective_grads(losses, params)), p).weights.float()
    in_train, _ = gapo.loss_weights("gapo", losses, params, p, [0.5, 0.5], weight_scale="raw")
    torch.testing.assert_close(in_train, weights)
    (weights * losses).sum().backward()
    norm = distributed.clip_grad_norm_(list(policy.parameters()), max_norm)
    torch.optim.SGD(policy.parameters(), lr=lr).step()
    return weights, float(norm)


def lora_gradient(batch, rows, hooked=False):
    """The flat adapter gradient of one backward of a LoRA-wrapped tiny policy (B nonzero, so both
    of each pair of adapter matrices get a gradient)."""
    from peft import LoraConfig, get_peft_model
    policy = get_peft_model(make_tiny_mistral(VOCAB, seed=0),
                            LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    if hooked:
        distributed.average_whole_gradients(policy)
    losses_on(policy, batch, rows).sum().backward()
    return torch.cat([q.grad.reshape(-1) for q in policy.parameters() if q.requires_grad])


def worker(out_dir):
    """One rank of the 2-process launch. Writes rank0.json (and a saved policy) for the test to check."""
    torch.set_num_threads(1)
    rank, world, _ = distributed.init_distributed("cpu")
    assert world == 2
    rows = slice(2 * rank, 2 * rank + 2)
    policy = make_tiny_mistral(VOCAB, seed=0)
    batch = make_batch(policy)
    out = {"rank": rank}
    params = mgda_parameters(policy, "last_block")
    grads = objective_grads(losses_on(policy, batch, rows), params)
    # The same model with loading.py's hooks: its g_i are the means over ranks.
    twin = make_tiny_mistral(VOCAB, seed=0)
    distributed.average_whole_gradients(twin)
    global_grads = objective_grads(losses_on(twin, batch, rows), mgda_parameters(twin, "last_block"))
    for p in (0.0, 2.0):  # p = 1 with K = 2 always gives (1/2, 1/2): useless for telling data apart
        out[f"local_alpha_p{p:g}"] = gapo_weights(gram_matrix(grads), p).alpha.tolist()
        out[f"alpha_p{p:g}"] = gapo_weights(gram_matrix(global_grads), p).alpha.tolist()
    policy.zero_grad(set_to_none=True)

    # FSDP2: decoder layers and root sharded, the last block (the MGDA parameters) kept whole, its
    # gradients averaged by hooks (loading.py's order: shard, then hook).
    distributed.shard_model(policy, keep=params)
    distributed.average_whole_gradients(policy)
    from torch.distributed.tensor import DTensor
    out["sharded"] = sum(isinstance(q, DTensor) for q in policy.parameters())
    out["whole"] = sum(not isinstance(q, DTensor) for q in policy.parameters())
    weights, norm = gapo_step(policy, batch, rows)
    out.update(weights=weights.tolist(), norm=norm)
    with distributed.unsharded(policy):  # generation keeps the gathered weights across new tokens
        prompt = batch[0][:2, :5]
        out["generated"] = policy.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                           max_new_tokens=4, pad_token_id=0).tolist()
    out["resharded"] = all(isinstance(q, DTensor) for n, q in policy.named_parameters() if "layers.0." in n)
    with distributed.full_parameters(policy):  # a normal Hugging Face folder, written by rank 0
        if distributed.is_main():
            policy.save_pretrained(os.path.join(out_dir, "policy"))

    # Full optimizer state dict round trip (what --resume does): Adam moments come back shard by shard.
    opt = torch.optim.AdamW([q for q in policy.parameters() if q.requires_grad], lr=1e-3)
    (losses_on(policy, batch, rows).sum()).backward()
    opt.step()
    state = distributed.optimizer_state_dict(policy, opt)
    path = os.path.join(out_dir, "optim.pt")
    if distributed.is_main():
        torch.save(state, path)
    distributed.barrier()
    fresh = torch.optim.AdamW([q for q in policy.parameters() if q.requires_grad], lr=1e-3)
    distributed.load_optimizer_state_dict(policy, fresh, torch.load(path, weights_only=False, mmap=True))
    same = [torch.equal(_local(a["exp_avg"]), _local(b["exp_avg"]))
            for a, b in zip(opt.state.values(), fresh.state.values())]
    out["optimizer_round_trip"] = bool(same) and all(same)
    out["gathered_sizes"] = distributed.all_gather_rows(torch.full((2, 3), float(rank))).shape[0]

    # LoRA under torchrun: the model replicated, every trainable (adapter) parameter whole and hooked.
    adapter = lora_gradient(batch, rows, hooked=True)
    out["lora_grad"] = adapter.tolist()
    out["lora_grads_equal"] = bool(torch.equal(*distributed.all_gather_rows(adapter[None]).unbind(0)))

    # Sharded loading: the policy saved above, read by rank 0 only, comes back sharded, the last
    # block whole, float32 masters and the rotary buffers filled; gathered, it equals the file.
    import model as model_lib
    saved = os.path.join(out_dir, "policy")
    loaded = distributed.load_sharded(
        lambda d: model_lib.load_policy(saved, d, "bfloat16"), torch.device("cpu"),
        distributed.policy_sharder(lambda m: mgda_parameters(m, "last_block")))
    out["loaded_sharded"] = sum(isinstance(q, DTensor) for q in loaded.parameters())
    out["loaded_whole"] = sum(not isinstance(q, DTensor) for q in loaded.parameters())
    with distributed.full_parameters(loaded):
        if rank == 0:
            from safetensors.torch import load_file
            file = load_file(os.path.join(saved, "model.safetensors"))
            mine = loaded.state_dict()
            out["loaded_equal"] = sorted(file) == sorted(mine) and all(
                torch.equal(file[k], mine[k]) for k in file)
            out["loaded_dtypes"] = sorted({str(v.dtype) for v in mine.values()})
    out["rotary"] = [float(b.float().sum()) for n, b in loaded.named_buffers() if "inv_freq" in n]
    if rank == 0:
        with open(os.path.join(out_dir, "rank0.json"), "w") as f:
            json.dump(out, f)
    torch.distributed.destroy_process_group()


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


# ----------------------------------------------------------------------------- the 2-process test

@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--standalone", os.path.abspath(__file__), str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    with open(out / "rank0.json") as f:
        return json.load(f), out


def test_alpha_of_two_ranks_equals_alpha_of_one_process_on_the_union(two_ranks):
    ranks, _ = two_ranks
    policy = make_tiny_mistral(VOCAB, seed=0)
    batch = make_batch(policy)
    grads = objective_grads(losses_on(policy, batch, slice(0, B)), mgda_parameters(policy, "last_block"))
    for p in ("0", "2"):
        union = gapo_weights(gram_matrix(grads), float(p)).alpha
        torch.testing.assert_close(torch.tensor(ranks[f"alpha_p{p}"], dtype=torch.float64), union, atol=1e-6, rtol=0)
        # ...and the test can fail: rank 0's own half of the data gives another alpha
        assert (torch.tensor(ranks[f"local_alpha_p{p}"], dtype=torch.float64) - union).abs().max() > 1e-3


def test_fsdp2_step_with_whole_last_block_equals_one_process_step(two_ranks):
    from transformers import AutoModelForCausalLM
    ranks, out = two_ranks
    assert ranks["sharded"] > 0 and ranks["whole"] == 9  # 9 tensors in a Mistral block; all the rest sharded
    policy = make_tiny_mistral(VOCAB, seed=0)
    batch = make_batch(policy)
    weights, norm = gapo_step(policy, batch, slice(0, B))
    assert norm > 0.05  # the clipping is active, so the mixed sharded/whole norm is tested
    torch.testing.assert_close(torch.tensor(ranks["weights"]), weights, atol=1e-5, rtol=1e-4)
    assert abs(ranks["norm"] - norm) < 1e-5 * norm
    saved = AutoModelForCausalLM.from_pretrained(out / "policy")
    assert saved.config.architectures == ["MistralForCausalLM"]  # not FSDP's wrapper class
    for (name, a), b in zip(policy.state_dict().items(), saved.state_dict().values()):
        torch.testing.assert_close(b, a, atol=2e-6, rtol=1e-5, msg=name)
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(policy.parameters(),
                                                           make_tiny_mistral(VOCAB, seed=0).parameters()))
    prompt = batch[0][:2, :5]
    expected = policy.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                               max_new_tokens=4, pad_token_id=0)
    assert ranks["generated"] == expected.tolist() and ranks["resharded"]


def test_optimizer_state_round_trip_and_gather(two_ranks):
    ranks, _ = two_ranks
    assert ranks["optimizer_round_trip"] and ranks["gathered_sizes"] == 4


def test_replicated_lora_gradients_are_the_mean_over_ranks(two_ranks):
    ranks, _ = two_ranks
    policy = make_tiny_mistral(VOCAB, seed=0)
    batch = make_batch(policy)
    union = lora_gradient(batch, slice(0, B))  # one process, both ranks' rows: the global mean loss
    assert ranks["lora_grads_equal"] and union.abs().max() > 0
    torch.testing.assert_close(torch.tensor(ranks["lora_grad"]), union, atol=1e-6, rtol=1e-4)
    # ...and the test can fail: rank 0's rows alone give another gradient
    assert (lora_gradient(batch, slice(0, 2)) - union).abs().max() > 1e-4


def test_sharded_loading_gathers_back_to_the_checkpoint_exactly(two_ranks):
    ranks, _ = two_ranks
    assert ranks["loaded_sharded"] > 0 and ranks["loaded_whole"] == 9  # the last block whole
    assert ranks["loaded_equal"] and ranks["loaded_dtypes"] == ["torch.float32"]  # masters
    expected = [float(b.float().sum()) for n, b in make_tiny_mistral(VOCAB).named_buffers()
                if "inv_freq" in n]
    assert ranks["rotary"] == expected and expected  # recomputed by rank 0, not to_empty's garbage


def test_torchrun_train_and_resume_match_an_uninterrupted_run(tiny_toyworld, tmp_path):
    args = ["--toy_size", "tiny", "--toy_dir", tiny_toyworld, "--method", "gapo", "--p", "2", "--iterations", "2",
            "--batch_size", "4", "--minibatch_size", "4", "--micro_batch_size", "2", "--max_new_tokens", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def launch(out, *extra):
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                 "train.py", *args, "--out_dir", str(out), *extra], cwd=ROOT, capture_output=True,
                                text=True, timeout=300, env=env)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        with open(out / "log.jsonl") as f:
            return [json.loads(line) for line in f], result.stdout

    straight, stdout = launch(tmp_path / "straight")
    assert stdout.count("iter    1 ") == 1  # rank 0 alone prints and logs
    assert [r["iteration"] for r in launch(tmp_path / "resumed", "--stop_after", "1")[0]] == [1]
    resumed, _ = launch(tmp_path / "resumed", "--resume")
    keys = ["score_helpful", "score_harmless", "kl", "alpha", "weights", "value_loss"]
    assert [[r[k] for k in keys] for r in straight] == [[r[k] for k in keys] for r in resumed]
    assert [r["iteration"] for r in resumed] == [1, 2] and all(abs(sum(r["alpha"]) - 1) < 1e-6 for r in resumed)
    from transformers import AutoConfig, AutoModelForCausalLM
    policy = tmp_path / "resumed" / "checkpoint" / "policy"
    assert AutoConfig.from_pretrained(policy).architectures == ["MistralForCausalLM"]
    AutoModelForCausalLM.from_pretrained(policy)


def test_torchrun_bf16_checkpointing_two_iterations_checkpoint_and_resume(tiny_toyworld, tmp_path):
    """bf16 + gradient checkpointing + the last block kept whole: the critic's float32 value head next to its
    backbone, and AdamW's foreach kernels (asked for under torchrun, CUDA's default) over sharded and whole
    parameters. Iteration 1 and a checkpoint, then --resume for iteration 2."""
    args = ["--toy_size", "tiny", "--toy_dir", tiny_toyworld, "--method", "gapo", "--iterations", "2",
            "--batch_size", "4", "--minibatch_size", "4", "--micro_batch_size", "2", "--max_new_tokens", "8",
            "--dtype", "bfloat16", "--gradient_checkpointing", "--out_dir", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for extra in (["--stop_after", "1"], ["--resume"]):
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                 "2", "train.py", *args, *extra], cwd=ROOT, capture_output=True, text=True,
                                timeout=300, env=env)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    with open(tmp_path / "run" / "log.jsonl") as f:
        log = [json.loads(line) for line in f]
    assert [r["iteration"] for r in log] == [1, 2] and all(abs(sum(r["alpha"]) - 1) < 1e-6 for r in log)
    from transformers import AutoModelForCausalLM
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoint" / "policy")
    assert next(saved.parameters()).dtype == torch.float32  # the master weights, exported in HF format


def optimizer_steps(checkpoint):
    """{(model, parameter name): AdamW's step count} from a checkpoint's optim/ folder."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    flat = checkpoint.parent / "optim.pt"
    dcp_to_torch_save(checkpoint / "optim", flat)
    saved = torch.load(flat, weights_only=False)
    return {(model, key): int(value) for model, state in saved.items()
            for key, value in state.items() if key.endswith(".step")}


def test_checkpoints_resume_on_another_world_size(tiny_toyworld, tmp_path):
    """Iteration 1 on 2 ranks (sharded optimizer states, two param groups), iteration 2 in one
    process (whole states, one group) from its checkpoint, iteration 3 on 2 ranks again from the
    one-process checkpoint: every rank writes and reads its own slices, and AdamW's step count
    goes on across both changes."""
    out = tmp_path / "run"
    args = ["train.py", "--toy_size", "tiny", "--toy_dir", tiny_toyworld, "--method", "gapo",
            "--iterations", "3", "--batch_size", "4", "--minibatch_size", "4",
            "--micro_batch_size", "2", "--max_new_tokens", "8", "--out_dir", str(out)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    steps = []
    for launcher, extra in [(torchrun, ["--stop_after", "1"]),
                            ([sys.executable], ["--resume", "--stop_after", "2"]),
                            (torchrun, ["--resume"])]:
        result = subprocess.run(launcher + args + extra, cwd=ROOT, capture_output=True,
                                text=True, timeout=300, env=env)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        steps.append(optimizer_steps(out / "checkpoint"))
    with open(out / "log.jsonl") as f:
        log = [json.loads(line) for line in f]
    assert [r["iteration"] for r in log] == [1, 2, 3]
    for r in log[1:]:
        numbers = [r[k] for k in ("score_helpful", "score_harmless", "kl", "value_loss")]
        numbers += r["alpha"] + r["weights"]
        assert all(math.isfinite(x) for x in numbers), r
    assert {model for model, _ in steps[0]} == {"policy", "critic"}
    per_iteration = set(steps[0].values())
    assert len(per_iteration) == 1 and per_iteration.pop() > 0
    for n, saved in enumerate(steps[1:], start=2):
        assert saved.keys() == steps[0].keys()  # keyed by parameter name, whatever the sharding
        assert all(saved[k] == n * steps[0][k] for k in saved)


def test_adamw_groups_split_sharded_and_whole():
    from torch.distributed.tensor import DTensor
    layer = torch.nn.Linear(2, 2)
    assert len(distributed.adamw(layer, 1e-3, 0.0).param_groups) == 1  # one process: nothing sharded
    assert not any(isinstance(p, DTensor) for p in layer.parameters())


def test_single_process_helpers_are_plain_torch():
    assert distributed.init_distributed("cpu") == (0, 1, torch.device("cpu"))
    assert distributed.is_main() and distributed.get_world_size() == 1
    x = torch.arange(6.0).reshape(3, 2)
    assert distributed.all_gather_rows(x) is x and torch.equal(distributed.all_reduce_sum(x), x)
    layer = torch.nn.Linear(2, 2)
    distributed.average_whole_gradients(layer)  # no hook: a hook's all-reduce would fail here
    layer(torch.ones(1, 2)).sum().backward()
    torch.testing.assert_close(layer.weight.grad, torch.ones(2, 2))
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 3.0)
    assert abs(float(distributed.clip_grad_norm_([p], 1.0)) - 6.0) < 1e-6
    torch.testing.assert_close(p.grad.norm(), torch.tensor(1.0), atol=1e-5, rtol=0)


if __name__ == "__main__":
    worker(sys.argv[1])


def test_torchrun_one_gram_matrix_per_step_whatever_the_micro_batch(tiny_toyworld, tmp_path):
    """Two processes: the first step's alpha and weights are the same with micro-batches of 2
    (two per step on each rank, summed, then averaged over ranks before the one solve) as with
    one micro-batch per step. The second run samples with the static-cache engine under FSDP2
    (the same tokens as hf on the CPU), so that path runs under torchrun too."""
    args = ["--toy_size", "tiny", "--toy_dir", tiny_toyworld, "--method", "gapo", "--p", "2",
            "--iterations", "1", "--batch_size", "4", "--minibatch_size", "4", "--ppo_epochs", "1",
            "--max_new_tokens", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    logs = {}
    for micro in ("4", "2"):
        out = tmp_path / f"m{micro}"
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 "--nproc_per_node", "2", "train.py", *args, "--micro_batch_size",
                                 micro, "--out_dir", str(out),
                                 "--generation", "static" if micro == "2" else "hf"],
                                cwd=ROOT, capture_output=True,
                                text=True, timeout=300, env=env)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        with open(out / "log.jsonl") as f:
            logs[micro] = json.loads(f.readline())
    for key in ("alpha", "weights", "grad_norms"):
        torch.testing.assert_close(torch.tensor(logs["2"][key]), torch.tensor(logs["4"][key]),
                                   rtol=1e-4, atol=1e-6, msg=key)
