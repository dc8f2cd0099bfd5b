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
    # Non-finite and non-integral numbers, and malformed encodings of the attribute map.
    write("nan_guidance.parquet", pa.table({**GOOD, "guidance_scale": [4.0, float("nan"), 3.0]}))
    write("inf_guidance.parquet", pa.table({**GOOD, "guidance_scale": [4.0, 3.0, float("-inf")]}))
    write("nan_seed.parquet", pa.table({**GOOD, "seed": [1.0, float("nan"), 3.0]}))
    write("fractional_steps.parquet", pa.table({**GOOD, "steps": [10.0, 2.5, None]}))
    write("attributes_bad_pair.parquet", pa.table({**GOOD, "attributes": pa.array(
        [[["colour", "red"]], [["colour", "red", "blue"]], []], pa.list_(pa.list_(pa.string())))}))
    write("attributes_duplicate_key.parquet", pa.table({**GOOD, "attributes": pa.array(
        [[], [], [{"key": "colour", "value": "red"}, {"key": "colour", "value": "blue"}]],
        pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())])))}))
    bad_value = pa.Array.from_buffers(pa.string(), 3, pa.array([b"red", b"bl\xffue", b"red"], pa.binary()).buffers())
    write("invalid_utf8_attribute.parquet", pa.table({**GOOD, "attributes": pa.MapArray.from_arrays(
        pa.array([0, 1, 2, 3], pa.int32()), pa.array(["colour"] * 3), bad_value)}))
    write("attributes_as_list_of_ints.parquet", pa.table({**GOOD, "attributes": [[1, 2], [3, 4], [5, 6]]}))
    edits()


def edits() -> None:
    """Edit columns (issue 14): outpaint padding and named regions, alone and in combination."""
    init = {"init_image": ["/nonexistent/init.png"] * 3}  # row rules fail before any file is looked for
    write("outpaint_not_padding.parquet", pa.table({**GOOD, **init, "outpaint": ["8", "1,2", None]}))
    write("outpaint_negative.parquet", pa.table({**GOOD, **init, "outpaint": [8, -4, None]}))
    write("outpaint_as_list.parquet", pa.table({**GOOD, **init, "outpaint": [[8], [8], [8]]}))
    write("outpaint_fills_the_output.parquet", pa.table({**GOOD, **init, "outpaint": [8, 8, 8],
                                                         "height": [64, 16, None]}))
    write("outpaint_without_init.parquet", pa.table({**GOOD, "outpaint": pa.array([None, 8, None], pa.int64())}))
    write("outpaint_with_region.parquet", pa.table({**GOOD, **init, "outpaint": [None, None, "4"],
                                                    "mask_region": [None, None, "left_lung"]}))
    write("mask_region_with_mask_image.parquet", pa.table({**GOOD, **init, "mask_image": ["/m.png", None, None],
                                                           "mask_region": ["left_lung", None, None]}))
    write("mask_region_bad_name.parquet", pa.table({**GOOD, **init, "mask_region": [None, "../lungs", None]}))


if __name__ == "__main__":
    main()
