"""One pass over the published samples, shard by shard (records and embeddings a few thousand at a time), into
bounded aggregates: counts and CLIPScore summaries per prompt group, residual exact duplicates, the
deterministic samples of embeddings the diversity and reference metrics use, every sample's top-1 cosine
to a reference set, and the few samples the report shows or judges (lowest sha256 of the sample id per
group, as :func:`pipelines.report.build._select` defines). Nothing is kept per sample."""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.curation.groups import group_key
from pipelines.report import metrics as M
from pipelines.report.data import Dataset, iter_records, iter_shard
from pipelines.report.settings import (CLOSEST_PAIRS, DIST_SAMPLE, EMB_PER_GROUP, GRID_PER_GROUP, GROUP_SCORE_SAMPLE,
                                       JUDGE_PER_GROUP, MEMO_THRESHOLD, NONFINITE_LISTED, SCORE_SAMPLE)
from pipelines.report.stream import DupCounter, IdList, Reservoir, ScoreStats, Smallest, sample_keys, string_codes


@dataclass
class Pick:
    """A published sample the report shows (grid) or judges."""

    pos: int  # publish order
    sample_id: str
    group: str
    prompt: str
    clip: float
    shard: int
    img_emb: np.ndarray | None = None


def rank(salt: str, sample_id: str) -> bytes:
    """The deterministic, content-independent rank of a sample in a choice: sha256(salt|sample_id)."""
    return hashlib.sha256(f"{salt}|{sample_id}".encode()).digest()


class RefStream:
    """Every published sample's top-1 cosine to a reference set (normalised rows ``rem``), a shard at a time."""

    def __init__(self, rem: np.ndarray):
        self.rem = rem
        self.top1 = ScoreStats(SCORE_SAMPLE)
        self.flagged = 0
        self.closest = Smallest(CLOSEST_PAIRS)  # (-cosine, position) -> (sample id, reference row, cosine, shard)

    def add(self, ids: list[str], keys: np.ndarray, pos: np.ndarray, img: np.ndarray, shard: int) -> None:
        top, arg = M.top1_cosine(M.normalise(img), self.rem)
        self.top1.add(keys, pos, top)
        self.flagged += int((top >= MEMO_THRESHOLD).sum())
        for j in np.lexsort((pos, -top))[:CLOSEST_PAIRS]:
            self.closest.offer((-float(top[j]), int(pos[j])), (ids[j], int(arg[j]), float(top[j]), shard))


def published_prompt_groups(ds: Dataset) -> dict[str, str]:
    """prompt_id -> group of its published samples: a records-only pass, for datasets without a manifest."""
    out: dict[str, str] = {}
    for sh in ds.shards:
        for rec in iter_records(ds.store, sh):
            out.setdefault(rec.get("prompt_id", ""), group_key(rec.get("attributes")))
    return out


class SampleScan:
    """The aggregates of the published samples; feed shards with :meth:`add_shard`, then :meth:`finish`."""

    def __init__(self, ref_rem: np.ndarray | None = None, candidates: set[str] | None = None):
        self.n = 0
        self.kept: Counter[str] = Counter()  # published samples per group
        self.group_attrs: dict[str, dict[str, str]] = {}
        self.clip = ScoreStats(SCORE_SAMPLE)
        self.clip_by_group: dict[str, ScoreStats] = {}
        self.pixels = DupCounter()
        self.pixel_repeats = 0
        self._grid: dict[str, Smallest] = {}
        self._judge: dict[str, Smallest] = {}
        self.grid: dict[str, list[Pick]] = {}
        self.judge: list[Pick] = []
        self.emb_all: Reservoir | None = None  # DIST_SAMPLE image embeddings over all samples
        self.emb_by_group: dict[str, Reservoir] = {}  # EMB_PER_GROUP per group
        self.dim: int | None = None
        self.img_complete = self.txt_complete = True  # every shard published its (text) embeddings
        self.bad = {k: IdList(NONFINITE_LISTED) for k in ("image_emb", "text_emb", "clip_score")}
        self.bad_img_rows: list[int] = []  # publish positions of the first samples with non-finite image embeddings
        self.clip_diff: float | None = None  # max |CLIPScore recorded - recomputed from the embeddings|
        self.ref = RefStream(ref_rem) if ref_rem is not None else None
        self.candidates = candidates or set()
        self.found: dict[str, int] = {}  # candidate sample id -> its shard

    def add_shard(self, ds: Dataset, shard: Any) -> None:
        """One shard, a few thousand samples at a time (:func:`~pipelines.report.data.iter_shard`)."""
        for recs, img, txt in iter_shard(ds.store, shard):
            self._add(recs, img, txt, shard.no)

    def _add(self, recs: list[dict[str, Any]], img: np.ndarray | None, txt: np.ndarray | None, shard: int) -> None:
        m = len(recs)
        ids = [r["sample_id"] for r in recs]
        attrs = [r.get("attributes") for r in recs]
        groups = [sys.intern(group_key(a)) for a in attrs]  # one string object per group, not per sample
        for g, a in zip(groups, attrs):
            if g not in self.group_attrs:
                self.group_attrs[g] = dict(a or {})
        prompts = [sys.intern(r.get("prompt", "")) for r in recs]
        clip = np.array([float((r.get("clip") or {}).get("score", float("nan"))) for r in recs], np.float64)
        pixels = [(r.get("image") or {}).get("pixel_sha256", "") for r in recs]
        pos = np.arange(self.n, self.n + m)
        self.n += m
        keys = sample_keys(ids)
        self.kept.update(groups)
        rows_of: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            rows_of.setdefault(g, []).append(i)
        self.clip.add(keys, pos, clip)
        for g, rows in rows_of.items():
            self.clip_by_group.setdefault(g, ScoreStats(GROUP_SCORE_SAMPLE)).add(keys[rows], pos[rows], clip[rows])
        self.bad["clip_score"].extend_capped([ids[i] for i in np.flatnonzero(~np.isfinite(clip))])
        self.pixels.add(string_codes(pixels))
        self.found |= {s: shard for s in ids if s in self.candidates}
        self.img_complete &= img is not None
        self.txt_complete &= txt is not None
        picks = self._offer_picks(ids, groups, prompts, clip, pos, shard)
        if img is None:
            return
        bad = M.nonfinite_rows(img)
        self.bad["image_emb"].extend_capped([ids[i] for i in bad])
        self.bad_img_rows += [int(pos[i]) for i in bad][: max(NONFINITE_LISTED - len(self.bad_img_rows), 0)]
        if txt is not None:
            self.bad["text_emb"].extend_capped([ids[i] for i in M.nonfinite_rows(txt)])
        self.dim = self.dim or int(img.shape[1])
        if self.emb_all is None:
            self.emb_all = Reservoir(DIST_SAMPLE, (img.shape[1],), np.float32)
        self.emb_all.add(keys, pos, img)
        for g, rows in rows_of.items():
            self.emb_by_group.setdefault(g, Reservoir(EMB_PER_GROUP, (img.shape[1],), np.float32)).add(
                keys[rows], pos[rows], img[rows])
        for p, i in picks:
            p.img_emb = img[i].copy()
        if txt is not None and len(txt) == m:
            from pipelines.embed.clip import clip_score

            diff = np.abs(clip_score(img, txt) - clip)
            diff = diff[~np.isnan(diff)]
            if diff.size:
                self.clip_diff = max(self.clip_diff or 0.0, float(diff.max()))
        if self.ref is not None and not bad and img.shape[1] == self.ref.rem.shape[1]:
            self.ref.add(ids, keys, pos, img, shard)

    def _offer_picks(self, ids: list[str], groups: list[str], prompts: list[str], clip: np.ndarray,
                     pos: np.ndarray, shard: int) -> list[tuple[Pick, int]]:
        """Offer every sample to its group's grid and judge choices; the picks built (to attach embeddings)."""
        made = []
        for i, (sid, g) in enumerate(zip(ids, groups)):
            for salt, k, sets in (("grid", GRID_PER_GROUP, self._grid), ("judge", JUDGE_PER_GROUP, self._judge)):
                chosen = sets.setdefault(g, Smallest(k))
                key = rank(salt, sid)
                if chosen.accepts(key):
                    p = Pick(int(pos[i]), sid, g, prompts[i], float(clip[i]), shard)
                    chosen.offer(key, p)
                    made.append((p, i))
        return made

    def finish(self) -> "SampleScan":
        self.grid = {g: sorted(s.items(), key=lambda p: p.sample_id) for g, s in self._grid.items()}
        self.judge = sorted((p for s in self._judge.values() for p in s.items()), key=lambda p: p.pos)
        self.pixel_repeats = self.pixels.repeats()
        return self

    @property
    def has_img_emb(self) -> bool:
        return self.img_complete and self.emb_all is not None and self.n > 0

    @property
    def has_txt_emb(self) -> bool:
        return self.has_img_emb and self.txt_complete

    def nonfinite(self) -> dict[str, IdList]:
        """Published samples whose image/text embedding or CLIPScore holds NaN or inf, by input."""
        have = {"image_emb": self.has_img_emb, "text_emb": self.has_txt_emb, "clip_score": True}
        return {k: v for k, v in self.bad.items() if v and have[k]}
