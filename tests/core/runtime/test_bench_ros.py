"""bench ros: the arithmetic behind its figures (the run itself is exercised in tests/ros)."""

from __future__ import annotations

import argparse
import sys

import pytest

from reconvla_core.bench import ros as bench_ros
from reconvla_core.bench.ros_events import breakdown, missed_ticks

pytestmark = pytest.mark.unit


def test_importing_the_bench_and_the_runtime_does_not_import_rclpy_or_torch():
    import subprocess

    modules = ["reconvla_core.bench.ros", "reconvla_core.policy"] + [f"reconvla_core.runtime.{name}" for name in (
        "safety", "action_queue", "image", "sync", "overlay", "backend", "piper_sdk_backend", "frames")]
    code = (f"import sys; import {', '.join(modules)}; "
            "sys.exit(bool({'rclpy', 'torch', 'piper_sdk'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_missed_ticks_counts_skipped_periods():
    period = 1 / 30
    on_time = [k * period for k in range(30)]
    assert missed_ticks(on_time, period) == 0
    late = on_time[:10] + [t + 2 * period for t in on_time[10:]]  # one gap of 3 periods: 2 lost
    assert missed_ticks(late, period) == 2
    jitter = [k * period + (0.4 * period if k % 2 else 0.0) for k in range(30)]  # < 1.5 periods apart
    assert missed_ticks(jitter, period) == 0


def test_breakdown_excludes_model_busy_wait_and_tick_wait():
    event = {"camera_publish": 0.000, "policy_arrival": 0.010, "worker_wait_start": 0.030, "worker_pick": 0.031,
             "inference_s": 0.100, "chunk_arrival": 0.133, "tick_start": 0.150, "command_sent": 0.151}
    parts = breakdown({1: event, 2: {"camera_publish": 0.0}})  # incomplete records are skipped
    assert len(parts["overhead"]) == 1
    assert parts["end_to_end"][0] == pytest.approx(0.151)
    assert parts["policy_busy_wait"][0] == pytest.approx(0.020)
    assert parts["tick_wait"][0] == pytest.approx(0.017)
    assert parts["overhead"][0] == pytest.approx(0.151 - 0.100 - 0.020 - 0.017)
    assert parts["stitch"] == []  # no stitch time recorded in this event
    event["stitch_s"] = 0.004
    with_stitch = breakdown({1: event})
    assert with_stitch["overhead_excluding_stitch"][0] == pytest.approx(parts["overhead"][0] - 0.004)
    pieces = (parts["camera_to_policy"][0] + parts["policy_wake"][0] + parts["policy_to_arm"][0]
              + parts["arm_tick"][0])
    assert pieces == pytest.approx(parts["overhead"][0])
    assert parts["dds"] == []  # no camera_ingest events: the hops are not all known


def test_dds_floor_is_the_three_inter_process_hops():
    event = {"camera_publish": 0.000, "ingest_base_arrival": 0.003, "ingest_wrist_arrival": 0.004,
             "frame_published": 0.006, "policy_arrival": 0.008, "worker_wait_start": 0.008, "worker_pick": 0.009,
             "inference_s": 0.100, "chunk_arrival": 0.112, "tick_start": 0.120, "command_sent": 0.121}
    parts = breakdown({1: event})
    # camera -> ingest 4 ms (the later of the two views), ingest -> policy 2 ms, policy -> arm 3 ms.
    assert parts["dds"][0] == pytest.approx(0.004 + 0.002 + 0.003)
    assert parts["overhead_excluding_dds"][0] == pytest.approx(parts["overhead"][0] - 0.009)


def test_arguments_and_quick_overrides():
    parser = argparse.ArgumentParser()
    bench_ros.add_arguments(parser)
    args = parser.parse_args([])
    assert args.duration == 60.0 and args.control_rate == 30.0 and args.model == "tiny"
    assert set(bench_ros.QUICK_OVERRIDES) <= set(vars(args))
