"""What training reports: the loss meter, train_log.jsonl (with the NaN guard), the progress bar and loss.png."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from animegen.parallel import all_mean, world
from animegen.utils import atomic_replace, atomic_write_text


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the last good checkpoint was kept."""


class LossMeter:
    """Running sums of the logged values, kept on the device (no host sync per step), and how many steps added
    to each: a value a step does not report (a lazy regulariser that was not due) is neither summed nor counted,
    so its mean is over the steps that computed it."""

    def __init__(self, keys: list[str], device: torch.device):
        self.keys, self.device = list(keys), device
        self.zero = torch.zeros((), device=device)
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.keys), device=self.device)
        self.counts = [0] * len(self.keys)
        self.steps = 0

    @torch.no_grad()
    def add(self, values: dict[str, torch.Tensor]) -> None:
        self.sums += torch.stack([values[k].detach() if k in values else self.zero for k in self.keys]).float()
        self.counts = [n + (k in values) for k, n in zip(self.keys, self.counts)]
        self.steps += 1

    def means(self) -> dict[str, float]:
        """The mean of each value over the steps that reported it (one host sync); under data parallelism the mean
        over the ranks too (every rank calls this at the same step: a NaN on any rank is seen by all)."""
        return {k: s / n for k, s, n in zip(self.keys, all_mean(self.sums).tolist(), self.counts) if n > 0}


class TrainLog:
    """train_log.jsonl: one line of mean losses and throughput every ``log_every`` steps (and at each snapshot);
    a NaN / Inf mean is logged as a 'diverged' event and raises TrainingDiverged."""

    def __init__(self, path: Path, meter: LossMeter, images_seen: int, progress=None):
        self.path, self.meter, self.progress = path, meter, progress
        self.t_last, self.seen_last = time.perf_counter(), images_seen

    def write(self, step: int, images_seen: int) -> dict:
        if self.meter.steps == 0:
            return {}
        means = self.meter.means()
        now = time.perf_counter()
        rate = (images_seen - self.seen_last) / max(now - self.t_last, 1e-9)
        row = {"step": step, "kimg": round(images_seen / 1000, 3)} | means | {"img_s": round(rate, 2)}
        bad = [k for k in self.meter.keys if k in means and not math.isfinite(means[k])]
        if bad:
            self._append({"step": step, "kimg": row["kimg"], "event": "diverged", "losses": bad})
            raise TrainingDiverged(
                f"{', '.join(bad)} became NaN/Inf before step {step} ({row['kimg']} kimg); stopped. The last good "
                f"checkpoint in {self.path.parent} was kept. Try a lower learning rate, a larger r1_gamma, or "
                "--amp off.")
        self._append(row)
        if self.progress is not None:
            self.progress.set_postfix({k: f"{row[k]:.3f}" for k in ("loss_d", "loss_g")} | {"img/s": f"{rate:.0f}"})
        self.meter.reset()
        self.t_last, self.seen_last = now, images_seen
        return row

    def advance(self, images: int) -> None:
        if self.progress is not None:
            self.progress.update(images)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()

    def restart_clock(self) -> None:
        """Time spent outside training (a snapshot) does not count towards throughput."""
        self.t_last = time.perf_counter()

    def _append(self, row: dict) -> None:
        if not world().main:  # one writer: rank 0
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def truncate_log(log_path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a resumed run continues from."""
    if not log_path.exists():
        return
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    keep = [r for r in rows if r.get("step", 0) <= step and "event" not in r]
    atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in keep))


def plot_losses(log_path: Path, out_png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "kimg" in r and "loss_d" in r]
    if not rows:
        return
    keys = [k for k in ("loss_d", "loss_g", "r1", "pl") if any(k in r for r in rows)]
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        pts = [(r["kimg"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("kimg")
    fig.tight_layout()
    atomic_replace(out_png, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
