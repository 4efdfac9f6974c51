"""The latency percentiles that `stats` replies report, shared by the model manager's scheduler
and the live STT streams."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

QUANTILES = (50, 95, 99)


def percentiles_ms(seconds: Collection[float], decimals: int = 2) -> dict[str, float]:
    """{"p50", "p95", "p99"} of `seconds`, in milliseconds; {} for no values."""
    if not seconds:
        return {}
    ms = np.fromiter(seconds, np.float64, len(seconds)) * 1000.0
    return {f"p{q}": round(float(np.percentile(ms, q)), decimals) for q in QUANTILES}
