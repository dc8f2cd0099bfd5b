"""The audit report's fixed settings, in one place so every report module (and ``report.json``'s
``settings``) uses the same values; and the one error the report raises."""

from __future__ import annotations

REPORT_FORMAT = "synthgen-report"
REPORT_VERSION = 2  # 2: aggregates streamed, per-sample figures on bounded deterministic samples
GRID_PER_GROUP = 8  # images shown per prompt group
JUDGE_PER_GROUP = 100  # images per group the judge examines (deterministic subset)
MAX_GROUPS_SHOWN = 24  # groups with a grid and a plot in the HTML (all groups are in report.json)
DIST_SAMPLE = 5000  # embeddings per side for CMMD and PRDC, and for the overall Vendi score (deterministic)
FD_SAMPLE = 2000  # FD is computed on exactly this many samples per side when both have them
REF_MAX = 20000  # reference embeddings used at most
MEMO_THRESHOLD = 0.95  # top-1 cosine to the reference at or above which a sample is flagged
NEAR_DUP_COS = 0.99  # within-group cosine at or above which two kept samples count as near-duplicates
CLOSEST_PAIRS = 8
FLAGGED_SHOWN = 48
THUMB_MAX = 128  # images larger than this (px) are downscaled for the HTML
# Memory bounds: the report streams every sample and decisions row; what needs values keeps at most these
# many per series (the rows with the lowest sha256 of the sample id), so a dataset of any size fits.
SCORE_SAMPLE = 20000  # values of a score over the whole dataset kept for quantiles, histograms, bootstrap
GROUP_SCORE_SAMPLE = 5000  # the same, per prompt group
EMB_PER_GROUP = 1000  # image embeddings per group for its Vendi score and near-duplicates (overall: DIST_SAMPLE)
FLAGGED_LISTED = 1000  # flagged samples listed in report.json (all are counted)
NONFINITE_LISTED = 1000  # sample ids named per input with NaN/inf values (all are counted)
BATCH_ROWS = 8192  # decisions / timings rows decoded at a time
SHARD_ROWS = 1024  # samples of a shard (records ~6 KB as Python objects, embeddings) decoded at a time
N_BOOT = 1000
SEED = 0

PERCEIVED_ORDER = ("domain", "count", "shape", "colour", "size", "position", "background", "nodule",
                   "nodule_side", "nodule_size")
MAX_ATTRS_PLOTTED = 5


class ReportError(Exception):
    """The input is not a dataset the report can read (no index, unreadable reference)."""
