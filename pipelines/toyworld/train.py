"""Entry point: `python -m pipelines.toyworld.train {diffusion,clip,gan,all}`.

`all` trains CLIP first: the diffusion model reuses the tokenizer that CLIP's build writes, and its
(frozen) text encoder is CLIP's text tower.
"""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", choices=("diffusion", "clip", "gan", "all"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # How long an idle OpenMP worker spins before it sleeps (libgomp, torch's runtime here; read when
    # torch loads it). UNet s/step on 2 cores, quiet / beside one busy process: libgomp's default
    # (300k spins) 0.47 / 1.66 (spinning workers stall each other on a shared CPU);
    # OMP_WAIT_POLICY=PASSIVE 0.55 / 0.88; 1,000 spins 0.45 / 0.98. Either variable set by the
    # caller wins.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    order = ("clip", "gan", "diffusion") if args.model == "all" else (args.model,)
    for name in order:
        if name == "clip":
            from pipelines.toyworld import train_clip as module
        elif name == "gan":
            from pipelines.toyworld import train_gan as module  # type: ignore[no-redef]
        else:
            from pipelines.toyworld import train_diffusion as module  # type: ignore[no-redef]
        module.train()


if __name__ == "__main__":
    main()
