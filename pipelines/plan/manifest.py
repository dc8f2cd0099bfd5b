"""Read, validate and expand prompt manifests.

A manifest is Parquet (a file or a folder of files, any fsspec URL). Validation follows the
contract in ``schemas/manifest.v1.schema.json``: Arrow column types first (whole columns), then
each row (JSON Schema), then cross-row rules (unique ``prompt_id``). Errors name file, row, field.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.contracts import schemas as contracts

from pipelines.io import store as storage
from pipelines.config import ManifestSpec, TemplateSpec
from pipelines.errors import ManifestError

MAX_ERRORS = 20

# The canonical column order and Arrow types every validated manifest is converted to.
CANONICAL = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("seed", pa.int64()),
        ("num_images", pa.int64()),
        ("steps", pa.int64()),
        ("guidance_scale", pa.float64()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("attributes", pa.map_(pa.string(), pa.string())),
        ("init_image", pa.string()),
        ("mask_image", pa.string()),
        ("style_image", pa.string()),
    ]
)


def _type_ok(expected: str, t: pa.DataType) -> bool:
    if pa.types.is_null(t):
        return True  # an all-null optional column
    if expected == "string":
        return pa.types.is_string(t) or pa.types.is_large_string(t)
    if expected == "int64":
        return pa.types.is_integer(t)
    if expected == "double":
        return pa.types.is_integer(t) or pa.types.is_floating(t)
    if expected == "map<string,string>":
        if pa.types.is_map(t):
            return pa.types.is_string(t.key_type) and (pa.types.is_string(t.item_type) or pa.types.is_null(t.item_type))
        if pa.types.is_struct(t):
            return all(pa.types.is_string(f.type) or pa.types.is_null(f.type) for f in t)
        return False
    raise AssertionError(expected)


def _norm_row(row: dict[str, Any]) -> dict[str, Any]:
    attrs = row.get("attributes")
    if isinstance(attrs, list):  # Arrow map -> list of (key, value)
        row["attributes"] = dict(attrs)
    elif isinstance(attrs, dict):
        row["attributes"] = {k: v for k, v in attrs.items() if v is not None}
    return {k: v for k, v in row.items() if not (v is None and k not in ("prompt",))}


def validate_table(table: pa.Table, source: str, row_offset: int = 0) -> list[dict[str, Any]]:
    """Validate one file's table; return normalised rows or raise ``ManifestError``."""
    schema = contracts.load(contracts.MANIFEST)
    props, required = schema["properties"], schema["required"]
    types = schema["x-arrow-types"]
    errors: list[str] = []
    for name in table.column_names:
        if name not in props:
            errors.append(f"{source}: column '{name}': unknown column (allowed: {', '.join(props)})")
        elif not _type_ok(types[name], table.schema.field(name).type):
            errors.append(
                f"{source}: column '{name}': wrong type {table.schema.field(name).type}, expected {types[name]}"
            )
    for name in required:
        if name not in table.column_names:
            errors.append(f"{source}: column '{name}': missing required column")
    if errors:
        raise ManifestError("\n".join(errors))

    errors += _utf8_errors(table, source, row_offset)
    if errors:
        raise ManifestError("\n".join(errors[:MAX_ERRORS]))
    v = contracts.validator(contracts.MANIFEST)
    rows = [_norm_row(r) for r in table.to_pylist()]
    for i, row in enumerate(rows):
        for err in sorted(v.iter_errors(row), key=lambda e: list(e.path)):
            field = ".".join(str(p) for p in err.path) or (
                err.message.split("'")[1] if err.validator == "required" else "?"
            )
            msg = _message(err)
            errors.append(f"{source}: row {row_offset + i}: field '{field}': {msg}")
            if len(errors) >= MAX_ERRORS:
                break
        if len(errors) >= MAX_ERRORS:
            errors.append(f"{source}: (stopped after {MAX_ERRORS} errors)")
            break
    if errors:
        raise ManifestError("\n".join(errors))
    return rows


def _message(err: "jsonschema.ValidationError") -> str:
    """A short message: jsonschema's quotes the whole value, which may be 100k characters."""
    if err.validator == "required" or (err.validator == "type" and err.instance is None):
        return "is null or missing"
    if err.validator == "pattern" and err.path and err.path[-1] == "prompt":
        return "is empty"
    if err.validator == "maxLength":
        return f"is too long ({len(err.instance)} characters, at most {err.validator_value})"
    value = repr(err.instance)
    value = value if len(value) <= 60 else value[:57] + "..."
    return f"{value} is invalid: {err.validator} {err.validator_value!r}"[:300]


def _utf8_errors(table: pa.Table, source: str, row_offset: int) -> list[str]:
    """Parquet can carry invalid UTF-8 in string columns; find the rows before decoding them."""
    errors = []
    for name in table.column_names:
        col = table.column(name)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue
        try:
            col.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        for i, b in enumerate(col.cast(pa.binary(), safe=False).to_pylist()):
            try:
                b is None or b.decode("utf-8")
            except UnicodeDecodeError as e:
                errors.append(f"{source}: row {row_offset + i}: field '{name}': invalid UTF-8 ({e.reason} at byte {e.start})")
    return errors


def check_references(rows: list[tuple[str, int, dict[str, Any]]], storage_options: dict[str, Any] | None) -> None:
    """Input images (init/mask/style) must exist before any GPU time is spent on their rows."""
    errors = []
    for src, i, row in rows:
        for field in ("init_image", "mask_image", "style_image"):
            uri = row.get(field)
            if not uri:
                continue
            try:
                fs, path = storage.url_to_fs(uri, storage_options if "://" in uri else None)
                found = fs.exists(path)
            except (ValueError, ImportError) as e:
                errors.append(f"{src}: row {i}: field '{field}': cannot open {uri!r}: {e}")
                continue
            if not found:
                errors.append(f"{src}: row {i}: field '{field}': image not found: {uri}")
    if errors:
        raise ManifestError("\n".join(errors[:MAX_ERRORS]))


def check_backend_fields(table: pa.Table, source: str, backend: str) -> None:
    """Rows must carry what the job's backend reads: style transfer needs a content image
    (``init_image``) and a ``style_image``; other backends would silently ignore a style image."""
    errors = []
    for i, row in enumerate(table.select(["prompt_id", "init_image", "style_image"]).to_pylist()):
        where = f"{source}: row {i} (prompt_id '{row['prompt_id']}')"
        if backend == "style":
            errors += [f"{where}: field '{f}': required by generator.backend 'style'"
                       for f in ("init_image", "style_image") if not row[f]]
        elif row["style_image"]:
            errors.append(f"{where}: field 'style_image': only generator.backend 'style' uses it "
                          f"(this job's backend is '{backend}')")
    if errors:
        raise ManifestError("\n".join(errors[:MAX_ERRORS]))


def check_unique(rows: list[tuple[str, int, dict[str, Any]]]) -> None:
    seen: dict[str, tuple[str, int]] = {}
    errors = []
    for src, i, row in rows:
        pid = row["prompt_id"]
        if pid in seen:
            errors.append(
                f"{src}: row {i}: field 'prompt_id': duplicate '{pid}' (first at {seen[pid][0]} row {seen[pid][1]})"
            )
        else:
            seen[pid] = (src, i)
    if errors:
        raise ManifestError("\n".join(errors[:MAX_ERRORS]))


def to_canonical(rows: list[dict[str, Any]]) -> pa.Table:
    cols = {f.name: [r.get(f.name) for r in rows] for f in CANONICAL}
    cols["num_images"] = [n if n is not None else 1 for n in cols["num_images"]]
    cols["attributes"] = [sorted((a or {}).items()) for a in cols["attributes"]]
    return pa.Table.from_pydict(cols, schema=CANONICAL)


def read_manifest(url: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Read and validate a Parquet manifest (file or folder) into the canonical table."""
    fs, root = storage.url_to_fs(url, storage_options)
    if not fs.exists(root):
        raise ManifestError(f"{url}: manifest not found")
    files = sorted(f for f in fs.find(root) if f.endswith(".parquet")) if fs.isdir(root) else [root]
    if not files:
        raise ManifestError(f"{url}: no .parquet files in manifest folder")
    all_rows: list[tuple[str, int, dict[str, Any]]] = []
    for f in files:
        src = storage.display_url(url, fs, f, root)
        try:
            table = pq.read_table(f, filesystem=fs)
        except Exception as e:  # pyarrow raises several types for corrupt, empty or non-Parquet files
            raise ManifestError(f"{src}: not a readable Parquet file ({type(e).__name__}: {str(e)[:200]})") from None
        all_rows += [(src, i, r) for i, r in enumerate(validate_table(table, src))]
    if not all_rows:
        raise ManifestError(f"{url}: manifest has no rows")
    check_unique(all_rows)
    check_references(all_rows, storage_options)
    return to_canonical([r for _, _, r in all_rows])


def _slug(v: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", v).strip("-").lower() or "x"


def expand_template(t: TemplateSpec) -> pa.Table:
    """Expand a template grid (slots x values x seeds) into a canonical manifest table."""
    names = list(t.slots)
    rows = []
    for combo in itertools.product(*(t.slots[n] for n in names)):
        values = dict(zip(names, combo))
        for seed in t.seeds:
            rows.append(
                {
                    "prompt_id": "-".join([t.id_prefix, *(_slug(v) for v in combo), f"s{seed}"])[:128],
                    "prompt": t.template.format(**values),
                    "negative_prompt": t.negative_prompt,
                    "seed": seed,
                    "num_images": t.num_images,
                    "attributes": values,
                }
            )
    table = pa.Table.from_pylist(rows)
    rows = validate_table(table, "manifest.template")
    check_unique([("manifest.template", i, r) for i, r in enumerate(rows)])
    return to_canonical(rows)


def resolve(spec: ManifestSpec, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """The concrete, validated manifest a job runs on."""
    if spec.template is not None:
        return expand_template(spec.template)
    assert spec.path is not None
    return read_manifest(spec.path, spec.storage_options if spec.storage_options is not None else storage_options)


def content_hash(table: pa.Table) -> str:
    """sha256 of the canonical rows: the same manifest content gives the same hash whatever its file layout."""
    h = hashlib.sha256()
    for batch in table.combine_chunks().to_batches(max_chunksize=4096):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, CANONICAL) as w:
            w.write_batch(batch.cast(CANONICAL))
        h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()
