"""Build tiny random-weight models in the real formats (diffusers pipeline dir, open_clip config +
safetensors + HF tokenizer), from fixed seeds, offline.

They exercise every loading path a real model uses; the trained toy-world models replace them as
defaults. ``python -m tests.tinymodels OUT_DIR``.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import torch

VOCAB_MERGES = 2000


def build_tokenizer(out: Path) -> None:
    """A CLIP BPE tokenizer cut from open_clip's bundled vocabulary (first ``VOCAB_MERGES`` merges)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : VOCAB_MERGES + 1]
    merges = [tuple(m.split()) for m in lines]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    end = "<|endoftext|>"
    tok = CLIPTokenizer(
        vocab={v: i for i, v in enumerate(vocab)}, merges=merges, unk_token=end,
        bos_token="<|startoftext|>", eos_token=end, pad_token=end, model_max_length=16,
    )
    tok.save_pretrained(out)


def build_diffusion(out: Path, seed: int = 0) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    build_tokenizer(out / "_tok")
    tokenizer = CLIPTokenizer.from_pretrained(out / "_tok")
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=16, bos_token_id=len(tokenizer) - 2,
        eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1,
    ))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=16,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8, sample_size=32,
    )
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    import shutil

    shutil.rmtree(out / "_tok")


def build_clip(out: Path, seed: int = 0) -> None:
    import open_clip
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out / "tokenizer")
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 2514, "width": 64, "heads": 2, "layers": 2},
    }
    (out / "tiny-clip.json").write_text(json.dumps(cfg, indent=1))
    open_clip.add_model_config(out / "tiny-clip.json")
    torch.manual_seed(seed)
    model = open_clip.create_model("tiny-clip", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "tiny-clip.safetensors")


def build_all(out: Path) -> Path:
    """Idempotent: builds once into ``out`` (``diffusion/`` and ``clip/``)."""
    if not (out / "diffusion" / "model_index.json").exists():
        build_diffusion(out / "diffusion")
    if not (out / "clip" / "tiny-clip.safetensors").exists():
        build_clip(out / "clip")
    return out


if __name__ == "__main__":
    print(build_all(Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/tiny")))
