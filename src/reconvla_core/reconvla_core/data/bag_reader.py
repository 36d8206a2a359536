"""Read one episode from a rosbag2 directory (MCAP or sqlite3) and align it onto the dataset fps.

Two passes over the bag keep memory flat for long episodes:

1. :func:`read_episode` reads the timestamps of every stream, and of the messages only those it
   needs (joint states and gaze boxes nearest to the frame grid, the instruction, the episode
   info), and aligns the streams onto the grid ``t0 + k / fps`` (``align.py``).
2. :meth:`BagEpisode.iter_frames` reads the selected camera frames and yields them in frame
   order, decoded to HxWx3 uint8 RGB.

Who does what: ``bag_storage.py`` reads messages by topic and position (the ``mcap`` library,
sqlite3, or a ``rosbags`` scan), ``bag_messages.py`` decodes them, ``align.py`` does the time
alignment; this module ties them together.

Time base: the bag's log (receive) time by default, which every stream shares; the header stamps
of the cameras and joint states can be used instead (``stamp_source="header"``) when all drivers
stamp with the same clock.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reconvla_core import interfaces as itf
from reconvla_core.data.align import (
    REQUIRED_ROLES,
    AlignConfig,
    AlignmentError,
    align_streams,
    latest_flags,
    nearest_within,
)
from reconvla_core.data.bag_messages import (
    decode_data,
    decode_gaze,
    decode_joints,
    deserialize,
    header_stamp_ns,
    image_to_rgb,
    parse_image_cdr,
)
from reconvla_core.data.bag_storage import BagError, BagStorage, open_storage
from reconvla_core.data.bag_writer import EPISODE_INFO_CUSTOM_KEY, IMAGE_TYPE, JOINT_STATE_TYPE

__all__ = ["AlignConfig", "BagEpisode", "BagError", "BagTopics", "MissingTopicError", "read_episode"]

logger = logging.getLogger(__name__)

_CAMERA_ROLES = ("base_image", "wrist_image")
_EXPECTED_TYPES = {"base_image": IMAGE_TYPE, "wrist_image": IMAGE_TYPE,
                   "follower_state": JOINT_STATE_TYPE, "leader_command": JOINT_STATE_TYPE}
_NO_BOX = np.array([0, 0, 1, 1, 0], dtype=np.float32)  # the whole image, not valid


class MissingTopicError(BagError):
    """A topic the conversion needs is not in the bag."""

    def __init__(self, bag: str | Path, topic: str, role: str, available: Sequence[str]) -> None:
        self.topic = topic
        self.role = role
        listing = ", ".join(sorted(available)) or "none"
        super().__init__(bag, f"missing topic {topic} ({role}); the bag has: {listing}")


@dataclass(frozen=True)
class BagTopics:
    """Topic names the reader looks for. Defaults: the real drivers' names (the simulator uses them too)."""

    base_image: str = itf.BASE_IMAGE_TOPIC
    wrist_image: str = itf.WRIST_IMAGE_TOPIC
    follower_state: str = itf.FOLLOWER_STATE_TOPIC
    leader_command: str = itf.LEADER_COMMAND_TOPIC
    instruction: str = itf.INSTRUCTION_TOPIC
    gaze_box: str = itf.GAZE_BOX_TOPIC
    episode_info: str = itf.EPISODE_INFO_TOPIC
    intervention: str = itf.INTERVENTION_TOPIC  # optional (std_msgs/Bool): operator interventions
    relabelled: str = itf.RELABELLED_TOPIC  # optional (std_msgs/Bool): expert labels of policy-driven states

    @classmethod
    def from_overrides(cls, overrides: Sequence[str] | dict[str, str] | None) -> BagTopics:
        """``["base_image=/cam/image", ...]`` or a dict -> BagTopics; unknown roles raise ValueError."""
        if not overrides:
            return cls()
        pairs = overrides.items() if isinstance(overrides, dict) else (_split_pair(item) for item in overrides)
        values: dict[str, str] = {}
        valid = set(cls.__dataclass_fields__)
        for role, topic in pairs:
            if role not in valid:
                raise ValueError(f"unknown topic role {role!r}; choose from {', '.join(sorted(valid))}")
            values[role] = topic
        return cls(**values)


def _split_pair(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"topic override {item!r} must look like role=/topic/name")
    role, topic = item.split("=", 1)
    return role.strip(), topic.strip()


@dataclass
class BagEpisode:
    """One aligned episode. Arrays have one row per kept frame; images are read lazily."""

    path: Path
    topics: BagTopics
    fps: float
    timestamps: np.ndarray  # (T,) float64 seconds from the first frame
    stamps_ns: np.ndarray  # (T,) int64 grid times (ns, bag time base)
    state: np.ndarray  # (T, 7) float32 follower
    action: np.ndarray  # (T, 7) float32 leader command
    gaze: np.ndarray | None  # (T, 5) float32 [x1, y1, x2, y2, valid] from the gaze topic, or None
    info: dict[str, Any]  # episode info (EPISODE_INFO_KEYS) or {} if the bag has none
    instruction: str
    dropped_frames: int
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # role -> (height, width)
    image_encodings: dict[str, str] = field(default_factory=dict)  # role -> encoding of its first image
    stream_rates: dict[str, float | None] = field(default_factory=dict)  # role -> median rate (Hz)
    filled_frames: int = 0  # grid points without a message within tolerance, filled inside a segment
    # [start, stop) row ranges with no hole longer than max_gap_s (one range without max_gap_s)
    segments: list[tuple[int, int]] = field(default_factory=list)
    # (T,) bool: the operator's leader drove the arm at the frame (the intervention topic's latest
    # flag at its time; all False for a bag without the topic)
    intervention: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    # (T,) bool: the frame's leader command is an expert's label of a state the policy drove (sim
    # DAgger; the relabelled topic's latest flag; all False without the topic)
    relabelled: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    _image_index: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # role -> (T,) ordinal
    _storage: BagStorage | None = field(default=None, repr=False)  # pass 1's storage, reused by pass 2

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def num_frames(self) -> int:
        return int(self.timestamps.shape[0])

    @property
    def success(self) -> bool | None:
        value = self.info.get("success")
        return None if value is None else bool(value)

    @property
    def task(self) -> str:
        return str(self.info.get("task") or self.instruction or self.info.get("instruction") or "")

    def iter_frames(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(frame_index, base_rgb, wrist_rgb)`` in frame order (second pass over the bag).

        A camera message used by several frames (fps above the camera rate) is decoded once."""
        topic_of = {role: getattr(self.topics, role) for role in _CAMERA_ROLES}
        storage = self._storage or open_storage(self.path, set(topic_of.values()))
        users: dict[str, dict[int, list[int]]] = {role: {} for role in _CAMERA_ROLES}  # ordinal -> frames
        for role in _CAMERA_ROLES:
            for frame, ordinal in enumerate(self._image_index[role].tolist()):
                users[role].setdefault(ordinal, []).append(frame)
        wanted: dict[str, set[int]] = {}
        for role in _CAMERA_ROLES:
            wanted.setdefault(topic_of[role], set()).update(users[role])
        pending: dict[int, dict[str, np.ndarray]] = {}
        next_frame = 0
        with storage:
            for topic, ordinal, raw in storage.read_many(wanted):
                image = None
                for role in _CAMERA_ROLES:
                    frames = users[role].get(ordinal) if topic_of[role] == topic else None
                    if frames:
                        if image is None:
                            image = image_to_rgb(parse_image_cdr(raw, storage.topics[topic]), self.path)
                        for frame in frames:
                            pending.setdefault(frame, {})[role] = image
                while len(pending.get(next_frame, ())) == len(_CAMERA_ROLES):
                    images = pending.pop(next_frame)
                    yield next_frame, images["base_image"], images["wrist_image"]
                    next_frame += 1
        if next_frame != self.num_frames:
            raise BagError(self.path, f"image stream ended early: got {next_frame} of {self.num_frames} frames")


def read_episode(
    path: str | Path, topics: BagTopics | None = None, align: AlignConfig | None = None, *,
    storage: BagStorage | None = None,
) -> BagEpisode:
    """First pass: read one bag, align its streams onto the frame grid. Raises BagError.

    ``storage``: read through this one (e.g. ``open_storage(path, scan=True)``) instead of the
    fastest one the bag's layout allows."""
    path = Path(path)
    topics = topics or BagTopics()
    align = align or AlignConfig()
    if not path.exists():
        raise BagError(path, "does not exist")
    try:
        if storage is None:
            storage = open_storage(path, {getattr(topics, role) for role in BagTopics.__dataclass_fields__})
        with storage:
            return _read(path, storage, topics, align)
    except BagError:
        raise
    except Exception as error:  # rosbags/mcap/sqlite errors on corrupt or truncated files
        raise BagError(path, f"unreadable bag ({type(error).__name__}: {error})") from error


class _LazyMessages:
    """One stream's messages, decoded when first selected: of a 200 Hz joint stream only the
    messages nearest to the 10 fps grid are decoded."""

    def __init__(self, decode: Callable[[int], np.ndarray]) -> None:
        self._decode = decode
        self._cache: dict[int, np.ndarray] = {}

    def take(self, ordinals: np.ndarray) -> np.ndarray:
        rows = []
        for ordinal in np.asarray(ordinals).tolist():
            if ordinal not in self._cache:
                self._cache[ordinal] = self._decode(ordinal)
            rows.append(self._cache[ordinal])
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def _read(path: Path, storage: BagStorage, topics: BagTopics, align: AlignConfig) -> BagEpisode:
    """Pass 1 through one storage: stamps of every stream, the messages alignment selects."""
    _check_topics(path, topics, align, storage.topics)
    header = align.stamp_source == "header"
    stamps: dict[str, np.ndarray] = {}
    image_sizes: dict[str, tuple[int, int]] = {}
    image_encodings: dict[str, str] = {}
    for role in _CAMERA_ROLES:
        topic = getattr(topics, role)
        stamps[role] = _stamps(storage, topic, header)
        if stamps[role].size:
            first = deserialize(storage.read(topic, 0), storage.topics[topic])
            image_sizes[role] = (int(first.height), int(first.width))
            image_encodings[role] = str(first.encoding)
    for role in ("follower_state", "leader_command"):
        stamps[role] = _stamps(storage, getattr(topics, role), header)
    stamps["gaze_box"] = _stamps(storage, topics.gaze_box, False)  # no header: always its log time
    decoders = {"follower_state": decode_joints, "leader_command": decode_joints, "gaze_box": decode_gaze}
    values = {role: _lazy(storage, path, getattr(topics, role), decode) for role, decode in decoders.items()}
    instructions = [str(text) for text in _decode_all(storage, topics.instruction)]
    info = _parse_info(path, [str(text) for text in _decode_all(storage, topics.episode_info)], storage.custom)
    instruction = instructions[-1] if instructions else str(info.get("instruction") or info.get("task") or "")
    flag_topics = {"intervention": topics.intervention, "relabelled": topics.relabelled}
    # std_msgs/Bool has no header: its log time
    flags = {role: (_stamps(storage, topic, False), [bool(flag) for flag in _decode_all(storage, topic)])
             for role, topic in flag_topics.items()}

    for role in REQUIRED_ROLES:
        if stamps[role].size == 0:
            raise MissingTopicError(path, getattr(topics, role), role, [])  # topic declared, no messages
    if align.require_gaze and stamps["gaze_box"].size == 0:
        raise MissingTopicError(path, topics.gaze_box, "gaze_box", [])
    try:
        alignment = align_streams(stamps, align)
    except AlignmentError as error:
        raise BagError(path, str(error)) from None
    gaze = None
    if stamps["gaze_box"].size:
        index, close = nearest_within(stamps["gaze_box"], alignment, align)
        boxes = values["gaze_box"].take(index)
        boxes[~close] = _NO_BOX  # no box near: invalid
        gaze = boxes.astype(np.float32)
    if alignment.dropped:
        logger.info("%s: dropped %d of %d frames (no message within %.0f ms)", path.name, alignment.dropped,
                    alignment.dropped + alignment.num_frames - alignment.filled, align.tolerance * 1e3)
    grid = alignment.grid_ns
    return BagEpisode(
        path=path,
        topics=topics,
        fps=align.fps,
        timestamps=((grid - grid[0]) / 1e9).astype(np.float64),
        stamps_ns=grid,
        state=values["follower_state"].take(alignment.picks["follower_state"]).astype(np.float32),
        action=values["leader_command"].take(alignment.picks["leader_command"]).astype(np.float32),
        gaze=gaze,
        info=info,
        instruction=instruction,
        dropped_frames=alignment.dropped,
        image_sizes=image_sizes,
        image_encodings=image_encodings,
        stream_rates=alignment.rates,
        filled_frames=alignment.filled,
        segments=alignment.segments,
        intervention=latest_flags(*flags["intervention"], grid),
        relabelled=latest_flags(*flags["relabelled"], grid),
        _image_index={role: alignment.picks[role] for role in _CAMERA_ROLES},
        _storage=storage,
    )


def _check_topics(path: Path, topics: BagTopics, align: AlignConfig, available: dict[str, str]) -> None:
    required = list(REQUIRED_ROLES) + (["gaze_box"] if align.require_gaze else [])
    for role in required:
        topic = getattr(topics, role)
        if topic not in available:
            raise MissingTopicError(path, topic, role, list(available))
    for role, expected in _EXPECTED_TYPES.items():
        msgtype = available[getattr(topics, role)]
        if msgtype != expected:
            raise BagError(path, f"{getattr(topics, role)} has type {msgtype}, expected {expected}")


def _stamps(storage: BagStorage, topic: str, header: bool) -> np.ndarray:
    """(N,) int64 times of the topic's messages (none for a topic the bag lacks): log times, or with
    ``header`` the header stamps (a zero stamp falls back to the log time)."""
    if topic not in storage.topics:
        return np.zeros(0, dtype=np.int64)
    log = storage.stamps(topic)
    if not header:
        return log
    stamps = log.copy()
    for _, ordinal, raw in storage.read_many({topic: range(log.size)}):
        stamps[ordinal] = header_stamp_ns(raw, storage.topics[topic]) or log[ordinal]
    return stamps


def _lazy(storage: BagStorage, path: Path, topic: str,
          decode: Callable[[bytes, str, Path, str], np.ndarray]) -> _LazyMessages:
    """The topic's messages, each decoded by ``decode(raw, msgtype, bag, topic)`` when first taken."""
    msgtype = storage.topics.get(topic, "")
    return _LazyMessages(lambda ordinal: decode(storage.read(topic, ordinal), msgtype, path, topic))


def _decode_all(storage: BagStorage, topic: str) -> list[Any]:
    """The ``data`` field of every message of a small std_msgs topic, in time order."""
    if topic not in storage.topics:
        return []
    msgtype = storage.topics[topic]
    count = storage.stamps(topic).size
    return [decode_data(storage.read(topic, ordinal), msgtype) for ordinal in range(count)]


def _parse_info(path: Path, texts: list[str], custom: dict[str, str]) -> dict[str, Any]:
    """The last episode-info message that is a JSON object, else the one in metadata.yaml, else {}."""
    candidates = list(reversed(texts)) + ([custom[EPISODE_INFO_CUSTOM_KEY]] if EPISODE_INFO_CUSTOM_KEY in custom else [])
    for text in candidates:
        try:
            info = json.loads(text)
        except json.JSONDecodeError:
            logger.warning("%s: episode info is not JSON: %.80s", path.name, text)
            continue
        if isinstance(info, dict):
            return info
    return {}
