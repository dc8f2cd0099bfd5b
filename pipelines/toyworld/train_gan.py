"""Train the toy conditional GAN (hinge loss, projection discriminator, EMA generator).

Only the EMA generator is shipped; the discriminator is discarded after training.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import spectral_norm

from pipelines.toyworld.data import render_examples, training_examples
from pipelines.toyworld.gan import (
    ATTRIBUTES,
    DEFAULT_CONFIG,
    Generator,
    generate,
    label_tensor,
    load_generator,
)
from pipelines.toyworld.judge import judge
from pipelines.toyworld.models import GAN_DIR
from pipelines.toyworld.training import Progress, cosine_lr, seed_everything, write_report
from pipelines.toyworld.world import P_TWO_SHAPES

SEED = 0
STEPS = 2000
BATCH = 64
LR = 2e-4
N_TRAIN = 20000
EMA = 0.999


class Discriminator(nn.Module):
    """Spectrally normalised conv net; projection head (Miyato & Koyama) per attribute."""

    def __init__(self, attributes: dict[str, list[str]], width: int = 32) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(3, w, 3, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(w, 2 * w, 4, 2, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * w, 4 * w, 4, 2, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(4 * w, 8 * w, 4, 2, 1)), nn.LeakyReLU(0.2),
        )
        self.head = spectral_norm(nn.Linear(8 * w, 1))
        self.names = list(attributes)
        self.embed = nn.ModuleDict({a: spectral_norm(nn.Embedding(len(v), 8 * w))
                                    for a, v in attributes.items()})

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.net(x).sum(dim=(2, 3))
        proj = sum((self.embed[a](labels[:, i]) * h).sum(1) for i, a in enumerate(self.names))
        return self.head(h).squeeze(1) + proj


def single_shape_set(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-shape training images in [-1, 1] and their attribute label indices."""
    examples = [e for e in training_examples(int(n / (1 - 0.25) / (1 - P_TWO_SHAPES)) + 500, seed)
                if e.attrs.domain == "shapes" and len(e.attrs.shapes) == 1][:n]
    images = torch.from_numpy(render_examples(examples)).permute(0, 3, 1, 2).float() / 127.5 - 1
    labels = label_tensor([{k: v for k, v in e.attrs.flat().items() if k in ATTRIBUTES}
                           for e in examples], ATTRIBUTES)
    return images, labels


def evaluate(directory=GAN_DIR, n: int = 1000, seed: int = 5) -> dict[str, float]:
    """Judge agreement of generated images with uniformly drawn conditioning labels."""
    model, config = load_generator(directory)
    rng = np.random.default_rng(seed)
    attrs = config["attributes"]
    labels = [{a: v[int(rng.integers(len(v)))] for a, v in attrs.items()} for _ in range(n)]
    images = generate(model, labels, list(range(10**6, 10**6 + n)))
    verdicts = [judge(im) for im in images]
    return {f"judge_{a}_match": float(np.mean([v.get(a) == lab[a] for v, lab in zip(verdicts, labels)]))
            for a in attrs} | {"eval_samples": n}


@torch.no_grad()
def recalibrate_batchnorm(g: Generator, labels: torch.Tensor, gen: torch.Generator,
                          batches: int = 50) -> None:
    """Re-estimate BatchNorm statistics for the EMA weights (cumulative average), then freeze."""
    for m in g.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    g.train()
    for _ in range(batches):
        idx = torch.randint(len(labels), (256,), generator=gen)
        g(torch.randn(256, int(g.config["z_dim"]), generator=gen), labels[idx])
    g.eval()


def train(steps: int = STEPS) -> dict[str, float]:
    """Train, save the EMA generator + config + report, return the final metrics."""
    gen = seed_everything(SEED)
    images, labels = single_shape_set(N_TRAIN, SEED)
    g, d = Generator(DEFAULT_CONFIG), Discriminator(ATTRIBUTES)
    g_ema = copy.deepcopy(g).eval()
    opt_g = torch.optim.Adam(g.parameters(), lr=LR, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), lr=LR, betas=(0.0, 0.99))
    progress = Progress("gan", steps)
    z_dim = int(DEFAULT_CONFIG["z_dim"])
    for step in range(steps):
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, steps, LR, 50)
        idx = torch.randint(len(images), (BATCH,), generator=gen)
        real, y = images[idx], labels[idx]
        fake = g(torch.randn(BATCH, z_dim, generator=gen), y)
        loss_d = F.relu(1 - d(real, y)).mean() + F.relu(1 + d(fake.detach(), y)).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = -d(fake, y).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        with torch.no_grad():
            for pe, p in zip(g_ema.parameters(), g.parameters()):
                pe.lerp_(p, 1 - EMA)
        progress.log(step, loss_d=loss_d.item(), loss_g=loss_g.item())
    recalibrate_batchnorm(g_ema, labels, gen)
    GAN_DIR.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in g_ema.state_dict().items()},
              str(GAN_DIR / "generator.safetensors"))
    (GAN_DIR / "config.json").write_text(json.dumps(DEFAULT_CONFIG, indent=2) + "\n")
    metrics = evaluate() | {"steps": steps, "batch": BATCH, "seed": SEED, "train_images": N_TRAIN}
    write_report(GAN_DIR, progress, metrics)
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    train()
