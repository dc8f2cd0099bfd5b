"""Shared plumbing of the toy-world training scripts: seeding, progress, training reports."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ASSETS = Path(__file__).parent / "assets"
THREADS = int(os.environ.get("TOYWORLD_THREADS", "2"))


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG the scripts use and pin the thread count (results depend on it)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    return torch.Generator().manual_seed(seed)


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 5% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * progress)))


@dataclass
class Progress:
    """Collects loss curves and prints a progress line every `every` steps."""

    name: str
    total: int
    every: int = 50
    curves: dict[str, list[float]] = field(default_factory=dict)
    start: float = field(default_factory=time.time)
    end: float | None = None  # frozen at the last step, so later work is not counted

    def log(self, step: int, **values: float) -> None:
        for key, value in values.items():
            self.curves.setdefault(key, []).append(float(value))
        if step == self.total - 1:
            self.end = time.time()
        if step % self.every == 0 or step == self.total - 1:
            window = {k: np.mean(v[-self.every:]) for k, v in self.curves.items()}
            text = " ".join(f"{k}={v:.4f}" for k, v in window.items())
            print(f"[{self.name}] step {step + 1}/{self.total} {text} "
                  f"({time.time() - self.start:.0f}s)", flush=True, file=sys.stdout)

    @property
    def seconds(self) -> float:
        return (self.end or time.time()) - self.start


def write_report(directory: Path, progress: Progress, metrics: dict) -> None:
    """Write `training_loss.png` (smoothed curves) and `training_metrics.json` next to weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, values in progress.curves.items():
        v = np.asarray(values)
        k = max(1, len(v) // 100)
        smooth = np.convolve(v, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(smooth)) + k - 1, smooth, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{progress.name} training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "training_loss.png", dpi=90)
    plt.close(fig)
    metrics = {"train_seconds": round(progress.seconds, 1), "threads": THREADS,  # overridable
               "torch": torch.__version__, **metrics}
    (directory / "training_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
