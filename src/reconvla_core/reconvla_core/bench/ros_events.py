"""The ROS benchmark's event log and its arithmetic (``reconvla bench ros``, bench/ros.py).

Each node process appends ``[key, name, time]`` JSON lines while measuring (``EventLog``); the
parent merges the files (``read_events``: CLOCK_MONOTONIC is system-wide) and turns the per-frame
records into the figures: the per-chunk breakdown of the ROS-layer overhead (``breakdown``), missed
control ticks (``missed_ticks``), percentiles and the memory slope.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

FRAME_KEY = "frame_key"  # an event line that says which frame a chunk stamp belongs to


class EventLog:
    """Appends [key, name, t] JSON lines while measuring (a file: no memory growth in the node)."""

    def __init__(self, path: str, measuring: Any) -> None:
        self._file = open(path, "w", buffering=1)  # noqa: SIM115 - closed in close()
        self._measuring = measuring
        self._lock = threading.Lock()

    def mark(self, key: int, name: str, value: float | None = None) -> None:
        if self._measuring.is_set():
            line = json.dumps([key, name, time.monotonic() if value is None else value])
            with self._lock:
                self._file.write(line + "\n")

    def close(self) -> None:
        self._file.close()


def read_events(paths: list[Path]) -> tuple[dict[int, dict[str, float]], list[float]]:
    events: dict[int, dict[str, float]] = {}
    ticks: list[float] = []
    for path in paths:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            key, name, value = json.loads(line)
            if name == "tick":
                ticks.append(value)
            else:
                events.setdefault(key, {}).setdefault(name, value)
    for key in [k for k, record in events.items() if FRAME_KEY in record]:  # chunk key -> its frame's record
        record = events.pop(key)
        frame = events.setdefault(int(record.pop(FRAME_KEY)), {})
        for name, value in record.items():
            frame.setdefault(name, value)
    return events, ticks


def percentiles(values: list[float], prefix: str) -> dict[str, float]:
    if not values:
        return {f"{prefix}_p50_ms": math.nan, f"{prefix}_p99_ms": math.nan}
    data = np.asarray(values) * 1e3
    return {f"{prefix}_p50_ms": round(float(np.percentile(data, 50)), 3),
            f"{prefix}_p99_ms": round(float(np.percentile(data, 99)), 3)}


def slope_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 3:
        return math.nan
    t, y = np.array(samples).T
    return float(np.polyfit(t / 60.0, y, 1)[0])


def missed_ticks(tick_starts: list[float], period: float) -> int:
    """Control periods skipped: each gap over 1.5 periods counts round(gap / period) - 1."""
    gaps = np.diff(np.sort(np.asarray(tick_starts, dtype=np.float64)))
    late = gaps[gaps > 1.5 * period]
    return int(np.sum(np.round(late / period) - 1))


def breakdown(events: dict[int, dict[str, float]]) -> dict[str, list[float]]:
    """Per executed chunk: end-to-end, what is excluded from the overhead, the overhead and its parts."""
    names = ("overhead", "end_to_end", "inference", "policy_busy_wait", "tick_wait", "camera_to_policy",
             "camera_to_ingest", "ingest_processing", "ingest_to_policy", "policy_wake", "policy_to_arm", "arm_tick",
             "stitch", "overhead_excluding_stitch", "dds", "overhead_excluding_dds")
    parts: dict[str, list[float]] = {name: [] for name in names}
    needed = ("camera_publish", "policy_arrival", "worker_wait_start", "worker_pick", "inference_s",
              "chunk_arrival", "tick_start", "command_sent")
    for e in events.values():
        if not all(k in e for k in needed):
            continue
        end_to_end = e["command_sent"] - e["camera_publish"]
        busy = max(0.0, e["worker_wait_start"] - e["policy_arrival"])
        tick_wait = max(0.0, e["tick_start"] - e["chunk_arrival"])
        parts["end_to_end"].append(end_to_end)
        parts["inference"].append(e["inference_s"])
        parts["policy_busy_wait"].append(busy)
        parts["tick_wait"].append(tick_wait)
        parts["overhead"].append(end_to_end - e["inference_s"] - busy - tick_wait)
        parts["camera_to_policy"].append(e["policy_arrival"] - e["camera_publish"])
        if all(k in e for k in ("ingest_base_arrival", "ingest_wrist_arrival", "frame_published")):
            paired = max(e["ingest_base_arrival"], e["ingest_wrist_arrival"])
            parts["camera_to_ingest"].append(paired - e["camera_publish"])
            parts["ingest_processing"].append(e["frame_published"] - paired)
            parts["ingest_to_policy"].append(e["policy_arrival"] - e["frame_published"])
            hops = (parts["camera_to_ingest"][-1] + parts["ingest_to_policy"][-1]
                    + e["chunk_arrival"] - e["worker_pick"] - e["inference_s"])
            parts["dds"].append(hops)
            parts["overhead_excluding_dds"].append(parts["overhead"][-1] - hops)
        if "stitch_s" in e:
            parts["stitch"].append(e["stitch_s"])
            parts["overhead_excluding_stitch"].append(parts["overhead"][-1] - e["stitch_s"])
        parts["policy_wake"].append(e["worker_pick"] - max(e["policy_arrival"], e["worker_wait_start"]))
        parts["policy_to_arm"].append(e["chunk_arrival"] - e["worker_pick"] - e["inference_s"])
        parts["arm_tick"].append(e["command_sent"] - e["tick_start"])
    return parts
