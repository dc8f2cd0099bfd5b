"""Prompt screen (DESIGN step 3): rules on the prompt text, before any GPU time is spent.

Screened samples are not generated; they are recorded in the decisions table with their reasons.
"""

from __future__ import annotations

from typing import Any

from .config import ScreenSpec
from .plan import Sample


def screen(samples: list[Sample], spec: ScreenSpec) -> tuple[list[Sample], list[dict[str, Any]]]:
    """Split samples into (to generate, screened rows ``{sample_id, prompt_id, reasons}``)."""
    return list(samples), []
