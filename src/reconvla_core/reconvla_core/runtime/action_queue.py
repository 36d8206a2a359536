"""The action-chunk execution queue that arm_command samples at its control rate.

A chunk is K actions (7-vectors: joints rad + gripper m) timed relative to the observation they
were predicted from: step i is meant for ``stamp + offsets[i]``. The queue keeps one absolute
timeline and answers ``sample(now)``: the action for this control tick, linearly interpolated
between the chunk steps around ``now`` (or the latest step at or before ``now`` with
``interpolate=False``). Steps whose time has passed are dropped; a chunk that is entirely in the
past is rejected as stale.

A new chunk either replaces the queued steps from its first step on (``mode="replace"``) or is
cross-faded into them (``mode="blend"``): over the overlap (or ``blend_s`` seconds) starting at
``max(now, first new step)`` the weight of the new chunk rises linearly from 0 to 1, so the
trajectory is continuous at the switch. When the timeline ends the queue is empty and
``sample`` returns None (the safety filter then holds): that is the watchdog.

Thread-safe: the node pushes from a subscription callback and samples from its timer.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reconvla_core.piper import ACTION_DIM

logger = logging.getLogger(__name__)

QUEUE_MODES = ("replace", "blend")


@dataclass(frozen=True)
class ActionQueueConfig:
    """How chunks are merged and sampled."""

    mode: str = "blend"  # "replace" | "blend"
    blend_s: float = 0.0  # cross-fade duration in s; 0 = the whole overlap of old and new
    interpolate: bool = True  # linear between steps; False = zero-order hold of the latest step
    single_step_s: float = 0.1  # how long the last step of a 1-step chunk stays valid

    def __post_init__(self) -> None:
        if self.mode not in QUEUE_MODES:
            raise ValueError(f"ActionQueueConfig.mode must be one of {QUEUE_MODES}, got {self.mode!r}")
        if not (math.isfinite(self.blend_s) and self.blend_s >= 0):
            raise ValueError(f"ActionQueueConfig.blend_s must be >= 0, got {self.blend_s}")
        if not (math.isfinite(self.single_step_s) and self.single_step_s > 0):
            raise ValueError(f"ActionQueueConfig.single_step_s must be > 0, got {self.single_step_s}")


@dataclass(frozen=True)
class ActionChunk:
    """K actions predicted from the observation taken at ``stamp`` (seconds)."""

    stamp: float
    offsets: np.ndarray  # (K,) s after stamp, strictly increasing
    actions: np.ndarray  # (K, 7)

    @classmethod
    def from_rate(cls, stamp: float, actions: np.ndarray | Sequence[Sequence[float]], rate_hz: float) -> ActionChunk:
        """Step i at ``stamp + i / rate_hz`` (the first action is for the observation time)."""
        array = np.asarray(actions, dtype=np.float64)
        return cls(stamp, np.arange(len(array), dtype=np.float64) / float(rate_hz), array)

    def validated(self) -> ActionChunk:
        """This chunk as float64 arrays; ValueError naming the problem if it is malformed."""
        actions = np.asarray(self.actions, dtype=np.float64)
        offsets = np.asarray(self.offsets, dtype=np.float64).reshape(-1)
        if actions.ndim != 2 or actions.shape[1] != ACTION_DIM or actions.shape[0] == 0:
            raise ValueError(f"chunk actions must have shape (K>0, {ACTION_DIM}), got {actions.shape}")
        if offsets.shape != (actions.shape[0],):
            raise ValueError(f"chunk has {actions.shape[0]} actions but {offsets.shape[0]} time offsets")
        if not np.all(np.isfinite(actions)):
            raise ValueError("chunk contains non-finite actions (NaN or inf)")
        if not (np.all(np.isfinite(offsets)) and math.isfinite(self.stamp)):
            raise ValueError("chunk stamp or time offsets are not finite")
        if np.any(np.diff(offsets) <= 0):
            raise ValueError("chunk time offsets must be strictly increasing")
        return ActionChunk(float(self.stamp), offsets, actions)


@dataclass
class QueueStats:
    """Totals for diagnostics."""

    chunks_accepted: int = 0
    chunks_rejected: int = 0  # malformed
    chunks_stale: int = 0  # every step already in the past on arrival
    late_steps: int = 0  # steps of accepted chunks whose time had passed on arrival


class ActionQueue:
    """Absolute-time action timeline fed with chunks and sampled once per control tick."""

    def __init__(self, config: ActionQueueConfig | None = None) -> None:
        self.config = config or ActionQueueConfig()
        self._times = np.zeros(0)
        self._actions = np.zeros((0, ACTION_DIM))
        self._end = -math.inf  # the timeline is valid until here
        self._lock = threading.Lock()
        self.stats = QueueStats()

    # --- evaluation on a timeline -------------------------------------------------------------
    def _evaluate(self, times: np.ndarray, actions: np.ndarray, end: float, t: float) -> np.ndarray | None:
        if len(times) == 0 or t >= end:
            return None
        i = int(np.searchsorted(times, t, side="right")) - 1  # last step at or before t
        if i < 0:
            return actions[0].copy()  # the timeline starts in the future: head for its first step
        if not self.config.interpolate or i + 1 >= len(times):
            return actions[i].copy()
        w = (t - times[i]) / (times[i + 1] - times[i])
        return (1.0 - w) * actions[i] + w * actions[i + 1]

    # --- public API ---------------------------------------------------------------------------
    def push(self, chunk: ActionChunk, now: float) -> int:
        """Merge a chunk; returns how many of its steps lie at or after ``now``.

        Raises ValueError for a malformed chunk (counted in stats.chunks_rejected).
        """
        try:
            chunk = chunk.validated()
        except ValueError:
            self.stats.chunks_rejected += 1
            raise
        times = chunk.stamp + chunk.offsets
        step = float(np.median(np.diff(times))) if len(times) > 1 else self.config.single_step_s
        end = float(times[-1] + step)
        if end <= now:
            self.stats.chunks_stale += 1
            logger.debug("action queue: stale chunk (ends %.3f s before now)", now - end)
            return 0
        actions = chunk.actions.copy()
        with self._lock:
            if self.config.mode == "blend" and len(self._times) and self._end > now:
                start = max(now, float(times[0]))
                overlap_end = min(self._end, end)
                duration = self.config.blend_s or (overlap_end - start)
                for k, t in enumerate(times):
                    old = self._evaluate(self._times, self._actions, self._end, float(t))
                    if old is None:
                        continue
                    w = 1.0 if duration <= 0 else float(np.clip((t - start) / duration, 0.0, 1.0))
                    actions[k] = (1.0 - w) * old + w * actions[k]
            keep = self._times < times[0]  # queued steps before the new chunk begins stay
            self._times = np.concatenate([self._times[keep], times])
            self._actions = np.concatenate([self._actions[keep], actions])
            self._end = end
            self._prune(now)
            late = int(np.sum(times < now))
        self.stats.chunks_accepted += 1
        self.stats.late_steps += late
        return len(times) - late

    def _prune(self, now: float) -> None:
        """Drop steps that are over: everything before the last step at or before ``now``."""
        i = int(np.searchsorted(self._times, now, side="right")) - 1
        if i > 0:
            self._times = self._times[i:]
            self._actions = self._actions[i:]
        if now >= self._end:
            self._times = np.zeros(0)
            self._actions = np.zeros((0, ACTION_DIM))

    def sample(self, now: float) -> np.ndarray | None:
        """The action for the control tick at ``now``, or None when the queue has run dry."""
        with self._lock:
            value = self._evaluate(self._times, self._actions, self._end, now)
            self._prune(now)
        return value

    def clear(self) -> None:
        """Forget every queued step (estop, disable, home)."""
        with self._lock:
            self._times = np.zeros(0)
            self._actions = np.zeros((0, ACTION_DIM))
            self._end = -math.inf

    def remaining_s(self, now: float) -> float:
        """Seconds of actions left at ``now`` (0 when empty)."""
        with self._lock:
            return max(0.0, self._end - now) if len(self._times) else 0.0

    def starved_s(self, now: float) -> float:
        """Seconds since the queue ran dry (0 while it holds actions; inf if it never held any)."""
        with self._lock:
            if len(self._times) and now < self._end:
                return 0.0
            return now - self._end

    def __len__(self) -> int:
        with self._lock:
            return len(self._times)
