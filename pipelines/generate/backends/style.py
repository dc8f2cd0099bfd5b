"""Neural style transfer (Gatys et al., 2016) as a synthgen backend.

Each sample restyles its row's ``init_image`` (the content) after its ``style_image``: the pixels
are optimised so that deep features of a frozen convolutional network match the content image's,
and the per-channel means and standard deviations of its features (colour and texture statistics,
not layout: the statistics AdaIN transfers, which Li et al. 2017 show to be a style representation
equivalent in kind to Gatys' Gram matrices, and steadier with small networks) match the style's. Written here because no maintained library ships an offline-capable
Gatys loop (torchvision's and PyTorch's are tutorials); the feature networks are loaded with
their libraries' own loaders:

- ``model`` = a safetensors file with torchvision VGG-19 ``features`` weights (the classic choice:
  style from relu1_1..relu5_1, content from relu4_2);
- ``model`` = a diffusers ``AutoencoderKL`` folder, or a pipeline folder with a ``vae/`` subfolder:
  its encoder's convolutional stages (how the toy world runs offline, with the toy diffusion's VAE).

Deterministic: the start image is the content plus noise from the sample's own seed, so the
images of one row differ, and nothing depends on batch neighbours (Adam is elementwise and every
image's loss is its own).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipelines.config import GeneratorSpec
from pipelines.plan.samples import Sample
from pipelines.publish.provenance import weights_sha256
from pipelines.generate.backends import SampleInputError, SampleInputs
from pipelines.generate.backends.diffusion import load_image

VGG_STYLE, VGG_CONTENT = (1, 6, 11, 20, 29), (22,)  # relu1_1..relu5_1 / relu4_2 in vgg19().features
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LEARNING_RATE = 0.03
INIT_NOISE = 0.1
TV_WEIGHT = 0.3  # total variation: without it the optimiser fills what the network cannot see with checkerboard


class FeatureNet(torch.nn.Module):
    """A frozen conv stack returning (style features, content features) for images in [0, 1]."""

    def __init__(self, layers: torch.nn.Module, style: tuple[int, ...], content: tuple[int, ...],
                 mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.layers, self.style, self.content = layers.eval().requires_grad_(False), style, content
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x = (x - self.mean) / self.std
        style, content = [], []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.style:
                style.append(x)
            if i in self.content:
                content.append(x)
            if i >= max(self.style + self.content):
                break
        return style, content


def _vae_features(path: Path) -> FeatureNet:
    from diffusers import AutoencoderKL

    sub = "vae" if (path / "vae" / "config.json").is_file() else None
    enc = AutoencoderKL.from_pretrained(str(path), subfolder=sub, use_safetensors=True).encoder
    # conv_in, then each down block; the deepest block carries layout (content), all carry style
    stages = torch.nn.Sequential(enc.conv_in, *enc.down_blocks)
    last = len(stages) - 1
    return FeatureNet(stages, tuple(range(last + 1)), (last,), (0.5,) * 3, (0.5,) * 3)


def _vgg_features(path: Path) -> FeatureNet:
    from safetensors.torch import load_file
    from torchvision.models import vgg19

    features = vgg19(weights=None).features
    state = load_file(str(path))
    state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    features.load_state_dict(state)
    for m in features:
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False  # the outputs are kept for the losses
    return FeatureNet(features, VGG_STYLE, VGG_CONTENT, IMAGENET_MEAN, IMAGENET_STD)


def load_feature_net(model: str) -> FeatureNet:
    path = Path(model)
    if path.is_file() and path.suffix == ".safetensors":
        return _vgg_features(path)
    if path.is_dir():
        return _vae_features(path)
    raise ValueError(f"style backend: model {model!r} is neither a VGG-19 .safetensors file nor a "
                     "diffusers AutoencoderKL / pipeline folder")


def moments(x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and standard deviation per image (N, 2C)."""
    f = x.flatten(2)
    return torch.cat([f.mean(2), f.std(2)], 1)


def stylise(net: FeatureNet, content: torch.Tensor, style: torch.Tensor, seeds: list[int],
            steps: int, style_weight: float) -> torch.Tensor:
    """Optimise images (N,3,H,W in [0,1]) from the content towards the style; per-image losses."""
    with torch.no_grad():
        style_stats = [moments(f) for f in net(style)[0]]
        content_feats = net(content)[1]
    noise = torch.stack([torch.randn(content.shape[1:], generator=torch.Generator().manual_seed(s))
                         for s in seeds]).to(content.device)
    x = (content + INIT_NOISE * noise).clamp(0, 1).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=LEARNING_RATE)
    for _ in range(steps):
        style_feats, feats = net(x)
        c_loss = sum(((f - t) ** 2).flatten(1).mean(1) for f, t in zip(feats, content_feats))
        s_loss = sum(((moments(f) - g) ** 2).flatten(1).sum(1) for f, g in zip(style_feats, style_stats))
        tv = ((x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
              + (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1))
        loss = (c_loss + style_weight * s_loss + TV_WEIGHT * tv).sum()  # per-image sums: independent
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    return x.detach()


class StyleBackend:
    """``init_image`` restyled after ``style_image``; ``steps`` optimisation steps per batch."""

    def __init__(self, spec: GeneratorSpec):
        self.spec = spec
        self.net = load_feature_net(spec.model).to(spec.device)
        self.info = {
            "backend": "style",
            "model": spec.model,
            "weights_sha256": weights_sha256(spec.model),
            "pipeline_class": "gatys-style-transfer",
            "scheduler": "adam",
            "dtype": "float32",
            "device_type": torch.device(spec.device).type,
        }

    def _load(self, urls: list[str], width: int, height: int) -> torch.Tensor:
        """The batch's images; a row's samples share their inputs, so each URL is read once."""
        arrays = {u: np.asarray(load_image(u, width, height)) for u in dict.fromkeys(urls)}
        return self._tensor([arrays[u] for u in urls])

    def _tensor(self, images: list[np.ndarray]) -> torch.Tensor:
        x = np.stack(images).astype(np.float32) / 255
        return torch.from_numpy(x).permute(0, 3, 1, 2).to(self.spec.device)

    def generate(self, samples: list[Sample], inputs: list[SampleInputs | None] | None = None) -> list[np.ndarray]:
        """``inputs``: the samples' decoded images from the fetch stage (read here if absent)."""
        missing = [s.sample_id for s in samples if not (s.init_image and s.style_image)]
        if missing:
            raise SampleInputError(f"style backend needs init_image and style_image; samples {missing[:3]} lack one",
                                   missing)
        # batches share a compat key, so one size; a row's samples share their init/style images
        w, h = samples[0].width, samples[0].height
        if inputs is None:
            content = self._load([s.init_image for s in samples], w, h)  # type: ignore[misc]
            style = self._load([s.style_image for s in samples], w, h)  # type: ignore[misc]
        else:
            content = self._tensor([x.init for x in inputs])  # type: ignore[union-attr,misc]
            style = self._tensor([x.style for x in inputs])  # type: ignore[union-attr,misc]
        out = stylise(self.net, content, style, [s.seed for s in samples],
                      samples[0].steps, self.spec.style_weight)
        images = (out.permute(0, 2, 3, 1).cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
        return list(images)
