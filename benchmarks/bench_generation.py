"""Generation throughput at real model sizes: synthgen's generation stage vs a bare diffusers loop.

Architectures are built from their published configs (``benchmarks/archs.py``) with random
weights (throughput does not depend on the weights, and nothing is downloaded): SD 1.5 (UNet ~860M, CLIP ViT-L/14 text encoder,
SD VAE), an SD-Turbo-class model (SD 2.x UNet, OpenCLIP ViT-H text encoder), SDXL base. Each is
saved once as a diffusers folder; both sides load it with ``from_pretrained`` in the same dtype.

- synthgen: ``DiffusionBackend`` (the class the generator actor holds), called in process on
  fixed batches, with the spec's fast path (dtype, SDPA, channels_last, optional torch.compile
  with padded batches): what the actor does per batch, without Ray.
- bare: ``DiffusionPipeline`` called in a loop with per-sample generators, ``output_type="np"``.
- GPU busy fraction (nvidia-smi sampling) during each timed run; batch sweep; compile on/off;
  and the out-of-the-box baseline (bare, fp16, SDPA, batch 1) the compiled path is compared with.

Runs WITHOUT Ray or pyarrow (a GPU host may have only torch + transformers; carry the diffusers,
open_clip and pydantic wheels): nothing here imports ``pipelines.execution``.

    python -m benchmarks.bench_generation --smoke      # SD 1.5 architecture, 64x64, 2 steps, CPU
    make bench-gpu                                     # the full sweep -> results/generation-<gpu>.json
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.archs import ARCHS, SD_SCHEDULER, SD_VAE, Arch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PROMPTS = ["a photo of a red mug on a wooden table", "a blue bicycle on a concrete floor",
           "a green chair on a lawn", "a yellow backpack on a wooden table"]


def clip_tokenizer(directory: Path):
    """The full CLIP BPE tokenizer (49,408 tokens), derived offline from open_clip's bundled vocab."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(p) for p in pairs] + ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p in pairs) + "\n")
    return CLIPTokenizer(vocab_file=str(directory / "vocab.json"), merges_file=str(directory / "merges.txt"),
                         model_max_length=77)


def build(arch: Arch, out: Path, dtype: torch.dtype, device: str) -> Path:
    """Random-weight pipeline of ``arch`` saved as a diffusers folder (built on ``device`` for speed)."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    with torch.device(device):
        unet = diffusers.UNet2DConditionModel(**arch.unet)
        vae = diffusers.AutoencoderKL(**SD_VAE, scaling_factor=arch.vae_scale)
        texts = [CLIPTextModel(CLIPTextConfig(**arch.text[0]))]
        if len(arch.text) > 1:
            texts.append(CLIPTextModelWithProjection(CLIPTextConfig(**arch.text[1])))
    tok = clip_tokenizer(out.parent / "tokenizer-src")
    if arch.turbo:
        sched = diffusers.EulerDiscreteScheduler(**SD_SCHEDULER, timestep_spacing="trailing")
    else:
        sched = diffusers.DDIMScheduler(**SD_SCHEDULER, clip_sample=False, set_alpha_to_one=False)
    if len(texts) == 2:
        pipe = diffusers.StableDiffusionXLPipeline(vae=vae, text_encoder=texts[0], text_encoder_2=texts[1],
                                                   tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=sched)
    else:
        pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=texts[0], tokenizer=tok, unet=unet,
                                                 scheduler=sched, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.save_pretrained(out, safe_serialization=True)
    del pipe, unet, vae, texts
    gc.collect()
    return out


class GpuBusy:
    """Mean GPU utilisation (nvidia-smi, every 50 ms) while the context is open; None off GPU."""

    def __init__(self, device: str):
        from shutil import which

        self.on = device.startswith("cuda") and which("nvidia-smi") is not None
        self.samples: list[float] = []

    def __enter__(self) -> "GpuBusy":
        if self.on:
            idx = torch.cuda.current_device()
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          f"--id={idx}", "-lms", "50"], stdout=subprocess.PIPE, text=True)
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            try:
                self.samples.append(float(line.strip()) / 100)
            except ValueError:
                pass

    def __exit__(self, *exc: object) -> None:
        if self.on:
            self.proc.terminate()
            self.proc.wait()

    @property
    def fraction(self) -> float | None:
        return round(statistics.mean(self.samples), 3) if self.samples else None


def samples_for(batch: int, steps: int, guidance: float, size: int, offset: int = 0) -> list[Any]:
    from pipelines.plan.samples import Sample  # needs pyarrow; without it, the stand-in below

    return [Sample(f"b_{offset + i:05d}", "b", offset + i, PROMPTS[(offset + i) % len(PROMPTS)], None, offset + i,
                   steps, guidance, size, size) for i in range(batch)]


def _standin_samples(batch: int, steps: int, guidance: float, size: int, offset: int = 0) -> list[Any]:
    @dataclass(frozen=True)
    class S:  # the fields DiffusionBackend reads (pipelines.plan.samples.Sample without pyarrow)
        sample_id: str
        prompt: str
        seed: int
        steps: int
        guidance_scale: float
        height: int
        width: int
        negative_prompt: str | None = None
        init_image: str | None = None
        mask_image: str | None = None
        attributes: dict[str, str] = field(default_factory=dict)

        def compat_key(self) -> tuple[Any, ...]:
            return (self.steps, self.guidance_scale, self.height, self.width, True, False, False)

    return [S(f"b_{offset + i:05d}", PROMPTS[(offset + i) % len(PROMPTS)], offset + i, steps, guidance, size, size)
            for i in range(batch)]


def synthgen_runner(model: Path, device: str, dtype: str, batch: int, steps: int, guidance: float, size: int,
                    compile_: bool) -> Any:
    from pipelines.config import GeneratorSpec
    from pipelines.generate.backends.diffusion import DiffusionBackend

    spec = GeneratorSpec(model=str(model), device=device, dtype=dtype, batch_size=batch, steps=steps,
                         guidance_scale=guidance, height=size, width=size, compile=compile_)
    backend = DiffusionBackend(spec)
    try:
        make = samples_for
        make(1, steps, guidance, size)
    except ImportError:  # no pyarrow on this host
        make = _standin_samples
    calls = [0]

    def go() -> int:
        calls[0] += 1
        backend.generate(make(batch, steps, guidance, size, offset=calls[0] * batch))
        return batch
    return go


def bare_runner(model: Path, device: str, dtype: str, batch: int, steps: int, guidance: float, size: int,
                compile_: bool) -> Any:
    import diffusers

    diffusers.utils.logging.disable_progress_bar()
    pipe = diffusers.DiffusionPipeline.from_pretrained(str(model), dtype=getattr(torch, dtype), use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    if compile_:
        pipe.unet.compile(mode="reduce-overhead")
    calls = [0]

    @torch.inference_mode()
    def go() -> int:
        calls[0] += 1
        seeds = range(calls[0] * batch, (calls[0] + 1) * batch)
        pipe(prompt=[PROMPTS[s % len(PROMPTS)] for s in seeds], num_inference_steps=steps, guidance_scale=guidance,
             height=size, width=size, generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
             output_type="np")
        return batch
    return go


def measure(go: Any, device: str, iters: int, warmup: int) -> dict[str, Any]:
    for _ in range(warmup):
        go()
    torch.cuda.synchronize() if device.startswith("cuda") else None
    with GpuBusy(device) as busy:
        t0, c0, n = time.perf_counter(), time.process_time(), 0
        for _ in range(iters):
            n += go()
        torch.cuda.synchronize() if device.startswith("cuda") else None
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    # images per CPU-second of this process: on a shared CPU host the wall rate mostly measures the neighbours
    return {"images_per_s": round(n / dt, 4), "seconds": round(dt, 3), "images": n, "gpu_busy": busy.fraction,
            "images_per_cpu_s": round(n / cpu, 4) if cpu > 0 else None}


def cell(model: Path, device: str, dtype: str, batch: int, steps: int, guidance: float, size: int, compile_: bool,
         iters: int, sides: tuple[str, ...] = ("synthgen", "bare")) -> dict[str, Any]:
    """One configuration: each side loaded alone (one model in memory at a time), then measured."""
    out: dict[str, Any] = {"batch": batch, "steps": steps, "size": size, "dtype": dtype, "compile": compile_}
    for side in sides:
        runner = synthgen_runner if side == "synthgen" else bare_runner
        try:
            go = runner(model, device, dtype, batch, steps, guidance, size, compile_)
            out[side] = measure(go, device, iters, warmup=2 if compile_ else 1)
            del go  # frees the model before the other side loads
        except torch.OutOfMemoryError:
            out[side] = {"error": "out of memory"}
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    if all("images_per_s" in out.get(s, {}) for s in ("synthgen", "bare")):
        out["ratio"] = round(out["synthgen"]["images_per_s"] / out["bare"]["images_per_s"], 3)
        if device == "cpu" and out["bare"]["images_per_cpu_s"]:
            out["ratio_cpu_time"] = round(out["synthgen"]["images_per_cpu_s"] / out["bare"]["images_per_cpu_s"], 3)
    return out


def environment(device: str) -> dict[str, Any]:
    import diffusers
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
           "transformers": transformers.__version__, "device": device, "threads": torch.get_num_threads(),
           "ray_imported": "ray" in sys.modules}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def smoke(args: argparse.Namespace) -> dict[str, Any]:
    """SD 1.5 architecture at 64x64, 2 steps, batch 2, CPU: the path works (not a figure of merit)."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = build(ARCHS["sd15"], Path(tmp) / "sd15", torch.float32, "cpu")
        built = time.perf_counter() - t0
        res = cell(model, "cpu", "float32", 2, 2, 7.5, 64, False, iters=args.iters)
    return {"mode": "smoke", "arch": "sd15", "build_s": round(built, 1), "environment": environment("cpu"),
            "cells": [res]}


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    results: dict[str, Any] = {"mode": "sweep", "environment": environment(device), "archs": {}}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for name in args.archs:
            arch = ARCHS[name]
            model = build(arch, Path(tmp) / name, getattr(torch, args.dtype), device)
            rows = []
            steps = args.steps or arch.steps
            # out of the box: bare diffusers, SDPA, fp16, batch 1, no compile
            for st in steps:
                rows.append({"baseline": "out-of-the-box", **cell(model, device, args.dtype, 1, st, arch.guidance,
                                                                  arch.size, False, args.iters, ("bare",))})
                for compile_ in args.compile:
                    for b in args.batches:
                        rows.append(cell(model, device, args.dtype, b, st, arch.guidance, arch.size, compile_,
                                         args.iters))
                        print(json.dumps({name: rows[-1]}), flush=True)
            results["archs"][name] = {"size": arch.size, "guidance": arch.guidance, "cells": rows,
                                      "summary": summarise(rows)}
    return results


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Best compiled synthgen images/s over the out-of-the-box rate, per step count."""
    out = {}
    for st in sorted({r["steps"] for r in rows}):
        base = [r["bare"]["images_per_s"] for r in rows if r["steps"] == st and r.get("baseline")
                and "images_per_s" in r.get("bare", {})]
        fast = [r["synthgen"]["images_per_s"] for r in rows if r["steps"] == st and not r.get("baseline")
                and "images_per_s" in r.get("synthgen", {})]
        ratios = [r["ratio"] for r in rows if r["steps"] == st and "ratio" in r]
        if base and fast:
            out[f"steps={st}"] = {"best_synthgen_over_out_of_the_box": round(max(fast) / base[0], 3),
                                  "min_synthgen_over_bare": min(ratios) if ratios else None}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="SD 1.5 architecture, 64x64, 2 steps, batch 2, CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16, 32])
    p.add_argument("--steps", nargs="+", type=int, default=None, help="default: per architecture")
    p.add_argument("--compile", nargs="+", type=lambda v: v == "on", default=[False, True], help="on / off")
    p.add_argument("--iters", type=int, default=3, help="timed batches per measurement")
    p.add_argument("--workdir", default=None, help="where the random-weight models are saved (temporary)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.smoke and not args.device.startswith("cuda"):
        print("no GPU here: running the --smoke check instead of the sweep (make bench-gpu on a GPU host)")
        args.smoke = True
    if args.smoke:
        args.iters = 1
        res = smoke(args)
        out = Path(args.out or RESULTS / "generation-cpu-smoke.json")
    else:
        res = sweep(args)
        gpu = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
        out = Path(args.out or RESULTS / f"generation-{gpu}.json")
    assert "pipelines.execution" not in sys.modules and "ray" not in sys.modules, "the benchmark must not need Ray"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    if args.smoke:
        c = res["cells"][0]
        print(f"wrote {out}")
        print(f"ratio synthgen/bare (SD 1.5 arch, 64x64, 2 steps, batch 2, CPU): wall {c.get('ratio')}, "
              f"per CPU-second {c.get('ratio_cpu_time')}")
    else:
        print(f"wrote {out}")
        for name, a in res["archs"].items():
            print(name, json.dumps(a["summary"]))
    return 0


if __name__ == "__main__":
    if rc := main():  # run in-process by benchmarks/run.py too: exit only on failure
        sys.exit(rc)
