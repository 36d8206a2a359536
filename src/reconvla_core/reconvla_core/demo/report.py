"""Reports of the demo and the study: JSON, markdown and the plots people compare."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    from reconvla_core.cli.main import json_default

    path.write_text(json.dumps(data, indent=2, default=json_default) + "\n")
    return path


def plot_success_by_position(series: Mapping[str, Sequence[float]], path: Path, title: str,
                             errors: Mapping[str, Sequence[float]] | None = None) -> Path:
    """Grouped bars: success rate of 1..5 subtasks in a row, one bar group per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(series)
    positions = np.arange(1, 1 + max(len(v) for v in series.values()))
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for i, label in enumerate(labels):
        values = np.asarray(series[label], dtype=float) * 100.0
        yerr = None if errors is None or label not in errors else np.asarray(errors[label], dtype=float) * 100.0
        ax.bar(positions + (i - (len(labels) - 1) / 2) * width, values, width, label=label, yerr=yerr, capsize=3)
    ax.set_xticks(positions)
    ax.set_xlabel("subtasks completed in a row")
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def mean_and_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of a Student-t confidence interval (0 for a single value)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    from scipy import stats

    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    half_width = stats.t.ppf(0.5 + confidence / 2, n - 1) * math.sqrt(variance / n)
    return mean, float(half_width)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
