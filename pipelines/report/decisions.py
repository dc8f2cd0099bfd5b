"""The decisions and timings tables, streamed a batch at a time into the aggregates the report shows:
counts per reason, stage and prompt group, perceived-attribute counts before and after curation, score
summaries (exact moments, quantiles from a bounded sample), the flagged and QC-rejected samples (all
counted, the first listed). Memory is bounded by the number of groups, reasons and columns, never by
the number of rows."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.report.data import DUPSIM, REFSIM, SAFETY, Dataset, attr_name, extra_columns, iter_batches, part_columns
from pipelines.report.settings import FLAGGED_LISTED, GROUP_SCORE_SAMPLE, SCORE_SAMPLE
from pipelines.report.stream import ScoreStats, Smallest, sample_keys

MAX_REJECTED_SHOWN = 50  # QC-rejected samples listed (by sample id)
Counts = dict[str, dict[str, Counter]]  # group -> attribute -> value -> count


@dataclass
class DecisionStats:
    """Everything the report needs from ``decisions.parquet``, gathered in one pass."""

    rows: int = 0
    rejections: Counter = field(default_factory=Counter)  # reason of rejected rows ("(no reason)" if none)
    flags_on_kept: Counter = field(default_factory=Counter)
    dup_reasons: Counter = field(default_factory=Counter)  # reasons that name a duplicate, all rows
    planned: Counter = field(default_factory=Counter)  # rows per prompt group
    clip: ScoreStats = field(default_factory=lambda: ScoreStats(SCORE_SAMPLE))  # all generated samples
    clip_by_group: dict[str, ScoreStats] = field(default_factory=dict)  # by the manifest's group of the prompt
    scores: dict[str, ScoreStats] = field(default_factory=dict)  # extra numeric columns (safety, dedup, reference)
    label_columns: set[str] = field(default_factory=set)
    before: Counts = field(default_factory=lambda: defaultdict(lambda: defaultdict(Counter)))
    after: Counts = field(default_factory=lambda: defaultdict(lambda: defaultdict(Counter)))
    flagged: int = 0
    flagged_kept: int = 0
    flagged_rows: list[dict[str, Any]] = field(default_factory=list)  # the first FLAGGED_LISTED, in table order
    flagged_kept_ids: list[str] = field(default_factory=list)  # the first FLAGGED_LISTED kept ones
    qc_rejected: int = 0
    qc_first: Smallest = field(default_factory=lambda: Smallest(MAX_REJECTED_SHOWN))

    def safety_columns(self) -> list[str]:
        return sorted(k for k in self.scores if SAFETY.search(k))

    def listed_flagged(self) -> list[dict[str, Any]]:
        """The listed flagged samples, each with every safety score column (None where it has no value)."""
        cols = self.safety_columns()
        return [{**r, "scores": {k: r["scores"].get(k) for k in cols}} for r in self.flagged_rows]

    def show_candidates(self) -> list[str]:
        """Flagged samples that may be published (their thumbnails), in table order."""
        return list(dict.fromkeys([r["sample_id"] for r in self.flagged_rows] + self.flagged_kept_ids))


def _column(batch: Any, name: str, default: Any) -> list[Any]:
    i = batch.schema.get_field_index(name)
    return batch.column(i).to_pylist() if i >= 0 else [default] * batch.num_rows


def read_decisions(ds: Dataset, prompt_groups: dict[str, str] | None) -> DecisionStats | None:
    """One pass over the decisions parts (None when absent or without ``sample_id``). A row's group is its
    prompt's (``prompt_groups``: the manifest's, or, without a manifest, that of the prompt's published
    samples); the CLIPScore "all generated" per group uses the manifest's only."""
    names = part_columns(ds.store, ds.decision_keys)
    if "sample_id" not in names:
        return None
    st = DecisionStats()
    matches: dict[str, tuple[bool, bool]] = {}  # reason -> (names a duplicate, names a safety concern)
    pg, manifest = prompt_groups or {}, ds.prompt_groups or {}
    for batch in iter_batches(ds.store, ds.decision_keys):
        n = batch.num_rows
        sids = _column(batch, "sample_id", None)
        pids = _column(batch, "prompt_id", "")
        kept = [bool(k) for k in _column(batch, "kept", True)]
        reasons = [list(r or []) for r in _column(batch, "reasons", [])]
        flags = [list(f or []) if isinstance(f, list) else [] for f in _column(batch, "flags", [])]
        clip = _column(batch, "clip_score", None)
        pos = np.arange(st.rows, st.rows + n)
        keys = sample_keys([s if s is not None else "" for s in sids])
        groups = [pg.get(p) for p in pids]
        has = np.array([c is not None for c in clip], bool)
        st.clip.add(keys[has], pos[has], np.array([c for c in clip if c is not None], np.float64))
        by_g: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(pids):
            g = manifest.get(p)
            if g is not None and clip[i] is not None:
                by_g[g].append(i)
        for g, rows in by_g.items():
            st.clip_by_group.setdefault(g, ScoreStats(GROUP_SCORE_SAMPLE)).add(
                keys[rows], pos[rows], np.array([clip[i] for i in rows], np.float64))
        extras = extra_columns(batch)
        flag_rows = set()
        for name, e in extras.items():
            if not len(e.rows):  # a column with no value (yet) is not reported
                continue
            if e.kind == "score" and (SAFETY.search(name) or REFSIM.search(name) or DUPSIM.search(name)):
                st.scores.setdefault(name, ScoreStats(SCORE_SAMPLE)).add(keys[e.rows], pos[e.rows], e.values)
            elif e.kind == "label":
                st.label_columns.add(name)
                attr = attr_name(name)
                for r, v in zip(e.rows.tolist(), e.values):
                    if groups[r] is not None:
                        st.before[groups[r]][attr][v] += 1
                        if kept[r]:
                            st.after[groups[r]][attr][v] += 1
            elif e.kind == "flag" and SAFETY.search(name):
                flag_rows |= set(e.rows[e.values].tolist())
        safety_scores = {k: dict(zip(e.rows.tolist(), e.values.tolist())) for k, e in extras.items()
                         if e.kind == "score" and SAFETY.search(k)} if len(st.flagged_rows) < FLAGGED_LISTED else {}
        qc = batch.schema.get_field_index("qc_pred") >= 0 and batch.schema.get_field_index("reasons") >= 0
        qc_pred = _column(batch, "qc_pred", None) if qc else None
        for i in range(n):
            g = groups[i]
            if g is not None:
                st.planned[g] += 1
            said = reasons[i] + flags[i]
            for r in said:
                if r not in matches:
                    matches[r] = (bool(DUPSIM.search(r)) or "dup" in r, bool(SAFETY.search(r)))
            st.dup_reasons.update(r for r in reasons[i] if matches[r][0])
            if kept[i]:
                st.flags_on_kept.update(said)
            else:
                st.rejections.update(reasons[i] or ["(no reason)"])
            if i in flag_rows or any(matches[r][1] for r in said):
                st.flagged += 1
                st.flagged_kept += kept[i]
                if len(st.flagged_rows) < FLAGGED_LISTED:
                    st.flagged_rows.append({"sample_id": sids[i], "kept": kept[i], "reasons": said, "scores": {
                        k: float(v[i]) for k, v in safety_scores.items() if i in v}})
                if kept[i] and len(st.flagged_kept_ids) < FLAGGED_LISTED:
                    st.flagged_kept_ids.append(sids[i])
            if qc_pred is not None:
                why = [r for r in reasons[i] if r.startswith("qc:")]
                if why:
                    st.qc_rejected += 1
                    st.qc_first.offer(sids[i], {"sample_id": sids[i], "reasons": why, "read": dict(qc_pred[i] or [])})
        st.rows += n
    return st


@dataclass
class TimingStats:
    rows: int = 0
    gen_ms: ScoreStats = field(default_factory=lambda: ScoreStats(SCORE_SAMPLE))
    clip_ms: ScoreStats = field(default_factory=lambda: ScoreStats(SCORE_SAMPLE))
    columns: set[str] = field(default_factory=set)
    workers: set[Any] = field(default_factory=set)


def read_timings(ds: Dataset) -> TimingStats | None:
    """Rows, per-sample generation and CLIP times, and the generator workers (None when absent)."""
    names = part_columns(ds.store, ds.timing_keys)
    if "sample_id" not in names:
        return None
    ts = TimingStats(columns=names)
    for batch in iter_batches(ds.store, ds.timing_keys):
        n = batch.num_rows
        pos = np.arange(ts.rows, ts.rows + n)
        keys = sample_keys([s if s is not None else "" for s in _column(batch, "sample_id", None)])
        for col in ("gen_ms", "clip_ms"):
            if col in names:
                v = _column(batch, col, None)
                has = np.array([x is not None for x in v], bool)
                getattr(ts, col).add(keys[has], pos[has], np.array([x for x in v if x is not None], np.float64))
        if "gen_worker" in names:
            ts.workers |= set(_column(batch, "gen_worker", None))
        ts.rows += n
    return ts
