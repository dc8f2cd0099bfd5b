"""Train the toy open_clip model contrastively on the world's images and captions.

Captions mention only some attributes, so one caption truly matches many images in a batch.
Plain InfoNCE would punish those matches as negatives; instead every (image, caption) pair the
world knows to be consistent is a positive (multi-positive contrastive loss). This uses the
world's ground truth, which is exactly what a procedural world is for.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pipelines.toyworld.captions import caption, compose
from pipelines.toyworld.clip_eval import image_features, pair_margin, zero_shot
from pipelines.toyworld.data import heldout_images, render_examples, training_examples
from pipelines.toyworld.models import (
    CLIP_CONFIG,
    CLIP_DIR,
    CLIP_NAME,
    CLIP_TOKENIZER,
    CLIP_WEIGHTS,
)
from pipelines.toyworld.tokenizer import CONTEXT_LENGTH, save_tokenizer
from pipelines.toyworld.training import Progress, cosine_lr, seed_everything, write_report

SEED = 0
STEPS = 2000
BATCH = 128
LR = 1e-3
N_TRAIN = 20000


def model_config(vocab_size: int) -> dict:
    """open_clip config of the toy model: 32px ViT with 4px patches, 3-layer text tower."""
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 128, "layers": 4,
                       "head_width": 32, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": vocab_size, "width": 128,
                     "heads": 4, "layers": 3, "mlp_ratio": 2.0},
    }


def consistent(spec: dict[str, str], flat: dict[str, str]) -> bool:
    """Whether an image with attributes `flat` satisfies every attribute a caption states."""
    return all(flat.get(k) == v for k, v in spec.items())


def build_assets() -> None:
    """Write the tokenizer directory and the model config (the files the loaders read)."""
    CLIP_DIR.mkdir(parents=True, exist_ok=True)
    vocab_size = save_tokenizer(CLIP_TOKENIZER)
    CLIP_CONFIG.write_text(json.dumps(model_config(vocab_size), indent=2) + "\n")


def evaluate(model, preprocess, tokenizer, n: int = 1000) -> dict[str, float]:
    """Zero-shot colour/shape top-1 and matched-vs-mismatched caption wins on held-out images."""
    images, attrs = heldout_images(n)
    feats = image_features(model, preprocess, images)
    out = {}
    for attribute in ("colour", "shape"):
        pred = zero_shot(model, tokenizer, feats, attribute)
        truth = [a.flat()[attribute] for a in attrs]
        out[f"zero_shot_{attribute}_top1"] = float(np.mean([p == t for p, t in zip(pred, truth)]))
    rng = np.random.default_rng(7)
    specs = [{k: v for k, v in a.flat().items() if k != "count"} | {"count": "1"} for a in attrs]
    matched = [compose(s, rng) for s in specs]
    order = [(i + 1 + int(rng.integers(n - 1))) % n for i in range(n)]
    keep = [i for i in range(n) if not consistent(specs[order[i]], attrs[i].flat())]
    margin = pair_margin(model, tokenizer, feats[keep], [matched[i] for i in keep],
                         [matched[order[i]] for i in keep])
    out["matched_caption_wins"] = float(np.mean(margin > 0))
    out["eval_images"] = n
    return out


def train(steps: int = STEPS) -> dict[str, float]:
    """Train from scratch, save weights + report, return the final metrics."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    seed_everything(SEED)
    build_assets()
    open_clip.add_model_config(str(CLIP_CONFIG))
    model, _, preprocess = open_clip.create_model_and_transforms(CLIP_NAME)
    tokenizer = HFTokenizer(str(CLIP_TOKENIZER), context_length=CONTEXT_LENGTH)
    examples = training_examples(N_TRAIN, SEED)
    images = torch.from_numpy(render_examples(examples)).permute(0, 3, 1, 2).float() / 255
    flats = [e.attrs.flat() for e in examples]
    mean = torch.tensor(preprocess.transforms[-1].mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.transforms[-1].std).view(1, 3, 1, 1)
    images = (images - mean) / std
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    rng = np.random.default_rng(SEED)
    progress = Progress("clip", steps)
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, LR, 100)
        idx = rng.choice(N_TRAIN, BATCH, replace=False)
        captions = [caption(examples[i].attrs, rng) for i in idx]
        pos = torch.tensor([[consistent(spec, flats[i]) for _, spec in captions] for i in idx],
                           dtype=torch.float32)
        img_f, txt_f, scale = model(images[idx], tokenizer([c for c, _ in captions]))
        logits = scale * img_f @ txt_f.T
        loss = 0.5 * (F.cross_entropy(logits, pos / pos.sum(1, keepdim=True))
                      + F.cross_entropy(logits.T, pos.T / pos.T.sum(1, keepdim=True)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        progress.log(step, loss=loss.item())
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(CLIP_WEIGHTS))
    metrics = evaluate(model, preprocess, tokenizer)
    metrics |= {"steps": steps, "batch": BATCH, "seed": SEED, "train_images": N_TRAIN,
                "final_loss": float(np.mean(progress.curves["loss"][-50:]))}
    write_report(CLIP_DIR, progress, metrics)
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    train()
