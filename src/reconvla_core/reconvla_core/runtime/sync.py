"""Pairing the base and wrist camera frames by stamp, plus rate / drop / age statistics.

``FramePairer.add(stream, stamp, frame, now)`` returns a ``FramePair`` as soon as the other
stream holds a frame whose stamp lies within ``tolerance_s``; frames that can no longer be paired
(older than a paired frame, pushed out of the small buffer, or too old for any future frame of
the other stream) are dropped and counted. Stamps are seconds (header stamps); ``now`` is the
arrival time on the same clock, used for ages and rates.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

STREAMS: tuple[str, ...] = ("base", "wrist")


class RateMeter:
    """Arrival rate over a sliding window of the last ``window`` events."""

    def __init__(self, window: int = 30) -> None:
        self._times: deque[float] = deque(maxlen=max(2, int(window)))

    def tick(self, now: float) -> None:
        self._times.append(now)

    def rate_hz(self, now: float | None = None, stale_after_s: float = 2.0) -> float:
        """Events per second; 0 when fewer than two events or the last is older than ``stale_after_s``."""
        if len(self._times) < 2:
            return 0.0
        if now is not None and now - self._times[-1] > stale_after_s:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


@dataclass
class StreamStats:
    """One input stream: counts, rate, latest stamp."""

    received: int = 0
    dropped: int = 0
    last_stamp: float = math.nan
    last_arrival: float = math.nan
    rate: RateMeter = field(default_factory=RateMeter)

    def record(self, stamp: float, now: float) -> None:
        self.received += 1
        self.last_stamp = stamp
        self.last_arrival = now
        self.rate.tick(now)

    def age_s(self, now: float) -> float:
        """How old the latest frame's stamp is at ``now`` (nan before the first frame)."""
        return now - self.last_stamp


@dataclass(frozen=True)
class FramePair:
    """A base and a wrist frame taken within the tolerance of each other."""

    stamp: float  # the older of the two stamps: the conservative observation time
    base: Any
    wrist: Any
    base_stamp: float
    wrist_stamp: float

    @property
    def skew_s(self) -> float:
        return abs(self.base_stamp - self.wrist_stamp)


class FramePairer:
    """Approximate-time pairing of two streams with small buffers."""

    def __init__(self, tolerance_s: float = 0.02, buffer_size: int = 4) -> None:
        if not (math.isfinite(tolerance_s) and tolerance_s >= 0):
            raise ValueError(f"tolerance_s must be >= 0, got {tolerance_s}")
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.tolerance_s = float(tolerance_s)
        self.buffer_size = int(buffer_size)
        self._buffers: dict[str, list[tuple[float, Any]]] = {name: [] for name in STREAMS}
        self.streams: dict[str, StreamStats] = {name: StreamStats() for name in STREAMS}
        self.pairs = 0
        self.pair_rate = RateMeter()
        self.max_skew_s = 0.0
        self._skew_sum = 0.0

    def _drop(self, stream: str, count: int) -> None:
        if count:
            self.streams[stream].dropped += count

    def add(self, stream: str, stamp: float, frame: Any, now: float) -> FramePair | None:
        """Add a frame of ``stream`` ("base" or "wrist"); returns a pair when one is complete."""
        if stream not in self._buffers:
            raise ValueError(f"unknown stream {stream!r}; expected one of {STREAMS}")
        other = "wrist" if stream == "base" else "base"
        self.streams[stream].record(stamp, now)
        mine, theirs = self._buffers[stream], self._buffers[other]
        # Frames of the other stream too old for this and any later frame of this stream.
        stale = bisect.bisect_left([s for s, _ in theirs], stamp - self.tolerance_s)
        self._drop(other, stale)
        del theirs[:stale]
        best = min(range(len(theirs)), key=lambda i: abs(theirs[i][0] - stamp), default=None)
        if best is not None and abs(theirs[best][0] - stamp) <= self.tolerance_s:
            other_stamp, other_frame = theirs[best]
            # Older frames of either stream can no longer pair with anything newer.
            self._drop(other, best)
            del theirs[: best + 1]
            older_mine = bisect.bisect_right([s for s, _ in mine], stamp)
            self._drop(stream, older_mine)
            del mine[:older_mine]
            frames = {stream: (stamp, frame), other: (other_stamp, other_frame)}
            pair = FramePair(
                stamp=min(stamp, other_stamp),
                base=frames["base"][1],
                wrist=frames["wrist"][1],
                base_stamp=frames["base"][0],
                wrist_stamp=frames["wrist"][0],
            )
            self.pairs += 1
            self.pair_rate.tick(now)
            self.max_skew_s = max(self.max_skew_s, pair.skew_s)
            self._skew_sum += pair.skew_s
            return pair
        bisect.insort(mine, (stamp, frame), key=lambda item: item[0])
        overflow = len(mine) - self.buffer_size
        if overflow > 0:
            self._drop(stream, overflow)
            del mine[:overflow]
        return None

    def diagnostics(self, now: float) -> dict[str, float]:
        """Flat numbers for a DiagnosticStatus: rates, drops, ages, skew."""
        values: dict[str, float] = {
            "pairs": float(self.pairs),
            "pair_rate_hz": self.pair_rate.rate_hz(now),
            "max_skew_ms": 1e3 * self.max_skew_s,
            "mean_skew_ms": 1e3 * self._skew_sum / self.pairs if self.pairs else 0.0,
        }
        for name, stats in self.streams.items():
            values[f"{name}_received"] = float(stats.received)
            values[f"{name}_dropped"] = float(stats.dropped)
            values[f"{name}_rate_hz"] = stats.rate.rate_hz(now)
            values[f"{name}_age_ms"] = 1e3 * stats.age_s(now)
        return values


class StateHistory:
    """The last joint states by stamp, to pair a camera frame with the state measured with it.

    A chunk planned from a state is anchored at that state's time: the action queue trims what the
    arm executed since then. Pairing a frame with whatever state arrived last anchors it at the
    frame's time instead, and a state that arrived late (a loaded machine) then starts the chunk
    behind the arm, which steps it back. ``nearest(stamp)`` returns the state closest in time.
    """

    def __init__(self, size: int = 64) -> None:
        if size < 1:
            raise ValueError(f"StateHistory size must be >= 1, got {size}")
        self.size = int(size)
        self._states: list[tuple[float, Any]] = []  # sorted by stamp

    def add(self, stamp: float, state: Any) -> None:
        """Add a state measured at ``stamp`` (seconds); a late one is inserted in stamp order."""
        bisect.insort(self._states, (stamp, state), key=lambda item: item[0])
        del self._states[:-self.size]

    def nearest(self, stamp: float) -> tuple[float, Any] | None:
        """``(state_stamp, state)`` closest to ``stamp``; None when empty."""
        if not self._states:
            return None
        stamps = [s for s, _ in self._states]
        right = bisect.bisect_left(stamps, stamp)
        candidates = [i for i in (right - 1, right) if 0 <= i < len(stamps)]
        best = min(candidates, key=lambda i: abs(stamps[i] - stamp))
        return self._states[best]

    def __len__(self) -> int:
        return len(self._states)
