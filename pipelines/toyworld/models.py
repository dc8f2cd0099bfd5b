"""Where the shipped toy models live and how they load: exactly the calls a real model takes.

Kept separate from the training scripts so the tests and the evaluation exercise the same
code path as the pipeline (diffusers `from_pretrained`, open_clip by registered name and
`pretrained=<file>`), and never a private shortcut.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).parent / "assets"
DIFFUSION_DIR = ASSETS / "diffusion"
CLIP_DIR = ASSETS / "clip"
CLIP_NAME = "toy-clip"
CLIP_CONFIG = CLIP_DIR / f"{CLIP_NAME}.json"
CLIP_WEIGHTS = CLIP_DIR / f"{CLIP_NAME}.safetensors"
CLIP_TOKENIZER = CLIP_DIR / "tokenizer"
GAN_DIR = ASSETS / "gan"
# Settings the toy diffusion model was tuned and measured with (REPORT.md).
DIFFUSION_DEFAULTS = {"num_inference_steps": 15, "guidance_scale": 4.0, "height": 32, "width": 32}


def clip_context_length() -> int:
    """Context length declared in the toy CLIP's model config."""
    import json

    return int(json.loads(CLIP_CONFIG.read_text())["text_cfg"]["context_length"])


def load_clip(weights: Path | None = CLIP_WEIGHTS) -> tuple[Any, Any, Any]:
    """(model, preprocess, tokenizer) of the toy open_clip model, offline; eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    open_clip.add_model_config(str(CLIP_CONFIG))
    model, _, preprocess = open_clip.create_model_and_transforms(
        CLIP_NAME, pretrained=str(weights) if weights else None)
    tokenizer = HFTokenizer(str(CLIP_TOKENIZER), context_length=clip_context_length())
    return model.eval(), preprocess, tokenizer


def load_diffusion(directory: Path = DIFFUSION_DIR) -> Any:
    """The toy text-to-image pipeline through diffusers' generic loader, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(directory), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe
