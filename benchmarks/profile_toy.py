"""Where the toy loop's time goes: phase times from the run's log and the hottest torch operators.

    python -m benchmarks.profile_toy                 # 40 iterations of the main command's run
    python -m benchmarks.profile_toy --iterations 100 --method ppo-h

Trains the default toy run (train.py's defaults, `--method gapo --p 2` unless told otherwise) for a
few iterations under torch.profiler in one process, then prints the mean time per iteration of each
phase of the loop (generate, score, forward, update: train.py logs them) after the first 5
iterations, and the operators with the most self time with their input shapes. Read the ratio of
phases, not the absolute times: this 2-core machine is shared, and the same run varies by 30%.

Left out on purpose: GPU profiling (benchmarks/bench.py has the 7B shapes).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

import train

PHASES = ("generate", "score", "forward", "update")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--method", default="gapo")
    ap.add_argument("--top", type=int, default=12, help="operators to list")
    args, train_args = ap.parse_known_args(argv)
    if args.iterations < 1:
        ap.error(f"--iterations must be at least 1 (got {args.iterations}).")
    with tempfile.TemporaryDirectory() as out:
        argv = ["--method", args.method, "--iterations", str(args.iterations), "--out_dir", out,
                *train_args]
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            train.main(argv)
        with open(os.path.join(out, "log.jsonl")) as f:
            records = [json.loads(line) for line in f][5:]  # past the first iterations' warm-up
    means = {k: statistics.mean(r[f"time_{k}"] for r in records) for k in PHASES}
    total = sum(means.values())
    print(f"\nper iteration ({len(records)} iterations after 5 of warm-up): {total * 1000:.0f} ms")
    for k, v in means.items():
        print(f"  {k:9s} {v * 1000:6.1f} ms  {100 * v / total:5.1f}%")
    events = sorted(prof.key_averages(group_by_input_shape=True),
                    key=lambda e: -e.self_cpu_time_total)[:args.top]
    spent = sum(e.self_cpu_time_total for e in prof.key_averages())
    print(f"\noperators with the most self time (of {spent / 1e6:.1f} s under the profiler):")
    for e in events:
        share = 100 * e.self_cpu_time_total / spent
        print(f"  {e.key[:40]:40s} {share:5.1f}%  {e.count:6d} calls "
              f"{e.self_cpu_time_total / e.count:8.1f} us  {str(e.input_shapes)[:60]}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main(sys.argv[1:]))
