"""The paper's setting (Sec. 4.1): its models and data sets, and fetching them for a machine
without internet.

    python -m worlds.paper                      # download everything --preset paper reads (~45 GB)
    python -m worlds.paper --dry_run            # list what would be fetched, fetch nothing
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python train.py --preset paper --method gapo --p 1

train.py's `paper` preset reads its model and prompt ids from here. A compute node without
internet has to have these in the Hugging Face caches beforehand: the three models go to the Hub
cache (huggingface_hub.snapshot_download; weights in one format, safetensors where the repository
has them), the data sets to the datasets cache (datasets.load_dataset of every split the paper
setting reads: PKU-SafeRLHF train for training, its test split and HH-RLHF test for evaluation).
Run it on a machine with internet that shares the caches (HF_HOME) with the compute nodes, then set
HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 there: without them every start spends about 45 s
retrying the Hub before it falls back to the cache.

Left out on purpose: the evaluation prompt sets that are files on GitHub (evals/prompt_sets.py says
where each comes from) and the GPT-4o judge (an API, not a download). This is not a World (the
preset names every path; nothing is built).
"""
import argparse
import sys

POLICY = "HuggingFaceH4/mistral-7b-sft-beta"  # pi_ref and the policy's start
REWARD = "PKU-Alignment/beaver-7b-v1.0-reward"  # R: helpfulness
COST = "PKU-Alignment/beaver-7b-v1.0-cost"  # C: harmlessness = -C (C > 0 means unsafe)
PROMPTS = "PKU-Alignment/PKU-SafeRLHF"  # training prompts (train split), evaluation (test)
DATA_SPLITS = [(PROMPTS, None, "train"), (PROMPTS, None, "test"),
               ("Anthropic/hh-rlhf", None, "test")]  # (repo, data_dir, split)
# Weights in other frameworks' formats are never read here.
OTHER_FORMATS = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "*.tflite", "*.gguf"]


def ignore_patterns(files):
    """What a snapshot skips: other frameworks' weights, and the .bin copies where safetensors
    exist (the same weights twice would double the download)."""
    patterns = list(OTHER_FORMATS)
    if any(f.endswith(".safetensors") for f in files):
        patterns += ["*.bin", "*.pt", "*.pth"]
    return patterns


def download(dry_run=False):
    """Fetch the models and data sets into the Hugging Face caches (where HF_HOME points, where
    train.py will look); returns what it fetched."""
    from huggingface_hub import HfApi, snapshot_download
    fetched = []
    for repo in (POLICY, REWARD, COST):
        skip = ignore_patterns(HfApi().list_repo_files(repo))
        print(f"model {repo} (skipping {', '.join(skip)})", flush=True)
        if not dry_run:
            snapshot_download(repo, ignore_patterns=skip)
        fetched.append(repo)
    for repo, data_dir, split in DATA_SPLITS:
        print(f"data set {repo}{':' + data_dir if data_dir else ''} split {split}", flush=True)
        if not dry_run:
            import datasets
            datasets.load_dataset(repo, data_dir=data_dir, split=split)
        fetched.append(f"{repo}:{split}")
    return fetched


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry_run", action="store_true", help="list what would be fetched")
    args = ap.parse_args(argv)
    try:
        fetched = download(args.dry_run)
    except Exception as err:  # noqa: BLE001: the Hub clients' connection, HTTP and access errors
        raise SystemExit(f"error: the download stopped ({type(err).__name__}: {err}); check the "
                         f"connection (and HF_TOKEN for gated repositories), then run it again: "
                         f"what is cached is not fetched twice.")
    print(f"{'would fetch' if args.dry_run else 'fetched'} {len(fetched)} items; on the machine "
          f"without internet set HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1")


if __name__ == "__main__":
    main(sys.argv[1:])
