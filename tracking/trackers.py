"""Every logged number to an experiment tracker: `--report_to none|tensorboard|wandb|trackio`.

    python train.py --method gapo --p 2 --report_to tensorboard   # then: tensorboard --logdir runs

log.jsonl stays the run's record (evaluate.py and the studies read it); a tracker gets the same
iteration records as flat scalars, on rank 0 only, with the iteration as the step:
- numbers as they are (score_helpful, kl, lambda, eval_helpful, time_update, ...);
- per-objective lists under the objective's name: alpha/helpful, grad_norms/harmless, gains/brief,
  value_error/helpful, fastrl_weights/harmless (the K names of the run, in order);
- K x K matrices once per pair: grad_cosine/helpful_harmless (a cosine matrix is symmetric);
- other lists by position (weights/0 for a method with one combined loss); None is left out.
TensorBoard writes to <out_dir>/tensorboard, and a resumed run drops the points a crashed run
logged past its checkpoint (purge_step), as log.jsonl does. wandb and trackio runs are named after
the run folder and carry the Config. Each library is imported only when asked for; a missing one
is one sentence before any model loads (`check`).

Left out on purpose: MLflow, Comet and other trackers (one function each here), media (sample
answers), and trackers on ranks other than 0.
"""
import dataclasses
import importlib.util
import os

REPORTERS = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
PROJECT = "gapo"  # the wandb / trackio project runs go to


def check(report_to):
    """One sentence if --report_to names an unknown tracker or one whose library is missing."""
    if report_to not in REPORTERS:
        raise ValueError(f"unknown report_to {report_to!r}; choose {', '.join(REPORTERS)}.")
    package = REPORTERS[report_to]
    if package and importlib.util.find_spec(package) is None:
        raise ValueError(f"--report_to {report_to} needs the {package} package, which is not "
                         f"installed; pip install {package} (or --report_to none).")


def flatten(record, names):
    """An iteration's record -> {tag: float}: K-long lists under the objective names, K x K
    matrices once per pair (i < j), other lists by position, None and text left out."""
    K = len(names)
    out = {}
    for key, value in record.items():
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, (int, float)):
            out[key] = float(value)
        elif isinstance(value, list) and value and isinstance(value[0], list):
            if len(value) == K and all(len(row) == K for row in value):  # (K, K)
                for i in range(K):
                    for j in range(i + 1, K):
                        out[f"{key}/{names[i]}_{names[j]}"] = float(value[i][j])
        elif isinstance(value, list):
            labels = names if len(value) == K else [str(i) for i in range(len(value))]
            out.update({f"{key}/{label}": float(v) for label, v in zip(labels, value)})
    return out


@dataclasses.dataclass
class Tracker:
    """log(record) after every iteration, close() at the end; the no-op one for none."""
    names: list
    kind: str = "none"
    handle: object = None  # SummaryWriter, or the wandb / trackio module

    def log(self, record):
        if self.kind == "none":
            return
        scalars, step = flatten(record, self.names), int(record["iteration"])
        if self.kind == "tensorboard":
            for tag, value in scalars.items():
                self.handle.add_scalar(tag, value, global_step=step)
            self.handle.flush()
        else:  # wandb, and trackio, which keeps wandb's calls
            self.handle.log(scalars, step=step)

    def close(self):
        if self.kind == "tensorboard":
            self.handle.close()
        elif self.kind in ("wandb", "trackio"):
            self.handle.finish()


def start(cfg, names, rank, start_iteration=0):
    """The run's tracker (the no-op one on ranks other than 0 and for --report_to none)."""
    if cfg.report_to == "none" or rank != 0:
        return Tracker(names)
    check(cfg.report_to)
    if cfg.report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(os.path.join(cfg.out_dir, "tensorboard"),
                               purge_step=start_iteration + 1 if start_iteration else None)
        return Tracker(names, "tensorboard", writer)
    module = importlib.import_module(cfg.report_to)
    module.init(project=PROJECT, name=os.path.basename(os.path.normpath(cfg.out_dir)),
                config=dataclasses.asdict(cfg))
    return Tracker(names, cfg.report_to, module)
