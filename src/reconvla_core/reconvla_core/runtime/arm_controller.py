"""The arm_command control logic without ROS: chunks in, one safe command per control period out.

``ArmController`` owns the action queue, the safety filter and the arm backend, and holds what
used to live in the node's timer: reading feedback, choosing where the target comes from (the
policy's chunks, or the home pose while homing), the auto-enable handshake with the backend,
sending, and the counters the node publishes on ``~/status`` and /diagnostics. The
``arm_command`` node only converts messages, runs the timer and serves the services, each of
which is one call here.

Per control period, ``tick(now)``:

1. reads the backend's feedback (a read error counts and holds: the observation watchdog of
   the safety filter stops the arm once the feedback is stale) and, when asked for, the leader
   arm's command;
2. picks the target: the home pose while homing, otherwise the queue's sample at ``now``; with
   operator interventions on (``config.intervention``), ``runtime.intervention.InterventionGate``
   chooses between that sample and the leader arm's command (takeover on request or when the
   operator moves the leader, a handover without a jump, handback once the policy agrees with
   the arm). Only the policy's targets are subject to the chunk watchdog;
3. passes it through ``SafetyFilter.step`` (limits, speed, watchdogs, enable/estop latch);
4. with ``auto_enable`` enables the backend the first time the filter lets a command through
   (the filter enables itself on the first feedback; the arm must follow or both go back to
   disabled);
5. sends the command, finishes homing once the home pose is commanded, and lets the backend
   advance (in-process simulators step their physics here; hardware backends do nothing).

Times are plain float seconds of one clock (the node passes its ROS clock) plus, optionally, a
monotonic ``wall`` time for the tick statistics. One thread: the node calls every method from
one mutually exclusive callback group.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from reconvla_core.piper import ACTION_DIM, GRIPPER_MAX
from reconvla_core.runtime.action_queue import (
    DROP_REASONS,
    ActionChunk,
    ActionQueue,
    ActionQueueConfig,
    ChunkReport,
)
from reconvla_core.runtime.backend import ArmBackend, ArmFeedback, missing_backend_methods
from reconvla_core.runtime.intervention import CommandSource, InterventionConfig, InterventionGate
from reconvla_core.runtime.safety import ArmMode, SafetyCommand, SafetyConfig, SafetyFilter

logger = logging.getLogger(__name__)
_NUMBERS = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")

DEFAULT_HOME = (0.0, 0.3, -0.3, 0.0, 0.3, 0.0, GRIPPER_MAX)
# Why a chunk was not executed, beyond the queue's own reasons (DROP_REASONS).
CONTROLLER_DROP_REASONS = ("out_of_limits", "homing")


class LeaderSource(Protocol):
    """Where the leader arm's command comes from: the backend itself (teleop on one bus) or, for
    operator interventions, whatever reads the leader arm (arm_command: the leader topic)."""

    def read_leader_command(self) -> ArmFeedback | None: ...


class ControllerLog(Protocol):
    """Where the controller reports (``ThrottledLog`` over Python's or the node's rclpy logger)."""

    def info(self, message: str) -> None: ...

    def warning(self, message: str, throttle_s: float = 0.0) -> None: ...

    def error(self, message: str, throttle_s: float = 0.0) -> None: ...


class ThrottledLog:
    """ControllerLog on any logger with ``info`` / ``warning`` / ``error(message)`` (Python logging, a
    node's rclpy logger), throttling each message text to once per ``throttle_s``. The throttling is
    ours, not rclpy's: rclpy throttles per call site and refuses a call site whose filter settings
    change between calls, and every controller message would pass through the same one."""

    def __init__(self, log: Any = logger, clock: Any = time.monotonic) -> None:
        self._log = log
        self._clock = clock
        self._last: dict[str, float] = {}

    def _due(self, message: str, throttle_s: float) -> bool:
        if throttle_s <= 0:
            return True
        key = _NUMBERS.sub("#", message)  # "joint5 target 1.197 rad" and "... 1.207 rad" are one message
        now = self._clock()
        if now - self._last.get(key, -float("inf")) < throttle_s:
            return False
        self._last[key] = now
        return True

    def info(self, message: str) -> None:
        self._log.info(message)

    def warning(self, message: str, throttle_s: float = 0.0) -> None:
        if self._due(message, throttle_s):
            self._log.warning(message)

    def error(self, message: str, throttle_s: float = 0.0) -> None:
        if self._due(message, throttle_s):
            self._log.error(message)


@dataclass(frozen=True)
class ArmControllerConfig:
    """Everything the controller needs besides the backend (the node builds it from parameters)."""

    safety: SafetyConfig = field(default_factory=SafetyConfig)
    queue: ActionQueueConfig = field(default_factory=ActionQueueConfig)
    home: tuple[float, ...] = DEFAULT_HOME  # joint1..joint6 rad + gripper m, inside the soft limits
    enable_timeout_s: float = 2.0  # how long backend.enable may wait for the arm to report enabled
    read_leader: bool = False  # poll the leader source every period (teleop)
    intervention: InterventionConfig | None = None  # operator interventions with the leader arm (reads it)

    def __post_init__(self) -> None:
        if len(self.home) != ACTION_DIM:
            raise ValueError(f"home_position needs {ACTION_DIM} values (6 joints rad + gripper m)")
        if not self.enable_timeout_s > 0:
            raise ValueError(f"enable_timeout must be > 0 s, got {self.enable_timeout_s}")
        SafetyFilter(self.safety).home_target(self.home)  # ValueError when outside the soft limits


@dataclass(frozen=True)
class ChunkOutcome:
    """What became of one chunk: ``reason`` is "accepted" or why it was dropped."""

    accepted: bool
    reason: str
    report: ChunkReport | None = None  # the queue's report (None when rejected before the queue)
    first_step: int = 0  # accepted: the first chunk step still ahead of the arm (the rest was trimmed)
    violating_steps: np.ndarray | None = None  # out_of_limits: which steps lie beyond a soft limit


@dataclass(frozen=True)
class TickOutput:
    """One control period: what was sent and which readings are new (for the node to publish)."""

    command: SafetyCommand | None  # sent to the backend (None: nothing was sent)
    feedback: ArmFeedback | None  # the arm's feedback, when it is newer than the last one returned
    leader: ArmFeedback | None  # the leader's command, when newer than the last one returned
    source: str = CommandSource.POLICY.value  # who commands the arm: policy | handover | leader | handback
    leader_drives: bool = False  # the operator's leader arm commanded this period (an intervention)
    event: str | None = None  # the gate's switch this period: takeover, auto_takeover, leader_drives, ...


class ArmController:
    """Control loop of one arm (see the module docstring)."""

    def __init__(self, backend: ArmBackend, config: ArmControllerConfig | None = None,
                 log: ControllerLog | None = None, leader: LeaderSource | None = None) -> None:
        """``leader``: where the leader's command is read (default: ``backend.read_leader_command``)."""
        missing = missing_backend_methods(backend)
        if missing:
            raise TypeError(f"{type(backend).__name__} is not an ArmBackend: it lacks {', '.join(missing)}")
        self.backend = backend
        self.leader_source: LeaderSource = leader if leader is not None else backend
        self.config = config or ArmControllerConfig()
        self.log: ControllerLog = log or ThrottledLog()
        self.safety = SafetyFilter(self.config.safety)
        self.queue = ActionQueue(self.config.queue)
        self.dt = self.config.safety.dt
        self.home = np.array(self.config.home, dtype=np.float64)
        self.homing = False
        self.starving = False  # an ERROR was logged for the current spell without a usable chunk
        self.last_report: ChunkReport | None = None
        # chunks: executed (accepted into the queue); dropped_*: by reason; bad_chunks: malformed.
        self.counts: dict[str, int] = {"chunks": 0, "bad_chunks": 0, "sent": 0, "send_errors": 0,
                                       "feedback_errors": 0, "missed_ticks": 0, "ticks": 0}
        self.counts.update({f"dropped_{reason}": 0 for reason in DROP_REASONS + CONTROLLER_DROP_REASONS})
        self.tick_ms: deque[float] = deque(maxlen=300)
        self._backend_enabled = False  # the backend was enabled since the last disable / estop
        self._closed = False
        self._last_feedback_stamp: float | None = None  # taken by the safety filter
        self._returned_feedback_stamp: float | None = None  # handed to the caller by tick()
        self._leader_stamp: float | None = None
        self._leader_seen: float | None = None  # when (our clock) the current leader reading arrived
        self._last_wall: float | None = None
        self.gate = InterventionGate(self.config.intervention) if self.config.intervention is not None else None
        self._reads_leader = self.config.read_leader or self.gate is not None

    def connect(self) -> None:
        self.backend.connect()

    # --- inputs -------------------------------------------------------------------------------
    def note_bad_chunk(self, reason: str) -> None:
        """A chunk message that could not be converted (counted; the node logs why)."""
        self.counts["bad_chunks"] += 1
        self.log.warning(f"dropping action chunk: {reason}", throttle_s=5.0)

    def push_chunk(self, chunk: ActionChunk, now: float) -> ChunkOutcome:
        """Queue a valid chunk, or drop it (out of limits: rejected whole, never clamped)."""
        violation = self.safety.limit_violation(chunk.actions)
        if violation is not None:
            self.counts["dropped_out_of_limits"] += 1
            self.log.error(f"rejecting action chunk: {violation}", throttle_s=1.0)
            return ChunkOutcome(False, "out_of_limits", violating_steps=self.safety.violating_steps(chunk.actions))
        if self.homing:
            self.counts["dropped_homing"] += 1
            return ChunkOutcome(False, "homing")
        report = self.queue.push_report(chunk, now)
        self.last_report = report
        if not report.accepted:
            self.counts[f"dropped_{report.reason}"] += 1
            self.log.warning(report.describe(), throttle_s=1.0)
            return ChunkOutcome(False, report.reason, report)
        self.counts["chunks"] += 1
        self.safety.note_chunk(now)
        if self.starving:
            self.starving = False
            self.log.info(f"executing again: {report.describe()}")
        return ChunkOutcome(True, "accepted", report, first_step=min(report.trimmed_steps, len(chunk.actions) - 1))

    def read_feedback(self, now: float) -> ArmFeedback | None:
        """The backend's feedback; fresh feedback goes to the safety filter (a read error holds)."""
        try:
            feedback = self.backend.read_state()
        except Exception as error:  # a bus read error: no fresh feedback, the observation watchdog holds
            self.counts["feedback_errors"] += 1
            self.log.error(f"reading arm feedback failed: {error}", throttle_s=2.0)
            return None
        if feedback is not None and feedback.source_stamp != self._last_feedback_stamp:
            if self.safety.observe(feedback.positions, now):
                self._last_feedback_stamp = feedback.source_stamp
        return feedback

    def _read_leader(self) -> ArmFeedback | None:
        try:
            return self.leader_source.read_leader_command()
        except Exception as error:  # the leader is an input like any other: a read error is no reading
            self.log.error(f"reading the leader arm failed: {error}", throttle_s=2.0)
            return None

    # --- the control period -------------------------------------------------------------------
    def tick(self, now: float, wall: float | None = None) -> TickOutput:
        """One control period at ``now`` (see the module docstring)."""
        if self._closed:
            return TickOutput(None, None, None)
        started = time.monotonic()
        wall = started if wall is None else wall
        if self._last_wall is not None and wall - self._last_wall > 1.5 * self.dt:
            self.counts["missed_ticks"] += int(round((wall - self._last_wall) / self.dt)) - 1
        self._last_wall = wall
        self.counts["ticks"] += 1
        feedback = self.read_feedback(now)
        leader = self._read_leader() if self._reads_leader else None
        new_leader = None
        if leader is not None and leader.source_stamp != self._leader_stamp:
            self._leader_stamp = leader.source_stamp
            self._leader_seen = now  # the gate judges staleness on our clock, not the source's
            new_leader = leader
        source, event = CommandSource.POLICY, None
        if self.homing:
            target, require_chunk = self.home, False
            self.queue.sample(now)  # keep the queue's clock moving; its actions are not used
        else:
            target, require_chunk = self.queue.sample(now), True
            if self.gate is not None:
                gated = self.gate.update(now, self.safety.measured, None if leader is None else leader.positions,
                                         leader_stamp=self._leader_seen, policy_target=target)
                source, event = gated.source, gated.event
                # Only the policy's targets come from chunks; the operator may drive when it has stopped.
                target, require_chunk = gated.target, source is CommandSource.POLICY
                if event is not None:
                    self.log.info(f"intervention: {event} (source {source.value})")
        command = self.safety.step(now, target, require_chunk=require_chunk)
        if target is None and not self.homing and source is CommandSource.POLICY:
            self._check_starvation(now)
        if command is not None and not self._backend_enabled and not self._auto_enable_backend():
            command = None  # auto_enable: the filter enabled itself on first feedback, the arm did not
        if command is not None:
            self._send(command)
            if self.homing and np.allclose(command.positions, self.home, atol=1e-4):
                self.homing = False
                self.queue.clear(now)  # chunks observed while homing describe a moving arm
                self.log.info("home reached")
        self.backend.advance(self.dt)
        new_feedback = None
        if feedback is not None and feedback.source_stamp != self._returned_feedback_stamp:
            self._returned_feedback_stamp = feedback.source_stamp
            new_feedback = feedback
        self.tick_ms.append((time.monotonic() - started) * 1e3)
        return TickOutput(command, new_feedback, new_leader, source.value, source is CommandSource.LEADER, event)

    def _send(self, command: SafetyCommand) -> None:
        try:
            self.backend.send(command.positions, command.speed_percent)
        except Exception as error:  # a bus write error: counted; the next period tries again
            self.counts["send_errors"] += 1
            self.log.error(f"backend send failed: {error}", throttle_s=2.0)
            return
        self.counts["sent"] += 1

    def _auto_enable_backend(self) -> bool:
        """Enable the backend for a filter that enabled itself (auto_enable); disable both on failure."""
        if self.backend.enable(float(self.config.enable_timeout_s)):
            self._backend_enabled = True
            self.log.info("auto-enabled")
            return True
        self.safety.disable()
        self.log.error("auto-enable failed: the arm did not report enabled")
        return False

    def _received_chunks(self) -> int:
        return self.counts["chunks"] + sum(self.counts[f"dropped_{r}"] for r in DROP_REASONS + ("out_of_limits",))

    def _check_starvation(self, now: float) -> None:
        """One ERROR per spell in which the enabled arm holds because no usable chunk arrives."""
        if self.starving or self.safety.mode is not ArmMode.ENABLED or self.homing:
            return
        if self._received_chunks() == 0:
            return  # the policy has not produced anything yet (model loading): diagnostics say so
        starved = self.queue.starved_s(now)
        if starved <= self.config.safety.chunk_timeout_s:
            return
        self.starving = True
        last = self.last_report.describe() if self.last_report is not None else "none"
        self.log.error(
            f"arm holding: no usable action chunk for {min(starved, 1e6):.1f} s "
            f"({self.counts['chunks']} executed, {self.dropped()} dropped: {self.drop_summary()}); "
            f"last chunk: {last}. The policy's observation-to-chunk latency must stay below "
            f"max_chunk_age ({self.config.queue.max_chunk_age_s} s).")

    # --- operator requests (the node's services) ----------------------------------------------
    def enable(self, now: float, on: bool) -> tuple[bool, str]:
        """Enable (after reading fresh feedback) or disable motion. Queued chunks are dropped."""
        self.queue.clear(now)  # chunks observed before this are not executed
        self.homing = False
        if not on:
            self.safety.disable()
            self.backend.disable()
            self._backend_enabled = False
            if self.gate is not None:
                self.gate.rearm()
            return True, "disabled: no motion commands"
        self.read_feedback(now)
        ok, message = self.safety.enable(now)
        if ok and not self.backend.enable(float(self.config.enable_timeout_s)):
            self.safety.disable()
            ok, message = False, f"the arm did not report enabled within {self.config.enable_timeout_s} s"
        self._backend_enabled = ok
        self.log.info(f"enable: {message}")
        return ok, message

    def estop(self, now: float) -> tuple[bool, str]:
        """Latch the emergency stop in the filter and tell the backend (its failure is logged)."""
        self.safety.estop()
        self.queue.clear(now)
        self.homing = False
        self._backend_enabled = False
        if self.gate is not None:
            self.gate.rearm()
        try:
            self.backend.emergency_stop()
        except Exception as error:
            self.log.error(f"backend emergency stop failed: {error}")
        return True, "emergency stop latched: reset, then enable"

    def reset(self) -> tuple[bool, str]:
        """Clear the software estop latch only (the SDK's resume frame would cut motor power)."""
        return self.safety.reset()

    def start_homing(self, now: float) -> tuple[bool, str]:
        """Move to the home pose through the same filter, without chunks; refused unless enabled."""
        if self.safety.mode is not ArmMode.ENABLED:
            return False, f"cannot home while {self.safety.mode.value}: enable first"
        if self.gate is not None and self.gate.source is not CommandSource.POLICY:
            return False, (f"cannot home while the operator has the arm (source {self.gate.source.value}): "
                           "hand back first")
        self.queue.clear(now)
        self.homing = True
        return True, f"homing to {self.home.tolist()}"

    def request_takeover(self) -> tuple[bool, str]:
        """The operator asks for the arm: the arm holds until the leader agrees with it, then the leader drives."""
        if self.gate is None:
            return False, "operator interventions are off (start arm_command with interventions:=true)"
        if not self.gate.request_takeover():
            return False, f"the operator has the arm already (source {self.gate.source.value})"
        tol = self.gate.config
        return True, (f"bring the leader onto the follower (within {tol.agree_tol_rad} rad per joint, "
                      f"{tol.agree_tol_m * 1000:.0f} mm gripper); the arm holds until they agree")

    def request_handback(self) -> tuple[bool, str]:
        """The operator gives the arm back: it holds until a policy target agrees with it."""
        if self.gate is None:
            return False, "operator interventions are off (start arm_command with interventions:=true)"
        if not self.gate.request_handback():
            return False, f"the policy has the arm already (source {self.gate.source.value})"
        return True, "the arm holds until the policy's target agrees with it, then the policy drives"

    @property
    def source(self) -> str:
        """Who commands the arm now: policy | handover | leader | handback (policy without a gate)."""
        return self.gate.source.value if self.gate is not None else CommandSource.POLICY.value

    # --- diagnostics --------------------------------------------------------------------------
    def dropped(self) -> int:
        return sum(v for k, v in self.counts.items() if k.startswith("dropped_"))

    def drop_summary(self) -> str:
        return ", ".join(f"{k[len('dropped_'):]} {v}" for k, v in self.counts.items()
                         if k.startswith("dropped_") and v) or "none"

    def diagnostics_values(self, now: float) -> dict[str, Any]:
        """Every counter and state, flat (the node's /diagnostics values and ``~/status`` JSON)."""
        c = self.safety.counters
        values: dict[str, Any] = {"mode": self.safety.mode.value, "homing": self.homing,
                                  "hold_reason": self.safety.hold_reason(now, self.source == "policy").value}
        if self.gate is not None:
            values.update({"source": self.gate.source.value, "interventions": self.gate.segments})
        values.update(self.counts)
        values.update({f"holds_{k}": v for k, v in c.holds.items()})
        values.update({"clipped": c.clipped, "rate_limited": c.rate_limited, "rejected_targets": c.rejected_targets,
                       "out_of_limit_targets": c.out_of_limits, "dropped_chunks": self.dropped(),
                       "queue_remaining_s": self.queue.remaining_s(now),
                       "late_steps": self.queue.stats.late_steps})
        report = self.last_report
        if report is not None:
            values.update({"last_chunk": report.reason, "last_chunk_age_s": report.age_s,
                           "last_chunk_horizon_s": report.horizon_s,
                           "last_chunk_skipped_idle_s": report.skipped_idle_s,
                           "last_chunk_trimmed_steps": report.trimmed_steps})
        if self.tick_ms:
            values["tick_ms_max"] = float(max(self.tick_ms))
        bad = getattr(self.backend, "bad_feedback", None)  # optional: backends that parse messages count
        if bad is not None:
            values["bad_feedback"] = bad
        return values

    def health(self, values: dict[str, Any]) -> tuple[str, str]:
        """(level, message) for /diagnostics: level is "ok", "warn" or "error"."""
        mode = self.safety.mode
        if mode is ArmMode.ESTOPPED:
            return "error", "emergency stop latched"
        if self.safety.measured is None:
            return "warn", "no arm feedback"
        if mode is ArmMode.DISABLED:
            return "ok", "disabled"
        if self.starving:
            return "error", (f"holding: no usable action chunk ({values['dropped_chunks']} dropped: "
                             f"{self.drop_summary()})")
        if values["hold_reason"] != "none":
            return "warn", f"holding: {values['hold_reason']}"
        if self.source != CommandSource.POLICY.value:
            return "ok", f"operator intervention: {self.source}"
        return "ok", "executing"

    def close(self) -> None:
        """Stop ticking and close the backend (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.backend.close()
