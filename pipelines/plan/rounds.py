"""Quota rounds as manifests: round ``r`` is a table of the rows that need more samples.

A round's table is the canonical manifest's rows with ``num_images`` set to the extra samples and a
``first_index`` column (the row's samples so far), so its samples continue the row's index: ids and
seeds never collide with earlier rounds, and ``Plan`` cuts it into units like the manifest itself.
The table is staged beside the manifest and its units name it, so workers expand them the same way.
Its name carries a hash of its content: a changed quota or curation gives other units, never stale ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from pipelines.config import GeneratorSpec, ScreenSpec
from pipelines.plan.samples import Plan, UnitRange

_NO_SCREEN = ScreenSpec(enabled=False)  # round rows generated before: the screen let them through


def round_table(manifest: pa.Table, extra: Mapping[int, int], totals: np.ndarray) -> pa.Table:
    """Rows ``extra`` names (in manifest order), each asking for ``extra[row]`` samples from index
    ``totals[row]`` (the samples the row has had in all earlier rounds)."""
    rows = sorted(r for r, n in extra.items() if n > 0)
    t = manifest.take(pa.array(rows, pa.int64()))
    i = t.schema.get_field_index("num_images")
    t = t.set_column(i, t.schema.field(i), pa.array([extra[r] for r in rows], t.schema.field(i).type))
    return t.append_column("first_index", pa.array([int(totals[r]) for r in rows], pa.int64()))


def round_id(round_no: int, table: pa.Table) -> str:
    """``r<NN><hash>``: path- and id-safe, orders after earlier rounds, changes with the content."""
    content = json.dumps([table.column("prompt_id").to_pylist(), table.column("num_images").to_pylist(),
                          table.column("first_index").to_pylist()])
    return f"r{round_no:02d}{hashlib.sha256(content.encode()).hexdigest()[:10]}"


def round_units(table: pa.Table, round_no: int, gen: GeneratorSpec, unit_size: int) -> tuple[str, list[UnitRange]]:
    """(staged name of the table, its units): unit ids ``r<NN><hash>u<NNNNNN>``."""
    rid = round_id(round_no, table)
    name = f"rounds/{rid}.parquet"
    return name, Plan(table, gen, _NO_SCREEN, unit_size, unit_prefix=f"{rid}u", staged_as=name).units()
