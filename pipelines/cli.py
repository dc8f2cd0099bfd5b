"""``synthgen``: validate, expand and run job specs."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer

from pipelines.errors import SynthgenError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


class _Log:
    """Events as human lines, or JSON lines for cluster log collectors (``--log-format json``)."""

    def __init__(self, fmt: str, quiet: bool):
        self.fmt, self.quiet = fmt, quiet

    def __call__(self, event: str, **fields: Any) -> None:
        if self.fmt == "json":
            print(json.dumps({"ts": time.time(), "event": event, **fields}, default=str), file=sys.stderr)
        elif not self.quiet and event != "unit_staged":
            print(f"[synthgen] {event}: " + ", ".join(f"{k}={v}" for k, v in fields.items()), file=sys.stderr)


@contextmanager
def _native_stderr_aside() -> Iterator[None]:
    """Ray's C++ core worker writes to file descriptor 2 directly, past Python logging: e.g. an error-level
    line that every Ray Data actor pool triggers (its constructor arguments are object refs Ray Data puts
    itself; ray-project/ray#57733). During a run fd 2 goes to a file while ``sys.stderr`` keeps the
    terminal; the file is deleted, or named when the run fails. A no-op when stderr is not fd 2 (tests)."""
    try:
        is_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        is_fd2 = False
    if not is_fd2:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    fd, path = tempfile.mkstemp(prefix="synthgen-ray-native-", suffix=".log")
    os.dup2(fd, 2)
    os.close(fd)
    terminal = sys.stderr
    sys.stderr = open(saved, "w", buffering=1, closefd=False, encoding=terminal.encoding, errors="backslashreplace")
    ok = False
    try:
        yield
        ok = True
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = terminal
        if ok or os.path.getsize(path) == 0:
            os.unlink(path)
        else:
            print(f"(Ray's native log lines of this run: {path})", file=sys.stderr)


def _fail(e: SynthgenError) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(e.exit_code)


def _load(job: Path, out: Optional[str] = None, manifest: Optional[str] = None):
    from pipelines.config import load_job

    spec = load_job(job)
    return spec.with_overrides(out=out, manifest=manifest) if (out or manifest) else spec


@app.command()
def validate(job: Path = typer.Argument(..., help="Job spec YAML.")) -> None:
    """Check a job spec and its manifest; run nothing, write nothing."""
    from pipelines.execution.resources import check_pools_fit_here
    from pipelines.execution.runner import prepare

    try:
        prep = prepare(_load(job))
        check_pools_fit_here(prep.spec.resources)
    except SynthgenError as e:
        _fail(e)
    typer.echo(f"ok: {job}: {prep.manifest.num_rows} prompts, {len(prep.samples)} samples, "
               f"{len(prep.units)} work units, fingerprint {prep.fingerprint}")


@app.command("manifest")
def manifest_cmd(job: Path = typer.Argument(..., help="Job spec YAML."),
                 out: str = typer.Option(..., "--out", help="Where to write the concrete manifest (Parquet).")) -> None:
    """Write the concrete, validated manifest the job would run on."""
    import pyarrow.parquet as pq

    from pipelines.plan import manifest as mf
    from pipelines.io.store import url_to_fs

    try:
        spec = _load(job)
        table = mf.resolve(spec.manifest, spec.output.storage_options)
    except SynthgenError as e:
        _fail(e)
    fs, path = url_to_fs(out)
    pq.write_table(table, path, filesystem=fs)
    typer.echo(f"wrote {table.num_rows} rows to {out}")


@app.command()
def run(
    job: Path = typer.Argument(..., help="Job spec YAML."),
    out: Optional[str] = typer.Option(None, "--out", help="Output dataset URL (overrides output.url)."),
    manifest: Optional[str] = typer.Option(None, "--manifest", help="Manifest URL (overrides manifest)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a different dataset at the output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or info lines."),
    log_format: str = typer.Option("text", "--log-format", help="text or json (structured logs for clusters)."),
) -> None:
    """Run a job: generate, score, stage, curate and publish a dataset."""
    from pipelines.execution.runner import run as run_job

    log = _Log(log_format, quiet)
    if quiet:  # nothing but errors and the summary: library deprecation notices included
        warnings.simplefilter("ignore")
    try:
        spec = _load(job, out, manifest)
        with _native_stderr_aside():  # Ray's Python logs are kept off the driver's stderr by ensure_ray
            res = run_job(spec, overwrite=overwrite, quiet=quiet or log_format == "json", log=log)
    except SynthgenError as e:
        _fail(e)
    summary = {"url": res.url, "fingerprint": res.fingerprint, **res.counts,
               "units_generated": res.units_generated, "units_reused": res.units_reused,
               "images_per_s": round(res.images_per_s, 2),
               "stage_seconds": {k: round(v, 2) for k, v in res.stage_seconds.items()}}
    spec_tol = spec.max_failed_fraction
    too_many_failed = res.failed > spec_tol * max(res.counts["planned"], 1)
    if log_format == "json":
        print(json.dumps({"event": "summary", "failed": res.failed, **summary}))
        if too_many_failed:
            raise typer.Exit(4)
        return
    if res.already_published:
        typer.echo(f"already published (same job): {res.url}")
    typer.echo(f"dataset: {res.url}  (report: {res.url.rstrip('/')}/report.html; check: synthgen verify {res.url})")
    typer.echo(f"  samples: {res.counts['planned']} planned, {res.counts['kept']} kept, "
               f"{res.counts['rejected']} rejected; shards: {res.counts['shards']}")
    typer.echo(f"  units: {res.units_generated} generated, {res.units_reused} reused from staging; "
               f"throughput: {res.images_per_s:.1f} images/s")
    for k, v in res.stage_seconds.items():
        typer.echo(f"  {k:<34} {v:8.2f} s")
    for line in _quota_lines(res.extra.get("targets")):
        typer.echo(line)
    if res.failed:
        typer.echo(f"  failed samples: {res.failed} (see decisions.parquet, reason generation_failed)", err=True)
    if too_many_failed:
        typer.echo(f"error: {res.failed} samples failed, above max_failed_fraction={spec_tol}", err=True)
        raise typer.Exit(4)


def _quota_lines(t: dict | None) -> list[str]:
    """The quota's per-group table for the run summary (one screen: the groups sorted, reasons inline)."""
    if not t:
        return []
    cost = f"{t['cost']:.2f}" if t["cost"] is not None else "-"
    out = [f"  quota: {t['met']} groups met, {t['unachievable']} unachievable; {len(t['rounds'])} extra rounds; "
           f"{t['generated']} generated for {t['published']} published ({cost} per image)",
           f"    {'group':<34} {'target':>6} {'kept':>5} {'gen':>5} {'accept':>6} {'cost':>5} {'rounds':>6}  status"]
    for g in t["groups"]:
        acc = f"{g['acceptance']:.2f}" if g["acceptance"] is not None else "-"
        c = f"{g['cost']:.2f}" if g["cost"] is not None else "-"
        status = g["status"] + (f" ({g['reason']})" if g.get("reason") else "")
        target = g["target"] if g["target"] is not None else "-"
        out.append(f"    {g['group'][:34]:<34} {target:>6} {g['published']:>5} {g['generated']:>5} {acc:>6} {c:>5} "
                   f"{g['rounds']:>6}  {status}")
    return out


@app.command()
def verify(
    url: str = typer.Argument(..., help="Dataset URL (local path, s3://bucket/prefix, ...)."),
    storage_options: str = typer.Option("{}", "--storage-options", help="fsspec options as JSON "
                                        "(credentials come from the environment)."),
    same_as: Optional[str] = typer.Option(None, "--same-as", help="Also check that this other dataset (a rerun) "
                                          "holds the same data: shards equal but for C2PA salts and signatures."),
    images: bool = typer.Option(False, "--images", help="Also validate every image's C2PA manifest."),
    trust_anchor: Optional[Path] = typer.Option(None, "--trust-anchor", help="With --images: PEM root(s) that "
                                                "every signature must chain to."),
) -> None:
    """Check every shard and file of a published dataset against its index (exit 1 on problems)."""
    from pipelines.publish.verify import verify as verify_dataset

    problems, index = verify_dataset(url, json.loads(storage_options))
    if images and not problems:
        from pipelines.publish.compare import check_images

        bad, n = check_images(url, json.loads(storage_options), trust_anchor.read_text() if trust_anchor else None)
        problems += bad
        if not bad:
            trusted = ", trusted" if trust_anchor else ""
            typer.echo(f"{n} images: C2PA manifests valid{trusted}, each names its sample")
    if same_as and not problems:
        from pipelines.publish.compare import compare

        diff, modulo = compare(url, same_as, json.loads(storage_options))
        problems += diff
        if not diff:
            typer.echo(f"same data as {same_as} ({modulo} shards equal once their C2PA manifests are set aside)")
    for p in problems:
        typer.echo(f"problem: {p}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"ok: {url}: {index['counts']['kept']} samples in {len(index['shards'])} shards, all hashes match")


@app.command("verify-image")
def verify_image(
    file: Path = typer.Argument(..., help="An image (PNG as published, or a re-encoded copy)."),
    trust_anchor: Optional[Path] = typer.Option(None, "--trust-anchor", help="PEM root(s) to trust for C2PA."),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
    strength: float = typer.Option(24.0, "--watermark-strength", help="The job's provenance.watermark.strength."),
) -> None:
    """Check one image's marks: C2PA manifest (signature, hashes), invisible watermark, IPTC type (exit 1 on problems)."""
    from pipelines.publish.verify_image import describe, inspect

    try:
        data = file.read_bytes()
    except OSError as e:
        typer.echo(f"error: {file}: {e.strerror}", err=True)
        raise typer.Exit(2)
    res = inspect(data, trust_anchor.read_text() if trust_anchor else None, strength)
    typer.echo(json.dumps(res, indent=1, default=str) if as_json else "\n".join(f"{file}: {x}" for x in describe(res)))
    for p in res["problems"]:
        typer.echo(f"problem: {file}: {p}", err=True)
    if res["problems"]:
        raise typer.Exit(1)


@app.command()
def report(
    dataset_url: str = typer.Argument(..., help="Published dataset URL (local path, s3://bucket/prefix, ...)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Reference set: a published dataset, "
                                            "Parquet with image_emb (+png), or a folder of images."),
    out: str = typer.Option("report.html", "--out", help="HTML file to write (any fsspec URL); the JSON "
                            "goes beside it with the same name and .json."),
    storage_options: str = typer.Option("{}", "--storage-options", help="fsspec options as JSON."),
) -> None:
    """Rebuild the audit report (self-contained HTML + report.json) of a published dataset."""
    from pipelines.report.build import ReportError, write_report

    try:
        html, js, rep = write_report(dataset_url, out, reference, json.loads(storage_options))
    except ReportError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    ref = rep["reference"]
    typer.echo(f"wrote {html} and {js}: {rep['summary']['published_samples']} samples, {rep['groups']['count']} "
               f"groups" + (f", reference {ref['n_reference']} (CMMD {ref['cmmd']['value']})" if ref.get("cmmd") else
                            f"; reference: {ref.get('note', 'none')}"))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
