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
    # On a shared CPU, spinning OpenMP workers stall each other (10x slower steps were seen);
    # must be set before torch loads its OpenMP runtime.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
