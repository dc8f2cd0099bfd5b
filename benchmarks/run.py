"""``make bench``: every benchmark, each a ratio against a baseline measured in the same run."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    for name in sorted(p.stem for p in HERE.glob("bench_*.py")):
        print(f"== {name}", flush=True)
        sys.argv = [str(HERE / f"{name}.py")]
        runpy.run_path(str(HERE / f"{name}.py"), run_name="__main__")
    print(json.dumps({p.name: json.loads(p.read_text()) for p in (HERE / "results").glob("*.json")}, indent=1)[:4000])
