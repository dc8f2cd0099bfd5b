"""Read, validate and expand prompt manifests.

A manifest is Parquet (a file or a folder of files, any fsspec URL). Validation follows the
contract in ``schemas/manifest.v1.schema.json``: Arrow column types first (whole columns; every
encoding pandas, polars or pyarrow give the same content is accepted), then each row (its logical
values: integral floats are integers, numbers must be finite; then JSON Schema), then cross-row rules
(unique ``prompt_id``). Errors name file, row, field. The result is one canonical table, so equal
content gives equal content hashes whatever wrote it.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.contracts import schemas as contracts
from pipelines.contracts import edits
from pipelines.contracts.manifest import MANIFEST_SCHEMA

from pipelines.io import store as storage
from pipelines.config import ManifestSpec, TemplateSpec
from pipelines.errors import ManifestError

MAX_ERRORS = 20

# The canonical column order and Arrow types every validated manifest is converted to.
CANONICAL = MANIFEST_SCHEMA


# How each contract type may arrive: pandas, polars and pyarrow write the same logical content in
# different Arrow encodings; all of these are read and converted to ``CANONICAL``.
ENCODINGS = {
    "string": "also large_string, string_view or dictionary-encoded",
    "int64": "any integer type, or floats with integral values",
    "double": "any integer or float type",
    "map<string,string>": "or a struct of strings, or a list of key/value pairs: "
                          "list<struct<key,value>> or 2-element lists",
    "padding": "pixels per side: an integer column, or strings 'N' or 'left,top,right,bottom'",
}


def _stringy(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _listy(t: pa.DataType) -> bool:
    return any(f(t) for f in (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list,
                              pa.types.is_list_view, pa.types.is_large_list_view))


def _type_ok(expected: str, t: pa.DataType) -> bool:
    """Whether a column's Arrow type can carry the contract type; values are checked per row."""
    if pa.types.is_null(t):
        return True  # an all-null optional column
    if expected == "string":
        return _stringy(t)
    if expected in ("int64", "double"):
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    if expected == "padding":
        return _stringy(t) or pa.types.is_integer(t) or pa.types.is_floating(t)
    if expected == "map<string,string>":
        if pa.types.is_map(t):
            return _stringy(t.key_type)
        if pa.types.is_struct(t):
            return True
        if _listy(t):  # list of pairs: [[key, value], ...] or [{key, value}, ...]
            v = t.value_type
            if pa.types.is_struct(v):
                return sorted(f.name for f in v) == ["key", "value"] and _stringy(v.field("key").type)
            return pa.types.is_null(v) or (_listy(v) and (_stringy(v.value_type) or pa.types.is_null(v.value_type)))
        return False
    raise AssertionError(expected)


def _plain(table: pa.Table, props: dict[str, Any]) -> pa.Table:
    """Undo storage-only encodings: dictionary (pandas categorical, polars Categorical) and string
    views become plain columns; a pandas index stored as a column is not manifest content."""
    index = (table.schema.pandas_metadata or {}).get("index_columns", [])
    table = table.drop_columns([c for c in index if isinstance(c, str) and c not in props and c in table.column_names])
    for i, f in enumerate(table.schema):
        t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        t = pa.large_string() if pa.types.is_string_view(t) else t
        if t != f.type:
            table = table.set_column(i, f.name, table.column(i).cast(t))
    return table


class _Bad(ValueError):
    """A value of the right column type but wrong content; the message names the value."""


def _finite(v: float | Decimal) -> float | Decimal:
    if not (v.is_finite() if isinstance(v, Decimal) else math.isfinite(v)):
        raise _Bad(f"{v} is not a finite number")
    return v


def _int(v: Any) -> Any:
    if isinstance(v, (float, Decimal)):
        if _finite(v) != int(v):
            raise _Bad(f"{v} is invalid: not an integer")
        return int(v)
    return v


def _number(v: Any) -> Any:
    return float(_finite(v)) if isinstance(v, (float, Decimal)) else v


def _attributes(v: Any) -> dict[str, Any] | None:
    """Any encoding of the attribute map to a dict; a null value means the key is absent (a struct
    column has every row's keys)."""
    if v is None:
        return None
    pairs = list(v.items()) if isinstance(v, dict) else v
    out: dict[str, Any] = {}
    for i, p in enumerate(pairs):
        if isinstance(p, dict) and not isinstance(v, dict):
            p = (p.get("key"), p.get("value"))
        if not isinstance(p, (tuple, list)) or len(p) != 2:
            raise _Bad(f"element {i} is not a key/value pair: {str(p)[:60]}")
        key, value = p
        if not isinstance(key, str):
            raise _Bad(f"key {key!r} is not a string")
        if key in out:
            raise _Bad(f"duplicate key {key!r}")
        if value is not None:
            out[key] = value
    return out


def _padding(v: Any) -> str:
    """Any encoding of the outpaint padding -> its canonical text ("8" and 8 are the same content)."""
    try:
        return edits.padding_text(_int(v) if isinstance(v, (float, Decimal)) else v)
    except ValueError as e:
        raise _Bad(str(e).removeprefix("outpaint padding ")) from None


_CONVERT = {"int64": _int, "double": _number, "map<string,string>": _attributes, "padding": _padding}


def _norm_row(row: dict[str, Any], types: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The row's logical values (canonical Python types) and the fields whose content is wrong."""
    bad: dict[str, str] = {}
    for k, v in row.items():
        conv = _CONVERT.get(types[k])
        if conv is not None and v is not None:
            try:
                row[k] = conv(v)
            except _Bad as e:
                bad[k] = str(e)
    return {k: v for k, v in row.items() if not (v is None and k not in ("prompt",))}, bad


def validate_table(table: pa.Table, source: str, row_offset: int = 0) -> list[dict[str, Any]]:
    """Validate one file's table; return normalised rows or raise ``ManifestError``."""
    schema = contracts.load(contracts.MANIFEST)
    props, required = schema["properties"], schema["required"]
    types = schema["x-arrow-types"]
    table = _plain(table, props)
    errors: list[str] = []
    for name in table.column_names:
        if name not in props:
            errors.append(f"{source}: column '{name}': unknown column (allowed: {', '.join(props)})")
        elif table.num_rows and table.column(name).null_count == table.num_rows:
            table = table.set_column(table.column_names.index(name), name, pa.nulls(table.num_rows))
        elif not _type_ok(types[name], table.schema.field(name).type):
            errors.append(f"{source}: column '{name}': wrong type {table.schema.field(name).type}, "
                          f"expected {types[name]} ({ENCODINGS[types[name]]})")
    for name in required:
        if name not in table.column_names:
            errors.append(f"{source}: column '{name}': missing required column")
    if errors:
        raise ManifestError("\n".join(errors))

    errors += _utf8_errors(table, source, row_offset)
    if errors:
        raise ManifestError("\n".join(errors[:MAX_ERRORS]))
    v = contracts.validator(contracts.MANIFEST)
    rows = []
    for i, raw in enumerate(table.to_pylist()):
        row, bad = _norm_row(raw, types)
        rows.append(row)
        found = list(bad.items())
        for err in sorted(v.iter_errors(row), key=lambda e: list(e.path)):
            field = ".".join(str(p) for p in err.path) or (
                err.message.split("'")[1] if err.validator == "required" else "?"
            )
            if field.split(".")[0] not in bad:
                found.append((field, _message(err)))
        if not found:
            found = edits.row_errors(row)
        errors += [f"{source}: row {row_offset + i}: field '{f}': {m}" for f, m in found]
        if len(errors) >= MAX_ERRORS:
            errors = errors[:MAX_ERRORS] + [f"{source}: (stopped after {MAX_ERRORS} errors)"]
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
    """Parquet can carry invalid UTF-8 in string columns (also inside maps, structs and lists);
    find the rows before decoding them."""
    errors = []
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        try:
            col.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        if _stringy(col.type):
            for i, b in enumerate(col.cast(pa.large_binary()).to_pylist()):
                try:
                    b is None or b.decode("utf-8")
                except UnicodeDecodeError as e:
                    errors.append(f"{source}: row {row_offset + i}: field '{name}': invalid UTF-8 "
                                  f"({e.reason} at byte {e.start})")
            continue
        for i in range(len(col)):  # nested: validate() checks a slice's whole child arrays
            try:
                col.slice(i, 1).to_pylist()
            except UnicodeDecodeError as e:
                errors.append(f"{source}: row {row_offset + i}: field '{name}': invalid UTF-8 ({e.reason})")
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
    (``init_image``) and a ``style_image``; other backends would silently ignore a style image, and
    edits (``mask_region``, ``outpaint``) need an inpainting backend and a region some installed
    plug-in knows."""
    errors = []
    cols = ["prompt_id", "init_image", "style_image", "mask_region", "outpaint"]
    for i, row in enumerate(table.select(cols).to_pylist()):
        where = f"{source}: row {i} (prompt_id '{row['prompt_id']}')"
        if backend == "style":
            errors += [f"{where}: field '{f}': required by generator.backend 'style'"
                       for f in ("init_image", "style_image") if not row[f]]
        elif row["style_image"]:
            errors.append(f"{where}: field 'style_image': only generator.backend 'style' uses it "
                          f"(this job's backend is '{backend}')")
        errors += [f"{where}: field '{f}': {m}" for f, m in edits.backend_errors(row, backend)]
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


def template_rows(t: TemplateSpec) -> list[dict[str, Any]]:
    """The manifest rows of one template grid (slots x values x seeds)."""
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
                    "attributes": t.attributes | values,
                }
            )
    return rows


def expand_templates(templates: TemplateSpec | list[TemplateSpec]) -> pa.Table:
    """Expand one grid or a list of grids (rows concatenated in order) into a canonical manifest table."""
    rows = [r for t in (templates if isinstance(templates, list) else [templates]) for r in template_rows(t)]
    table = pa.Table.from_pylist(rows)
    rows = validate_table(table, "manifest.template")
    check_unique([("manifest.template", i, r) for i, r in enumerate(rows)])
    return to_canonical(rows)


def resolve(spec: ManifestSpec, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """The concrete, validated manifest a job runs on."""
    if spec.template is not None:
        return expand_templates(spec.template)
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
