"""bench.py (and benchmarks/paper_models.py) on CPU with the tiny versions of the paper's
architectures (the GPU figures come from a GPU run)."""
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import bench
from scale.memory import param_count_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cli_tiny_runs_both_methods_and_prints_the_table():
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--tiny", "--iterations",
                             "1", "--warmup", "0"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for text in ["gapo s", "ppo-h s", "generate", "loss_weights", "GAPO / PPO-H: iteration",
                 "training", "planned peak", "MFU n/a (CPU)"]:
        assert text in out, (text, out)


def test_full_finetuning_phases_and_shapes_in_process():
    clocks = bench.main(["--tiny", "--lora_r", "0", "--iterations", "1", "--warmup", "0",
                         "--methods", "gapo,pgapo", "--batch_size", "4", "--micro_batch_size", "2",
                         "--new_tokens", "8"])
    for method in ("gapo", "pgapo"):
        seconds = clocks[method].seconds
        assert set(seconds) == {"generate", "score", "forward", "update", "loss_weights",
                                "iteration"}
        assert all(s > 0 for s in seconds.values())
        assert seconds["loss_weights"] < seconds["update"] < seconds["iteration"]
    import gapo
    import train
    assert gapo.loss_weights.__name__ == "loss_weights"  # the timing wrapper is taken off again
    assert gapo.loss_weights.__module__ == "gapo"
    assert all(d.__module__ == "gapo" for d in train.ppo_update.__defaults__ or () if callable(d))


def test_timed_loss_weights_times_every_call_and_restores_even_after_an_error():
    import gapo
    import train
    original, defaults = gapo.loss_weights, train.ppo_update.__defaults__
    clock = bench.Clock(torch.device("cpu"))
    params = [torch.nn.Parameter(torch.tensor([1.0, 2.0]))]

    def weights(loss_weights):  # gradients (1, 0) and (0, 3)
        losses = torch.stack([params[0][0] * 1.0, params[0][1] * 3.0])
        return loss_weights("gapo", losses, params, 2.0, [0.5, 0.5])[0]

    with pytest.raises(RuntimeError, match="inside"):
        with bench.timed_loss_weights(clock):
            assert gapo.loss_weights is not original
            got = weights(gapo.loss_weights)
            assert "loss_weights" in clock.seconds
            raise RuntimeError("inside")
    want = weights(original)
    assert torch.equal(got, want)  # the wrapper returns exactly what it wraps
    assert gapo.loss_weights is original and train.ppo_update.__defaults__ == defaults


def test_seven_billion_configs_have_the_published_sizes():
    mistral, llama = bench.configs(tiny=False)
    assert param_count_from_config(mistral, "causal_lm") == 7_241_732_096  # Mistral-7B-v0.1
    # LLaMA-7B (6,738,415,616 with its LM head) without the head, plus the beaver score head
    # Linear(4096, 1)
    assert param_count_from_config(llama, "score") == 6_738_415_616 - 32000 * 4096 + 4096


def test_bad_flags_stop_with_one_sentence():
    with pytest.raises(SystemExit, match="unknown method"):
        bench.parse_args(["--tiny", "--methods", "gapo,dpo"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="need a CUDA GPU"):
            bench.parse_args([])


def test_check_tiny_runs_bench_and_two_train_iterations(tmp_path):
    out = bench.main(["--check", "--tiny", "--check_dir", str(tmp_path / "check")])
    with open(os.path.join(out, "log.jsonl")) as f:
        assert len(f.readlines()) == 2
    assert os.path.isdir(os.path.join(out, "checkpoint", "policy"))


def test_compare_paths_reports_old_over_new_ratios():
    ratios = bench.main(["--tiny", "--compare_paths", "--lora_r", "0", "--batch_size", "4",
                         "--micro_batch_size", "2", "--new_tokens", "4", "--prompt_length", "4"])
    assert set(ratios) == {"generate", "logprobs"} and all(r > 0 for r in ratios.values())


def test_compare_engines_reports_tokens_per_second_of_each_engine(capsys):
    speeds = bench.main(["--tiny", "--compare_engines", "--lora_r", "8", "--batch_size", "2",
                         "--new_tokens", "4", "--prompt_length", "4"])
    assert set(speeds) == {"hf", "static"} and all(s > 0 for s in speeds.values())
    printed = capsys.readouterr().out
    assert f"static / hf: {speeds['static'] / speeds['hf']:.2f}x" in printed
