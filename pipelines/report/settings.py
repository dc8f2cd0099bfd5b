"""The audit report's fixed settings, in one place so every report module (and ``report.json``'s
``settings``) uses the same values; and the one error the report raises."""

from __future__ import annotations

REPORT_FORMAT = "synthgen-report"
REPORT_VERSION = 1
GRID_PER_GROUP = 8  # images shown per prompt group
JUDGE_PER_GROUP = 100  # images per group the judge examines (deterministic subset)
MAX_GROUPS_SHOWN = 24  # groups with a grid and a plot in the HTML (all groups are in report.json)
DIST_SAMPLE = 5000  # at most this many embeddings per side for CMMD and PRDC (deterministic subset)
FD_SAMPLE = 2000  # FD is computed on exactly this many samples per side when both have them
REF_MAX = 20000  # reference embeddings used at most
MEMO_THRESHOLD = 0.95  # top-1 cosine to the reference at or above which a sample is flagged
NEAR_DUP_COS = 0.99  # within-group cosine at or above which two kept samples count as near-duplicates
CLOSEST_PAIRS = 8
FLAGGED_SHOWN = 48
THUMB_MAX = 128  # images larger than this (px) are downscaled for the HTML
N_BOOT = 1000
SEED = 0

PERCEIVED_ORDER = ("domain", "count", "shape", "colour", "size", "position", "background", "nodule",
                   "nodule_side", "nodule_size")
MAX_ATTRS_PLOTTED = 5


class ReportError(Exception):
    """The input is not a dataset the report can read (no index, unreadable reference)."""
