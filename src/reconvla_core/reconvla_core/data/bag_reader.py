"""Read one episode from a rosbag2 directory (MCAP or sqlite3) and align it onto the dataset fps.

Two passes over the bag keep memory flat for long episodes:

1. :func:`read_episode` reads every non-image message and the timestamps of the image
   messages, builds the frame grid ``t0 + k / fps`` over the span all required streams
   cover, and picks for each stream the nearest message within ``tolerance_s``. A grid
   point where a required stream has nothing close enough is dropped (counted).
2. :meth:`BagEpisode.iter_frames` reads the two camera topics again and yields the
   selected images in frame order, decoded to HxWx3 uint8 RGB.

Time base: the bag's log (receive) time by default, which every stream shares; the
header stamps can be used instead (``stamp_source="header"``) when all drivers stamp
with the same clock.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reconvla_core import interfaces as itf
from reconvla_core.data.bag_writer import EPISODE_INFO_CUSTOM_KEY, get_typestore
from reconvla_core.piper import ACTION_DIM, ACTION_NAMES

logger = logging.getLogger(__name__)

_IMAGE_TYPES = {"sensor_msgs/msg/Image"}
_JOINT_TYPES = {"sensor_msgs/msg/JointState"}


class BagError(Exception):
    """A bag that cannot be converted; the message names the bag and the reason."""

    def __init__(self, bag: str | Path, reason: str) -> None:
        self.bag = str(bag)
        self.reason = reason
        super().__init__(f"{Path(bag).name}: {reason}")


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


@dataclass(frozen=True)
class AlignConfig:
    """How streams are put onto the dataset's frame grid."""

    fps: float = 10.0
    tolerance_s: float | None = None  # default: half a dataset period
    stamp_source: str = "log"  # "log" (bag receive time) or "header"
    require_gaze: bool = False  # the sim gaze backend needs the gaze topic

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.stamp_source not in ("log", "header"):
            raise ValueError(f"stamp_source must be 'log' or 'header', got {self.stamp_source!r}")
        if self.tolerance_s is not None and self.tolerance_s <= 0:
            raise ValueError(f"tolerance_s must be > 0, got {self.tolerance_s}")

    @property
    def tolerance(self) -> float:
        return self.tolerance_s if self.tolerance_s is not None else 0.5 / self.fps


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
    _image_index: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # role -> (T,) msg index

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
        """Yield ``(frame_index, base_rgb, wrist_rgb)`` in frame order (second pass over the bag)."""
        roles = ("base_image", "wrist_image")
        wanted = {role: self._image_index[role] for role in roles}
        topic_role = {getattr(self.topics, role): role for role in roles}
        # message ordinal -> frame indices that use it, per role
        users: dict[str, dict[int, list[int]]] = {role: {} for role in roles}
        for role, indices in wanted.items():
            for frame, ordinal in enumerate(indices.tolist()):
                users[role].setdefault(ordinal, []).append(frame)
        pending: dict[int, dict[str, np.ndarray]] = {}
        next_frame = 0
        counters = {role: -1 for role in roles}
        last_needed = {role: int(indices.max()) if indices.size else -1 for role, indices in wanted.items()}
        typestore = get_typestore()
        with _open_reader(self.path) as reader:
            connections = [c for c in reader.connections if c.topic in topic_role]
            for connection, _, raw in reader.messages(connections=connections):
                role = topic_role[connection.topic]
                counters[role] += 1
                frames = users[role].get(counters[role])
                if frames:
                    image = image_to_rgb(typestore.deserialize_cdr(raw, connection.msgtype), self.path)
                    for frame in frames:
                        pending.setdefault(frame, {})[role] = image
                while next_frame in pending and len(pending[next_frame]) == 2:
                    images = pending.pop(next_frame)
                    yield next_frame, images["base_image"], images["wrist_image"]
                    next_frame += 1
                if all(counters[r] >= last_needed[r] for r in roles) and next_frame >= self.num_frames:
                    break
        if next_frame != self.num_frames:
            raise BagError(self.path, f"image stream ended early: got {next_frame} of {self.num_frames} frames")


def _open_reader(path: Path) -> Any:
    from rosbags.rosbag2 import Reader

    return Reader(path)


def image_to_rgb(msg: Any, bag: Path | str = "") -> np.ndarray:
    """sensor_msgs/Image -> HxWx3 uint8 RGB (rgb8, bgr8, rgba8, bgra8, mono8), honouring ``step`` padding."""
    encoding = str(msg.encoding).lower()
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc3": 3, "8uc1": 1}.get(encoding)
    if channels is None:
        raise BagError(bag, f"unsupported image encoding {msg.encoding!r} (rgb8/bgr8/rgba8/bgra8/mono8 work)")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8)
    if data.size < height * step:
        raise BagError(bag, f"image data has {data.size} bytes, expected {height * step}")
    rows = data[: height * step].reshape(height, step)[:, : width * channels]
    image = rows.reshape(height, width, channels)
    if encoding in ("bgr8", "bgra8"):
        image = image[..., 2::-1]
    elif channels == 4:
        image = image[..., :3]
    elif channels == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def joint_vector(msg: Any) -> np.ndarray:
    """JointState -> (7,) [joint1..6 rad, gripper m]: by name when the names match, else by order."""
    names = list(msg.name)
    position = np.asarray(msg.position, dtype=np.float64)
    if names and all(name in names for name in ACTION_NAMES) and len(names) == position.shape[0]:
        return position[[names.index(name) for name in ACTION_NAMES]]
    if position.shape[0] < ACTION_DIM:
        raise ValueError(f"joint state has {position.shape[0]} positions, expected {ACTION_DIM}")
    return position[:ACTION_DIM]


def _header_ns(msg: Any) -> int:
    stamp = msg.header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _nearest(stamps: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest stamp for each grid time, and the absolute distance (ns)."""
    right = np.clip(np.searchsorted(stamps, grid), 0, stamps.size - 1)
    left = np.clip(right - 1, 0, stamps.size - 1)
    pick_left = np.abs(grid - stamps[left]) <= np.abs(stamps[right] - grid)
    index = np.where(pick_left, left, right)
    return index, np.abs(stamps[index] - grid)


def read_episode(
    path: str | Path, topics: BagTopics | None = None, align: AlignConfig | None = None
) -> BagEpisode:
    """First pass: read one bag, align its streams onto the frame grid. Raises BagError."""
    path = Path(path)
    topics = topics or BagTopics()
    align = align or AlignConfig()
    if not path.exists():
        raise BagError(path, "does not exist")
    try:
        return _read_episode(path, topics, align)
    except BagError:
        raise
    except Exception as error:  # rosbags/mcap/sqlite errors on corrupt or truncated files
        raise BagError(path, f"unreadable bag ({type(error).__name__}: {error})") from error


def _read_episode(path: Path, topics: BagTopics, align: AlignConfig) -> BagEpisode:
    typestore = get_typestore()
    role_of = {
        topics.base_image: "base_image",
        topics.wrist_image: "wrist_image",
        topics.follower_state: "follower_state",
        topics.leader_command: "leader_command",
        topics.instruction: "instruction",
        topics.gaze_box: "gaze_box",
        topics.episode_info: "episode_info",
    }
    stamps: dict[str, list[int]] = {role: [] for role in role_of.values()}
    values: dict[str, list[Any]] = {"follower_state": [], "leader_command": [], "gaze_box": []}
    image_sizes: dict[str, tuple[int, int]] = {}
    instructions: list[str] = []
    info_texts: list[str] = []
    with _open_reader(path) as reader:
        available = {c.topic: c.msgtype for c in reader.connections}
        required = ["base_image", "wrist_image", "follower_state", "leader_command"]
        if align.require_gaze:
            required.append("gaze_box")
        for role in required:
            topic = getattr(topics, role)
            if topic not in available:
                raise MissingTopicError(path, topic, role, list(available))
        custom = getattr(reader.storage.metadata, "custom", None) or {}
        connections = [c for c in reader.connections if c.topic in role_of]
        for connection, log_ns, raw in reader.messages(connections=connections):
            role = role_of[connection.topic]
            msgtype = connection.msgtype
            if role in ("base_image", "wrist_image"):
                if msgtype not in _IMAGE_TYPES:
                    raise BagError(path, f"{connection.topic} has type {msgtype}, expected sensor_msgs/msg/Image")
                stamp = log_ns
                if align.stamp_source == "header" or role not in image_sizes:
                    msg = typestore.deserialize_cdr(raw, msgtype)
                    image_sizes.setdefault(role, (int(msg.height), int(msg.width)))
                    if align.stamp_source == "header":
                        stamp = _header_ns(msg) or log_ns
                stamps[role].append(stamp)
            elif role in ("follower_state", "leader_command"):
                if msgtype not in _JOINT_TYPES:
                    raise BagError(path, f"{connection.topic} has type {msgtype}, expected sensor_msgs/msg/JointState")
                msg = typestore.deserialize_cdr(raw, msgtype)
                try:
                    values[role].append(joint_vector(msg))
                except ValueError as error:
                    raise BagError(path, f"{connection.topic}: {error}") from None
                stamps[role].append((_header_ns(msg) or log_ns) if align.stamp_source == "header" else log_ns)
            elif role == "gaze_box":
                data = np.asarray(typestore.deserialize_cdr(raw, msgtype).data, dtype=np.float32)
                if data.shape[0] < 4:
                    raise BagError(path, f"{connection.topic}: gaze box needs 4 or 5 values, got {data.shape[0]}")
                valid = float(data[4]) if data.shape[0] > 4 else 1.0
                values["gaze_box"].append(np.concatenate([data[:4], [valid]]).astype(np.float32))
                stamps[role].append(log_ns)
            elif role == "instruction":
                instructions.append(str(typestore.deserialize_cdr(raw, msgtype).data))
            elif role == "episode_info":
                info_texts.append(str(typestore.deserialize_cdr(raw, msgtype).data))
    info = _parse_info(path, info_texts, custom)
    instruction = instructions[-1] if instructions else str(info.get("instruction") or info.get("task") or "")
    return _align(path, topics, align, stamps, values, image_sizes, info, instruction)


def _parse_info(path: Path, texts: list[str], custom: dict[str, str]) -> dict[str, Any]:
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


def _align(
    path: Path,
    topics: BagTopics,
    align: AlignConfig,
    stamps: dict[str, list[int]],
    values: dict[str, list[Any]],
    image_sizes: dict[str, tuple[int, int]],
    info: dict[str, Any],
    instruction: str,
) -> BagEpisode:
    required = ["base_image", "wrist_image", "follower_state", "leader_command"]
    arrays: dict[str, np.ndarray] = {}
    order: dict[str, np.ndarray] = {}
    for role in required + ["gaze_box"]:
        raw = np.asarray(stamps[role], dtype=np.int64)
        order[role] = np.argsort(raw, kind="stable")  # bag order is log order; header stamps may not be
        arrays[role] = raw[order[role]]
    for role in required:
        if arrays[role].size == 0:
            raise MissingTopicError(path, getattr(topics, role), role, [])  # topic declared, no messages
    if align.require_gaze and arrays["gaze_box"].size == 0:
        raise MissingTopicError(path, topics.gaze_box, "gaze_box", [])
    start = max(int(arrays[role][0]) for role in required)
    stop = min(int(arrays[role][-1]) for role in required)
    period_ns = 1e9 / align.fps
    tolerance_ns = align.tolerance * 1e9
    if stop < start:
        raise BagError(path, "the camera and joint streams do not overlap in time")
    grid = start + np.round(np.arange(int((stop - start) // period_ns) + 1) * period_ns).astype(np.int64)
    keep = np.ones(grid.shape[0], dtype=bool)
    picks: dict[str, np.ndarray] = {}
    for role in required:
        index, distance = _nearest(arrays[role], grid)
        keep &= distance <= tolerance_ns
        picks[role] = order[role][index]  # position in the bag's message order of that topic
    dropped = int((~keep).sum())
    grid, kept = grid[keep], {role: pick[keep] for role, pick in picks.items()}
    if grid.size == 0:
        raise BagError(path, f"no frame has all streams within {align.tolerance * 1e3:.0f} ms")
    gaze = None
    if arrays["gaze_box"].size:
        index, distance = _nearest(arrays["gaze_box"], grid)
        boxes = np.stack(values["gaze_box"])[order["gaze_box"][index]]
        boxes[distance > tolerance_ns] = np.array([0, 0, 1, 1, 0], dtype=np.float32)  # no box near: invalid
        gaze = boxes.astype(np.float32)
    if dropped:
        logger.info("%s: dropped %d of %d frames (no message within %.0f ms)",
                    path.name, dropped, dropped + grid.size, align.tolerance * 1e3)
    return BagEpisode(
        path=path,
        topics=topics,
        fps=align.fps,
        timestamps=((grid - grid[0]) / 1e9).astype(np.float64),
        stamps_ns=grid,
        state=np.stack(values["follower_state"])[kept["follower_state"]].astype(np.float32),
        action=np.stack(values["leader_command"])[kept["leader_command"]].astype(np.float32),
        gaze=gaze,
        info=info,
        instruction=instruction,
        dropped_frames=dropped,
        image_sizes=image_sizes,
        _image_index={"base_image": kept["base_image"], "wrist_image": kept["wrist_image"]},
    )
