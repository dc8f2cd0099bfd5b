"""The toy class-conditional GAN generator: attributes of one shape -> 32x32 image.

Conditioned on every shapes-domain attribute (shape, colour, size, position, background);
attributes a caller leaves out are drawn from the world's prior with the sample's own seed,
so `generate` is deterministic per sample and never depends on batch composition (the noise
comes from a per-sample torch.Generator and BatchNorm runs on frozen statistics in eval mode).
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from pipelines.toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    sample_colour,
)

ATTRIBUTES: dict[str, list[str]] = {
    "shape": list(SHAPES), "colour": list(COLOURS), "size": list(SIZES),
    "position": list(POSITIONS), "background": list(BACKGROUNDS),
}
# "module" names the installed module that implements this architecture (load_generator, generate):
# the core GAN backend imports it from here, as diffusers imports a component's `_class_name`.
DEFAULT_CONFIG: dict[str, Any] = {"module": "pipelines.toyworld.gan", "z_dim": 64, "emb_dim": 16, "base": 64,
                                  "image_size": 32, "attributes": ATTRIBUTES}


class LabelEmbedding(nn.Module):
    """One embedding table per attribute, concatenated into a single condition vector."""

    def __init__(self, attributes: dict[str, list[str]], dim: int) -> None:
        super().__init__()
        self.names = list(attributes)
        self.tables = nn.ModuleDict({a: nn.Embedding(len(v), dim) for a, v in attributes.items()})
        self.out_dim = dim * len(attributes)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tables[a](labels[:, i]) for i, a in enumerate(self.names)], dim=1)


class FiLMBlock(nn.Module):
    """Upsample, conv, condition-modulated BatchNorm, ReLU."""

    def __init__(self, cin: int, cout: int, cond: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm2d(cout, affine=False)
        self.film = nn.Linear(cond, 2 * cout)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")))
        gamma, beta = self.film(c).chunk(2, dim=1)
        return torch.relu(x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None])


class Generator(nn.Module):
    """(noise, attribute labels) -> image in [-1, 1]; 4x4 seed map upsampled three times."""

    def __init__(self, config: dict[str, Any] = DEFAULT_CONFIG) -> None:
        super().__init__()
        self.config = config
        base, z_dim = int(config["base"]), int(config["z_dim"])
        self.embed = LabelEmbedding(config["attributes"], int(config["emb_dim"]))
        cond = self.embed.out_dim
        self.fc = nn.Linear(z_dim + cond, base * 2 * 4 * 4)
        widths = [base * 2, base, base // 2, base // 4]
        self.blocks = nn.ModuleList(FiLMBlock(a, b, cond) for a, b in pairwise(widths))
        self.out = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        c = self.embed(labels)
        x = torch.relu(self.fc(torch.cat([z, c], dim=1))).view(len(z), -1, 4, 4)
        for block in self.blocks:
            x = block(x, c)
        return torch.tanh(self.out(x))


def load_generator(directory: str | Path) -> tuple[Generator, dict[str, Any]]:
    """Generator + config from `config.json` and `generator.safetensors`, in eval mode."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    model = Generator(config)
    model.load_state_dict(load_file(str(directory / "generator.safetensors")))
    return model.eval(), config


def complete_labels(labels: dict[str, str], seed: int,
                    attributes: dict[str, list[str]] = ATTRIBUTES) -> dict[str, str]:
    """Fill unspecified attributes from the world's prior, deterministically in `seed`."""
    unknown = set(labels) - set(attributes)
    if unknown:
        raise ValueError(f"unknown GAN attributes {sorted(unknown)}")
    rng = np.random.default_rng([seed, 7])
    out = dict(labels)
    for name, values in attributes.items():
        if name == "colour":
            continue
        out.setdefault(name, values[int(rng.integers(len(values)))])
    out.setdefault("colour", sample_colour(rng, out["shape"]))
    for name, value in out.items():
        if value not in attributes[name]:
            raise ValueError(f"{name}={value!r} not in {attributes[name]}")
    return out


def label_tensor(labels: list[dict[str, str]], attributes: dict[str, list[str]]) -> torch.Tensor:
    """Index tensor (N, n_attributes) for complete label dicts."""
    return torch.tensor([[attributes[a].index(lab[a]) for a in attributes] for lab in labels])


@torch.no_grad()
def generate(model: Generator, labels: list[dict[str, str]], seeds: list[int]) -> np.ndarray:
    """uint8 (N, H, W, 3) images; one label dict and one seed per sample."""
    if len(labels) != len(seeds):
        raise ValueError("one label dict per seed")
    attributes = model.config["attributes"]
    full = [complete_labels(lab, s, attributes) for lab, s in zip(labels, seeds)]
    z_dim = int(model.config["z_dim"])
    z = torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s)))
                     for s in seeds])
    images = model(z, label_tensor(full, attributes))
    return ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
