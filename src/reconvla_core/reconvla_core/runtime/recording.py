"""Teleop recording without ROS: episode naming, disk checks, the session state machine (what to
record and with which QoS: ``record_topics.py``).

The ``teleop_recorder`` node is glue around :class:`RecordingSession`: its rclpy
subscriptions (``raw=True``) hand serialized CDR bytes to :meth:`RecordingSession.record`,
its services call :meth:`start`, :meth:`stop` and :meth:`discard`, and its shutdown path
calls :meth:`close`. One episode = one rosbag2 directory written by
``reconvla_core.data.bag_writer.EpisodeBagWriter``::

    <output_dir>/episode_000012_20261125-181500_pick-up-the-red-block/
        metadata.yaml  episode_...mcap

State machine::

    IDLE --start(task)--> RECORDING --stop(success)--> IDLE
                          RECORDING --discard()-----> IDLE   (bag deleted)
    IDLE --discard()--> IDLE                          (deletes the episode stopped last, once)
    RECORDING --write error--> IDLE                   (bag closed as interrupted; on_fault called)
    any  --close()----> CLOSED                        (open bag finished with success=False)

A write error (full disk, failing drive) ends the episode at once: the bag is closed with
every message written so far, marked ``interrupted`` with the ``error`` in its episode info
(or, when the disk cannot take even that, left cut at its last whole MCAP chunk for
``reconvla bag recover``). It is reported once (``on_fault``, ``last_error``), the session
goes back to IDLE and the next ``start`` opens a new episode.

Thread safety: every public method takes one lock, so a multi-threaded executor may call
``record`` from several subscription callbacks while a service callback stops the episode.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from reconvla_core import __version__
from reconvla_core.runtime.record_topics import DEFAULT_LATCHED_TOPICS

logger = logging.getLogger(__name__)

EPISODE_PREFIX = "episode_"
_EPISODE_RE = re.compile(r"^episode_(\d{6,})(?:_|$)")
_SLUG_RE = re.compile(r"[^a-z0-9]+")
_GB = 1024**3


class RecordingError(RuntimeError):
    """A request the session cannot honour in its current state (start while recording, ...)."""


class InsufficientDiskSpaceError(RecordingError):
    """Less free space than ``min_free_gb`` where episodes are written."""


class RecorderState(enum.Enum):
    IDLE = "idle"
    RECORDING = "recording"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    """What one finished (or discarded) episode left behind."""

    index: int
    path: Path
    task: str
    success: bool
    discarded: bool
    message_counts: dict[str, int]
    duration_s: float
    info: dict[str, Any]
    error: str = ""  # why the episode ended early (a write error), "" for a normal stop

    @property
    def num_messages(self) -> int:
        return sum(self.message_counts.values())


class BagWriterLike(Protocol):
    """The part of ``EpisodeBagWriter`` the session uses (tests may pass a fake)."""

    message_counts: dict[str, int]

    def open(self) -> Any: ...
    def write_serialized(
        self, topic: str, msgtype: str, stamp_ns: int, cdr_bytes: bytes | memoryview
    ) -> None: ...
    def finish(self, episode_info: dict[str, Any] | None = None) -> dict[str, Any]: ...
    def abort(self, reason: str = "aborted") -> None: ...


# ---------------------------------------------------------------------------- plain functions
def slugify(text: str, max_len: int = 40) -> str:
    """Lower-case ASCII words joined by '-', at most ``max_len`` characters ('' for no words)."""
    slug = _SLUG_RE.sub("-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-")


def episode_dir_name(index: int, start_time_ns: int, task: str = "") -> str:
    """``episode_000012_20261125-181500_pick-up-the-red-block`` (UTC time, task slug optional)."""
    if index < 0:
        raise ValueError(f"episode index must be >= 0, got {index}")
    moment = _dt.datetime.fromtimestamp(start_time_ns / 1e9, tz=_dt.timezone.utc)
    name = f"{EPISODE_PREFIX}{index:06d}_{moment.strftime('%Y%m%d-%H%M%S')}"
    slug = slugify(task)
    return f"{name}_{slug}" if slug else name


def episode_index_of(path: str | Path) -> int | None:
    """The index in an episode directory name, or None for any other name."""
    match = _EPISODE_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def next_episode_index(output_dir: str | Path) -> int:
    """One more than the highest episode index already in ``output_dir`` (0 when there is none)."""
    root = Path(output_dir)
    if not root.is_dir():
        return 0
    indices = [i for i in (episode_index_of(p) for p in root.iterdir()) if i is not None]
    return max(indices) + 1 if indices else 0


def free_space_gb(path: str | Path) -> float:
    """Free space in GiB on the file system that holds ``path`` (or its nearest existing parent)."""
    probe = Path(path).expanduser().absolute()
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    return shutil.disk_usage(probe).free / _GB


def check_free_space(
    path: str | Path, min_free_gb: float, usage: Callable[[Path], float] = free_space_gb
) -> float:
    """Return the free GiB at ``path``; raise InsufficientDiskSpaceError below ``min_free_gb``."""
    free = usage(Path(path))
    if free < min_free_gb:
        raise InsufficientDiskSpaceError(
            f"only {free:.2f} GiB free at {path}, need at least {min_free_gb:.2f} GiB "
            "(free some space or lower min_free_gb)"
        )
    return free


def _default_writer_factory(path: Path) -> BagWriterLike:
    from reconvla_core.data.bag_writer import EpisodeBagWriter

    return EpisodeBagWriter(path)


# ---------------------------------------------------------------------------- the session
class RecordingSession:
    """Episodes of one recording session: one bag per episode, at most one open at a time.

    ``clock_ns`` gives wall-clock nanoseconds for names and metadata (the node passes its
    ROS clock); ``free_space`` is the disk probe (tests pass a fake); ``writer_factory``
    builds the bag writer for a new episode directory.
    """

    def __init__(
        self,
        output_dir: str | Path,
        *,
        min_free_gb: float = 2.0,
        operator: str = "",
        latched_topics: Iterable[str] = DEFAULT_LATCHED_TOPICS,
        writer_factory: Callable[[Path], BagWriterLike] = _default_writer_factory,
        clock_ns: Callable[[], int] = time.time_ns,
        free_space: Callable[[Path], float] = free_space_gb,
        software_version: str = f"reconvla_core {__version__}",
        on_fault: Callable[[EpisodeResult, str], None] | None = None,
    ) -> None:
        if min_free_gb < 0:
            raise ValueError(f"min_free_gb must be >= 0, got {min_free_gb}")
        self.output_dir = Path(output_dir).expanduser()
        self.min_free_gb = float(min_free_gb)
        self.operator = operator
        self.latched_topics = frozenset(latched_topics)
        self.software_version = software_version
        self._writer_factory = writer_factory
        self._clock_ns = clock_ns
        self._free_space = free_space
        self._lock = threading.RLock()
        self._state = RecorderState.IDLE
        self._writer: BagWriterLike | None = None
        self._path: Path | None = None
        self._index = -1
        self._task = ""
        self._instruction = ""
        self._start_ns = 0
        self._latched: dict[str, tuple[str, int, bytes]] = {}
        self._last_result: EpisodeResult | None = None
        self.dropped_errors = 0
        # on_fault(result, message): called once per episode ended by a write error (the node logs
        # it and publishes ~/status); without it the session logs the message itself.
        self._on_fault = on_fault
        self._last_error = ""
        self.write_errors = 0

    # -------------------------------------------------------------- introspection
    @property
    def state(self) -> RecorderState:
        return self._state

    @property
    def is_recording(self) -> bool:
        return self._state is RecorderState.RECORDING

    @property
    def current_path(self) -> Path | None:
        return self._path if self.is_recording else None

    @property
    def last_result(self) -> EpisodeResult | None:
        return self._last_result

    @property
    def last_error(self) -> str:
        """Why the last episode ended early ("" when it ended normally or none has ended)."""
        return self._last_error

    def message_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._writer.message_counts) if self._writer is not None else {}

    # -------------------------------------------------------------- transitions
    def start(self, task: str, instruction: str | None = None) -> Path:
        """Open a new episode bag. ``task`` is required; ``instruction`` defaults to it."""
        task = task.strip()
        with self._lock:
            if self._state is RecorderState.CLOSED:
                raise RecordingError("the recording session is closed")
            if self._state is RecorderState.RECORDING:
                raise RecordingError(f"an episode is already being recorded into {self._path}; stop it first")
            if not task:
                raise RecordingError("no task text: set the 'task' parameter or publish an instruction first")
            check_free_space(self.output_dir, self.min_free_gb, self._free_space)
            start_ns = int(self._clock_ns())
            index = next_episode_index(self.output_dir)
            path = self.output_dir / episode_dir_name(index, start_ns, task)
            writer = self._writer_factory(path)
            writer.open()
            self._writer, self._path, self._index = writer, path, index
            self._task, self._instruction, self._start_ns = task, (instruction or task).strip(), start_ns
            self._state = RecorderState.RECORDING
            self._last_error = ""
            # Latched topics (the instruction) seen before the start belong to this episode too.
            for topic, (msgtype, _, raw) in sorted(self._latched.items()):
                self._write_locked(topic, msgtype, start_ns, raw)
            if self._state is not RecorderState.RECORDING:  # the first write already failed
                raise RecordingError(self._last_error)
            logger.info("recording episode %d into %s (task: %s)", index, path, task)
            return path

    def record(self, topic: str, msgtype: str, stamp_ns: int, cdr_bytes: bytes | memoryview) -> bool:
        """Write one serialized message if an episode is open; returns whether it was written.

        Latched topics are also remembered while idle, for the next episode's start.
        """
        with self._lock:
            if topic in self.latched_topics:
                self._latched[topic] = (msgtype, int(stamp_ns), bytes(cdr_bytes))
            if self._state is not RecorderState.RECORDING:
                return False
            return self._write_locked(topic, msgtype, stamp_ns, cdr_bytes)

    def _write_locked(self, topic: str, msgtype: str, stamp_ns: int, cdr_bytes: bytes | memoryview) -> bool:
        assert self._writer is not None
        try:
            self._writer.write_serialized(topic, msgtype, max(int(stamp_ns), self._start_ns), cdr_bytes)
        except ValueError as exc:  # this message only (an unknown type): keep recording the others
            self.dropped_errors += 1
            if self.dropped_errors <= 5:
                logger.error("could not record a message on %s (%s): %s", topic, msgtype, exc)
            return False
        except OSError as exc:  # the storage failed (full disk, ...): end the episode cleanly
            self._end_on_write_error_locked(topic, exc)
            return False
        return True

    def _end_on_write_error_locked(self, topic: str, error: OSError) -> None:
        index, path = self._index, self._path
        note = f"ended by a write error on {topic}"
        try:
            result = self._finish_locked(success=False, note=note, interrupted=True, error=str(error))
            kept = f"the bag is closed with the {result.num_messages} messages written before it"
        except RecordingError as close_error:  # _finish_locked has reset the session
            result = self._last_result
            kept = str(close_error)
        assert result is not None
        self.write_errors += 1
        self._last_error = f"episode {index} stopped: write error on {topic} ({error}); {kept} ({path})"
        if self._on_fault is None:
            logger.error("%s", self._last_error)
            return
        try:
            self._on_fault(result, self._last_error)
        except Exception:  # a reporting failure must not take the subscription callback down
            logger.exception("on_fault handler failed")

    def stop(self, success: bool, note: str = "") -> EpisodeResult:
        """Finish the open episode with its metadata and close the bag."""
        with self._lock:
            if self._state is not RecorderState.RECORDING:
                if self._last_error:
                    raise RecordingError(f"no episode is being recorded: {self._last_error}")
                raise RecordingError("no episode is being recorded")
            return self._finish_locked(success=success, note=note)

    def discard(self) -> EpisodeResult:
        """Delete the open episode, or (when idle) the episode stopped last; either at most once."""
        with self._lock:
            if self._state is RecorderState.RECORDING:
                assert self._writer is not None and self._path is not None
                self._writer.abort("discarded by the operator")
                result = self._result_locked(success=False, discarded=True, info={})
                self._reset_locked()
            elif self._last_result is not None and not self._last_result.discarded:
                result = dataclasses.replace(self._last_result, discarded=True)
            else:
                raise RecordingError("nothing to discard: no episode is open and none was stopped since")
            if result.path.exists():
                shutil.rmtree(result.path)
            self._last_result = result
            logger.info("discarded episode %d (%s)", result.index, result.path)
            return result

    def close(self, note: str = "recorder shut down") -> EpisodeResult | None:
        """End the session; an open episode is finished (success=False) so its bag stays readable."""
        with self._lock:
            result = None
            if self._state is RecorderState.RECORDING:
                try:
                    result = self._finish_locked(success=False, note=note, interrupted=True)
                except RecordingError as error:  # reset already; the bag is left for bag recover
                    logger.error("%s", error)
                    result = self._last_result
            self._state = RecorderState.CLOSED
            return result

    # -------------------------------------------------------------- internals
    def _finish_locked(
        self, *, success: bool, note: str, interrupted: bool = False, error: str = ""
    ) -> EpisodeResult:
        """Close the bag and go back to IDLE, also when closing fails (then RecordingError says why)."""
        assert self._writer is not None
        stop_ns = int(self._clock_ns())
        info: dict[str, Any] = {
            "task": self._task,
            "instruction": self._instruction,
            "success": bool(success),
            "operator": self.operator,
            "software_version": self.software_version,
            "start_time": _iso(self._start_ns),
            "stop_time": _iso(max(stop_ns, self._start_ns)),
            "episode_index": self._index,
            "note": note,
            "interrupted": interrupted,
        }
        if error:
            info["error"] = error
        try:
            written = self._writer.finish(info)
        except Exception as exc:  # the disk cannot take the rest: the session must not stay stuck
            info.update(success=False, interrupted=True, error=error or str(exc))
            failed = self._result_locked(success=False, discarded=False, info=info, error=str(exc))
            self._last_result = failed
            self._reset_locked()
            self._last_error = f"episode {failed.index}: could not close {failed.path}: {exc}"
            raise RecordingError(self._last_error) from exc
        result = self._result_locked(success=bool(success), discarded=False, info=dict(written or info), error=error)
        self._last_result = result
        self._reset_locked()
        logger.info(
            "episode %d stopped (success=%s, %d messages)", result.index, success, result.num_messages
        )
        return result

    def _result_locked(
        self, *, success: bool, discarded: bool, info: dict[str, Any], error: str = ""
    ) -> EpisodeResult:
        assert self._writer is not None and self._path is not None
        return EpisodeResult(
            index=self._index,
            path=self._path,
            task=self._task,
            success=success,
            discarded=discarded,
            message_counts=dict(self._writer.message_counts),
            duration_s=max(0.0, (int(self._clock_ns()) - self._start_ns) / 1e9),
            info=info,
            error=error,
        )

    def _reset_locked(self) -> None:
        self._writer, self._path, self._index = None, None, -1
        self._task, self._instruction, self._start_ns = "", "", 0
        self._state = RecorderState.IDLE


def _iso(stamp_ns: int) -> str:
    moment = _dt.datetime.fromtimestamp(stamp_ns / 1e9, tz=_dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
