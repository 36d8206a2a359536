"""bench ros end to end (short, stub policy): the three node processes run and the figures are produced."""

from __future__ import annotations

import argparse
import math

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_bench_ros_runs_the_graph_and_reports_every_figure():
    from reconvla_core.bench import ros as bench_ros

    parser = argparse.ArgumentParser()
    bench_ros.add_arguments(parser)
    args = parser.parse_args(["--duration", "4", "--warmup", "2", "--model", "stub", "--image-width", "160",
                              "--image-height", "120", "--camera-rate", "15"])
    result = bench_ros.run(args)
    for key in ("overhead_p50_ms", "overhead_p99_ms", "missed_ticks", "control_rate_hz", "duration_s",
                "rss_slope_mb_per_min"):
        assert key in result
    assert result["chunks_measured"] > 0, result  # chunks went camera -> ingest -> policy -> arm -> command
    assert result["overhead_p50_ms"] > 0 and math.isfinite(result["overhead_p99_ms"])
    assert result["control_rate_hz"] > 0 and result["missed_ticks"] >= 0
    assert result["duration_s"] == pytest.approx(4.0, abs=0.5)
