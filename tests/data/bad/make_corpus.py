"""Regenerate the bad-input corpus (committed): ``python tests/data/bad/make_corpus.py``."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
GOOD = {"prompt_id": ["a", "b", "c"], "prompt": ["a red circle", "a blue square", "a green triangle"],
        "seed": [1, 2, 3]}


def write(name: str, table: pa.Table) -> None:
    pq.write_table(table, HERE / name)


def main() -> None:
    write("missing_seed.parquet", pa.table({k: v for k, v in GOOD.items() if k != "seed"}))
    write("renamed_prompt.parquet", pa.table({"prompt_id": GOOD["prompt_id"], "text": GOOD["prompt"],
                                              "seed": GOOD["seed"]}))
    write("seed_as_string.parquet", pa.table({**GOOD, "seed": ["1", "2", "3"]}))
    write("null_prompt.parquet", pa.table({**GOOD, "prompt": ["a red circle", None, "x"]}))
    write("blank_prompt.parquet", pa.table({**GOOD, "prompt": ["a red circle", "x", "   "]}))
    (HERE / "empty_file.parquet").write_bytes(b"")
    write("zero_rows.parquet", pa.table({"prompt_id": pa.array([], pa.string()),
                                         "prompt": pa.array([], pa.string()), "seed": pa.array([], pa.int64())}))
    write("duplicate_ids.parquet", pa.table({**GOOD, "prompt_id": ["a", "b", "a"]}))
    write("negative_seed.parquet", pa.table({**GOOD, "seed": [1, -7, 3]}))
    write("huge_seed.parquet", pa.table({**GOOD, "seed": pa.array([1, 2, 2**63 + 5], pa.uint64())}))
    write("long_prompt.parquet", pa.table({**GOOD, "prompt": ["a red circle", "x" * 100_000, "y"]}))
    raw = pa.array([b"ok", b"bad \xff\xfe text", b"fine"], pa.binary())
    write("invalid_utf8.parquet", pa.table({**GOOD, "prompt": pa.Array.from_buffers(pa.string(), 3, raw.buffers())}))
    (HERE / "csv_not_parquet.parquet").write_text("prompt_id,prompt,seed\na,a red circle,1\n")
    buf = io.BytesIO()
    pq.write_table(pa.table(GOOD), buf)
    (HERE / "truncated.parquet").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    write("traversal_id.parquet", pa.table({**GOOD, "prompt_id": ["a", "../../etc/passwd", "c"]}))
    write("control_char_id.parquet", pa.table({**GOOD, "prompt_id": ["a", "b", "c\x07d"]}))
    write("missing_init_image.parquet", pa.table({**GOOD, "init_image": [None, "/nonexistent/dir/init.png", None]}))
    write("attributes_not_strings.parquet", pa.table({**GOOD, "attributes": pa.array(
        [[("age", 3)], [("age", 4)], [("age", 5)]], pa.map_(pa.string(), pa.int64()))}))
    write("zero_num_images.parquet", pa.table({**GOOD, "num_images": [1, 0, 2]}))
    write("odd_height.parquet", pa.table({**GOOD, "height": [64, 65, 64]}))


if __name__ == "__main__":
    main()
