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

import abc
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
    intervention: str = itf.INTERVENTION_TOPIC  # optional (std_msgs/Bool): operator interventions

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
    # Longest hole (s) between kept frames inside one segment; holes up to it are filled with the
    # nearest message so every segment sits on the fps grid, longer ones split the episode.
    # None: no filling or splitting (the frames keep their holes; see BagEpisode.segments).
    max_gap_s: float | None = None

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.stamp_source not in ("log", "header"):
            raise ValueError(f"stamp_source must be 'log' or 'header', got {self.stamp_source!r}")
        if self.tolerance_s is not None and self.tolerance_s <= 0:
            raise ValueError(f"tolerance_s must be > 0, got {self.tolerance_s}")
        if self.max_gap_s is not None and self.max_gap_s < 1.0 / self.fps:
            raise ValueError(f"max_gap_s must be at least one frame period ({1.0 / self.fps:.3f} s), "
                             f"got {self.max_gap_s}")

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
    image_encodings: dict[str, str] = field(default_factory=dict)  # role -> encoding of its first image
    stream_rates: dict[str, float | None] = field(default_factory=dict)  # role -> median rate (Hz)
    filled_frames: int = 0  # grid points without a message within tolerance, filled inside a segment
    # [start, stop) row ranges with no hole longer than max_gap_s (one range without max_gap_s)
    segments: list[tuple[int, int]] = field(default_factory=list)
    # (T,) bool: the operator's leader drove the arm at the frame (the intervention topic's latest
    # flag at its time; all False for a bag without the topic)
    intervention: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    _image_index: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # role -> (T,) msg index
    _index: McapIndex | SqliteIndex | None = field(default=None, repr=False)  # pass-1 index, reused by pass 2

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
        index = self._index if self._index is not None else open_index(self.path)
        if index is not None:
            yield from self._iter_frames_indexed(index)
            return
        yield from self._iter_frames_scan()

    def _iter_frames_indexed(self, index: McapIndex | SqliteIndex) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Random access through the MCAP message index: only the selected images are read."""
        with index:
            channels = {role: index.channel(getattr(self.topics, role)) for role in ("base_image", "wrist_image")}
            cache: dict[str, tuple[int, np.ndarray]] = {}
            for frame in range(self.num_frames):
                images = []
                for role, (channel_id, msgtype) in channels.items():
                    ordinal = int(self._image_index[role][frame])
                    if role not in cache or cache[role][0] != ordinal:  # fps above the camera rate reuses frames
                        payload = index.read_view(channel_id, ordinal) if hasattr(index, "read_view") else \
                            index.read(channel_id, ordinal)
                        msg = parse_image_cdr(payload, msgtype)
                        cache[role] = (ordinal, image_to_rgb(msg, self.path))
                    images.append(cache[role][1])
                yield frame, images[0], images[1]

    def _iter_frames_scan(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
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
        with _open_reader(self.path) as reader:
            connections = [c for c in reader.connections if c.topic in topic_role]
            for connection, _, raw in reader.messages(connections=connections):
                role = topic_role[connection.topic]
                counters[role] += 1
                frames = users[role].get(counters[role])
                if frames:
                    image = image_to_rgb(parse_image_cdr(raw, connection.msgtype), self.path)
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


class _BagIndex(abc.ABC):
    """What both index readers share: the bag's connections and custom metadata, context management."""

    _connections: list[Any]
    _custom: dict[str, str]

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file or database handle."""

    @property
    def connections(self) -> list[Any]:
        return self._connections

    @property
    def custom(self) -> dict[str, str]:
        return self._custom


class McapIndex(_BagIndex):
    """Random access to an indexed, uncompressed single-file MCAP bag (what rosbags and ros2 write by
    default) through its chunk and message indexes: message times without reading payloads, and
    single messages by seeking. ``open`` returns None for layouts it does not handle (the caller
    then scans the bag with rosbags)."""

    def __init__(self, path: Path, reader: Any, storage: Any) -> None:
        self.path = path
        self._reader = reader
        self._storage_path = Path(storage.path)
        self._chunks = list(storage.chunks)
        self._connections = list(reader.connections)
        self._custom = getattr(reader.storage.metadata, "custom", None) or {}
        self._file: Any = None  # opened on first read; read() reopens it after close()
        self._map: Any = None  # read-only mmap of the file for zero-copy image payloads
        self._topics = {c.topic: (c.id, c.msgtype) for c in self._connections}
        self._entries: dict[int, list[tuple[int, int]]] | None = None  # channel -> [(log_time, file offset)]

    @classmethod
    def open(cls, path: Path) -> McapIndex | None:
        from rosbags.rosbag2 import Reader

        reader = Reader(path)
        reader.open()
        try:
            storages = getattr(reader.storage, "storages", [])
            if len(storages) != 1 or type(storages[0]).__name__ != "McapReader":
                return None
            storage = storages[0]
            chunks = getattr(storage, "chunks", None)
            if not chunks or any(chunk.compression for chunk in chunks):
                return None
            index = cls(path, reader, storage)
        finally:
            if reader.is_open:
                reader.close()  # everything needed is copied; messages are read from the file directly
        return index

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # frames still reference it (e.g. in the encode queue): freed with them
                pass
            self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _handle(self) -> Any:
        if self._file is None:
            self._file = open(self._storage_path, "rb")  # noqa: SIM115 - closed in close()
        return self._file

    def channel(self, topic: str) -> tuple[int, str]:
        return self._topics[topic]

    def _index(self) -> dict[int, list[tuple[int, int]]]:
        """Every message's (log_time, absolute record offset), per channel, in time order."""
        import struct

        if self._entries is not None:
            return self._entries
        entries: dict[int, list[tuple[int, int]]] = {}
        handle = self._handle()
        for chunk in self._chunks:
            records_start = chunk.chunk_start_offset + 9 + 40 + len(chunk.compression)
            for channel_id, offset in chunk.message_index_offsets.items():
                handle.seek(offset)
                header = handle.read(15)
                if len(header) != 15 or header[0] != 0x07:
                    raise BagError(self.path, f"broken MCAP message index at byte {offset}")
                (length,) = struct.unpack_from("<I", header, 11)
                body = handle.read(length)
                if len(body) != length:
                    raise BagError(self.path, "MCAP message index cut short (truncated file?)")
                pairs = np.frombuffer(body, dtype="<u8").reshape(-1, 2)
                target = entries.setdefault(channel_id, [])
                target.extend(zip(pairs[:, 0].tolist(), (pairs[:, 1] + records_start).tolist(), strict=False))
        for values in entries.values():
            values.sort()
        self._entries = entries
        return entries

    def stamps(self, channel_id: int) -> np.ndarray:
        return np.array([stamp for stamp, _ in self._index().get(channel_id, [])], dtype=np.int64)

    def read(self, channel_id: int, ordinal: int) -> bytes:
        """Payload of the channel's ``ordinal``-th message (time order)."""
        import struct

        _, offset = self._index()[channel_id][ordinal]
        handle = self._handle()
        handle.seek(offset)
        header = handle.read(9 + 22)
        if len(header) != 31 or header[0] != 0x05:
            raise BagError(self.path, f"no MCAP message record at byte {offset} (corrupt file?)")
        (length,) = struct.unpack_from("<Q", header, 1)
        data = handle.read(length - 22)
        if len(data) != length - 22:
            raise BagError(self.path, "MCAP message cut short (truncated file?)")
        return data

    def read_view(self, channel_id: int, ordinal: int) -> memoryview:
        """Like :meth:`read`, as a zero-copy view into a memory map of the file (for images)."""
        import mmap
        import struct

        _, offset = self._index()[channel_id][ordinal]
        if self._map is None:
            self._map = mmap.mmap(self._handle().fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(self._map)
        if offset + 31 > len(view) or view[offset] != 0x05:
            raise BagError(self.path, f"no MCAP message record at byte {offset} (corrupt file?)")
        (length,) = struct.unpack_from("<Q", view, offset + 1)
        end = offset + 9 + length
        if end > len(view):
            raise BagError(self.path, "MCAP message cut short (truncated file?)")
        return view[offset + 31 : end]

    def messages(self, channel_id: int) -> Iterator[tuple[int, bytes]]:
        for ordinal, (stamp, _) in enumerate(self._index().get(channel_id, [])):
            yield stamp, self.read(channel_id, ordinal)


class SqliteIndex(_BagIndex):
    """Random access to a single-file, uncompressed sqlite3 rosbag2 (Humble's default storage):
    message times per topic from the ``messages`` table, payloads fetched by row id. Same
    interface as :class:`McapIndex`; ``open`` returns None for layouts it does not handle."""

    def __init__(self, path: Path, db_path: Path, connections: list[Any], custom: dict[str, str]) -> None:
        self.path = path
        self._db_path = db_path
        self._connections = connections
        self._custom = custom
        self._db: Any = None
        self._topic_ids: dict[str, int] = {}
        self._rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # topic id -> (timestamps, row ids)
        self._topics = {c.topic: c.msgtype for c in connections}

    @classmethod
    def open(cls, path: Path) -> SqliteIndex | None:
        from rosbags.rosbag2 import Reader

        reader = Reader(path)
        reader.open()
        try:
            storages = getattr(reader.storage, "storages", [])
            if len(storages) != 1 or type(storages[0]).__name__ != "Sqlite3Reader":
                return None
            if reader.compression_mode not in (None, "", "none"):
                return None
            db_path = Path(storages[0].path)
            if not db_path.is_file():
                return None
            custom = getattr(reader.storage.metadata, "custom", None) or {}
            return cls(path, db_path, list(reader.connections), custom)
        finally:
            if reader.is_open:
                reader.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> Any:
        import sqlite3

        if self._db is None:
            self._db = sqlite3.connect(f"file:{self._db_path}?immutable=1", uri=True, check_same_thread=False)
            self._topic_ids = {name: int(tid) for tid, name in self._db.execute("SELECT id, name FROM topics")}
        return self._db

    def channel(self, topic: str) -> tuple[int, str]:
        self._conn()
        if topic not in self._topic_ids:
            raise BagError(self.path, f"topic {topic} is declared but has no table entry")
        return self._topic_ids[topic], self._topics[topic]

    def _index(self, topic_id: int) -> tuple[np.ndarray, np.ndarray]:
        if topic_id not in self._rows:
            rows = self._conn().execute(
                "SELECT timestamp, id FROM messages WHERE topic_id = ? ORDER BY timestamp, id", (topic_id,)
            ).fetchall()
            table = np.array(rows, dtype=np.int64).reshape(-1, 2)
            self._rows[topic_id] = (table[:, 0], table[:, 1])
        return self._rows[topic_id]

    def stamps(self, channel_id: int) -> np.ndarray:
        return self._index(channel_id)[0]

    def read(self, channel_id: int, ordinal: int) -> bytes:
        row_id = int(self._index(channel_id)[1][ordinal])
        found = self._conn().execute("SELECT data FROM messages WHERE id = ?", (row_id,)).fetchone()
        if found is None:
            raise BagError(self.path, f"message row {row_id} vanished")
        return bytes(found[0])

    def messages(self, channel_id: int) -> Iterator[tuple[int, bytes]]:
        stamps, _ = self._index(channel_id)
        for ordinal, stamp in enumerate(stamps.tolist()):
            yield stamp, self.read(channel_id, ordinal)


def open_index(path: Path) -> McapIndex | SqliteIndex | None:
    """The random-access reader for this bag's storage, or None (then the bag is scanned)."""
    if any(path.glob("*.mcap")):
        return McapIndex.open(path)
    if any(path.glob("*.db3")):
        return SqliteIndex.open(path)
    return None


def _open_reader(path: Path) -> Any:
    from rosbags.rosbag2 import Reader

    return Reader(path)


def image_to_rgb(msg: Any, bag: Path | str = "") -> np.ndarray:
    """sensor_msgs/Image -> HxWx3 uint8 RGB with the nodes' conversion (runtime.image); errors name the bag."""
    from reconvla_core.runtime.image import image_to_rgb as convert

    try:
        return convert(msg)
    except ValueError as error:  # ImageEncodingError / ImageLayoutError
        raise BagError(bag, str(error)) from error


class _RawImage:
    """The fields of a sensor_msgs/Image parsed straight from little-endian CDR (no payload copy)."""

    __slots__ = ("height", "width", "encoding", "step", "data")

    def __init__(self, height: int, width: int, encoding: str, step: int, data: np.ndarray) -> None:
        self.height, self.width, self.encoding, self.step, self.data = height, width, encoding, step, data


def parse_image_cdr(raw: bytes | memoryview, msgtype: str = "sensor_msgs/msg/Image") -> Any:
    """sensor_msgs/Image from CDR bytes: a fast zero-copy parse for little-endian CDR, else rosbags."""
    import struct

    try:
        if raw[1] != 0x01:  # not CDR little-endian
            raise ValueError("big-endian CDR")
        body = memoryview(raw)[4:]

        def align(pos: int, size: int) -> int:
            return (pos + size - 1) // size * size

        (frame_len,) = struct.unpack_from("<I", body, 8)
        pos = align(12 + frame_len, 4)
        height, width, enc_len = struct.unpack_from("<III", body, pos)
        encoding = bytes(body[pos + 12 : pos + 12 + enc_len]).rstrip(b"\x00").decode()
        pos = pos + 12 + enc_len + 1  # is_bigendian (uint8)
        pos = align(pos, 4)
        step, size = struct.unpack_from("<II", body, pos)
        data = np.frombuffer(body, dtype=np.uint8, count=size, offset=pos + 8)
        if size < height * step:
            raise ValueError("short image payload")
        return _RawImage(height, width, encoding, step, data)
    except (ValueError, struct.error, IndexError, UnicodeDecodeError):
        return get_typestore().deserialize_cdr(bytes(raw), msgtype)


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
    if align.stamp_source == "log":
        index = open_index(path)
        if index is not None:
            with index:
                return _read_episode_indexed(path, topics, align, index)
    return _read_episode_scan(path, topics, align)


def _role_map(topics: BagTopics) -> dict[str, str]:
    return {
        topics.base_image: "base_image",
        topics.wrist_image: "wrist_image",
        topics.follower_state: "follower_state",
        topics.leader_command: "leader_command",
        topics.instruction: "instruction",
        topics.gaze_box: "gaze_box",
        topics.episode_info: "episode_info",
        topics.intervention: "intervention",
    }


def _check_topics(path: Path, topics: BagTopics, align: AlignConfig, available: dict[str, str]) -> None:
    required = ["base_image", "wrist_image", "follower_state", "leader_command"]
    if align.require_gaze:
        required.append("gaze_box")
    for role in required:
        topic = getattr(topics, role)
        if topic not in available:
            raise MissingTopicError(path, topic, role, list(available))
    for role, types in (("base_image", _IMAGE_TYPES), ("wrist_image", _IMAGE_TYPES),
                        ("follower_state", _JOINT_TYPES), ("leader_command", _JOINT_TYPES)):
        msgtype = available[getattr(topics, role)]
        if msgtype not in types:
            raise BagError(path, f"{getattr(topics, role)} has type {msgtype}, expected {sorted(types)[0]}")


def _read_episode_indexed(
    path: Path, topics: BagTopics, align: AlignConfig, index: McapIndex | SqliteIndex
) -> BagEpisode:
    """Pass 1 through the storage index: image times without their payloads, every other message read."""
    typestore = get_typestore()
    available = {c.topic: c.msgtype for c in index.connections}
    _check_topics(path, topics, align, available)
    stamps: dict[str, list[int]] = {}
    values: dict[str, list[Any]] = {"follower_state": [], "leader_command": [], "gaze_box": []}
    image_sizes: dict[str, tuple[int, int]] = {}
    image_encodings: dict[str, str] = {}
    instructions: list[str] = []
    info_texts: list[str] = []
    for topic, role in _role_map(topics).items():
        if topic not in available:
            stamps[role] = []
            continue
        channel_id, msgtype = index.channel(topic)
        if role in ("base_image", "wrist_image"):
            stamps[role] = index.stamps(channel_id).tolist()
            if stamps[role]:
                msg = typestore.deserialize_cdr(index.read(channel_id, 0), msgtype)
                image_sizes[role] = (int(msg.height), int(msg.width))
                image_encodings[role] = str(msg.encoding)
            continue
        if role in ("follower_state", "leader_command", "gaze_box"):
            stamps[role] = index.stamps(channel_id).tolist()
            values[role] = _LazyValues(_lazy_decoder(path, index, role, topic, channel_id, msgtype))
            continue
        stamps[role] = []
        for log_ns, raw in index.messages(channel_id):
            _decode_into(path, role, topic, msgtype, log_ns, raw, align, stamps, values, instructions, info_texts)
    info = _parse_info(path, info_texts, index.custom)
    instruction = instructions[-1] if instructions else str(info.get("instruction") or info.get("task") or "")
    episode = _align(path, topics, align, stamps, values, image_sizes, info, instruction)
    episode.image_encodings = image_encodings
    episode._index = index
    return episode


def _lazy_decoder(
    path: Path, index: McapIndex | SqliteIndex, role: str, topic: str, channel_id: int, msgtype: str
) -> Any:
    def decode(ordinal: int) -> np.ndarray:
        stamps: dict[str, list[int]] = {role: []}
        values: dict[str, list[Any]] = {role: []}
        _decode_into(path, role, topic, msgtype, 0, index.read(channel_id, ordinal), AlignConfig(), stamps, values,
                     [], [])
        return values[role][0]

    return decode


def _decode_into(
    path: Path, role: str, topic: str, msgtype: str, log_ns: int, raw: bytes, align: AlignConfig,
    stamps: dict[str, list[int]], values: dict[str, list[Any]], instructions: list[str], info_texts: list[str],
) -> None:
    """Decode one non-image message of pass 1 into the per-role lists."""
    typestore = get_typestore()
    if role in ("follower_state", "leader_command"):
        msg = typestore.deserialize_cdr(raw, msgtype)
        try:
            values[role].append(joint_vector(msg))
        except ValueError as error:
            raise BagError(path, f"{topic}: {error}") from None
        stamps[role].append((_header_ns(msg) or log_ns) if align.stamp_source == "header" else log_ns)
    elif role == "gaze_box":
        data = np.asarray(typestore.deserialize_cdr(raw, msgtype).data, dtype=np.float32)
        if data.shape[0] < 4:
            raise BagError(path, f"{topic}: gaze box needs 4 or 5 values, got {data.shape[0]}")
        valid = float(data[4]) if data.shape[0] > 4 else 1.0
        values["gaze_box"].append(np.concatenate([data[:4], [valid]]).astype(np.float32))
        stamps[role].append(log_ns)
    elif role == "instruction":
        instructions.append(str(typestore.deserialize_cdr(raw, msgtype).data))
    elif role == "episode_info":
        info_texts.append(str(typestore.deserialize_cdr(raw, msgtype).data))
    elif role == "intervention":  # std_msgs/Bool has no header: always its log time
        values.setdefault("intervention", []).append(bool(typestore.deserialize_cdr(raw, msgtype).data))
        stamps[role].append(log_ns)


def _read_episode_scan(path: Path, topics: BagTopics, align: AlignConfig) -> BagEpisode:
    """Pass 1 by reading every message (sqlite3, compressed MCAP, header-stamp alignment)."""
    typestore = get_typestore()
    role_of = _role_map(topics)
    stamps: dict[str, list[int]] = {role: [] for role in role_of.values()}
    values: dict[str, list[Any]] = {"follower_state": [], "leader_command": [], "gaze_box": []}
    image_sizes: dict[str, tuple[int, int]] = {}
    image_encodings: dict[str, str] = {}
    instructions: list[str] = []
    info_texts: list[str] = []
    with _open_reader(path) as reader:
        available = {c.topic: c.msgtype for c in reader.connections}
        _check_topics(path, topics, align, available)
        custom = getattr(reader.storage.metadata, "custom", None) or {}
        connections = [c for c in reader.connections if c.topic in role_of]
        for connection, log_ns, raw in reader.messages(connections=connections):
            role = role_of[connection.topic]
            msgtype = connection.msgtype
            if role in ("base_image", "wrist_image"):
                stamp = log_ns
                if align.stamp_source == "header" or role not in image_sizes:
                    msg = typestore.deserialize_cdr(raw, msgtype)
                    image_sizes.setdefault(role, (int(msg.height), int(msg.width)))
                    image_encodings.setdefault(role, str(msg.encoding))
                    if align.stamp_source == "header":
                        stamp = _header_ns(msg) or log_ns
                stamps[role].append(stamp)
            else:
                _decode_into(path, role, connection.topic, msgtype, log_ns, raw, align, stamps, values,
                             instructions, info_texts)
    info = _parse_info(path, info_texts, custom)
    instruction = instructions[-1] if instructions else str(info.get("instruction") or info.get("task") or "")
    episode = _align(path, topics, align, stamps, values, image_sizes, info, instruction)
    episode.image_encodings = image_encodings
    return episode


class _LazyValues:
    """A stream whose messages are decoded only when selected (pass 1 through the MCAP index:
    of a 200 Hz joint stream only the messages nearest to the 10 fps grid are decoded)."""

    def __init__(self, decode: Any) -> None:
        self._decode = decode
        self._cache: dict[int, np.ndarray] = {}

    def take(self, ordinals: np.ndarray) -> np.ndarray:
        rows = []
        for ordinal in np.asarray(ordinals).tolist():
            if ordinal not in self._cache:
                self._cache[ordinal] = self._decode(ordinal)
            rows.append(self._cache[ordinal])
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def _take(values: Any, ordinals: np.ndarray) -> np.ndarray:
    if isinstance(values, _LazyValues):
        return values.take(ordinals)
    return np.stack(values)[ordinals]


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
    values: dict[str, Any],
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
    if not keep.any():
        raise BagError(path, f"no frame has all streams within {align.tolerance * 1e3:.0f} ms")
    original_keep = keep
    keep, filled, breaks = _fill_short_holes(keep, align)
    filled_rows = ~original_keep[keep]  # rows filled from the nearest messages
    grid, kept = grid[keep], {role: pick[keep] for role, pick in picks.items()}
    bounds = [0, *breaks, int(grid.size)]
    segments = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
    gaze = None
    if arrays["gaze_box"].size:
        index, distance = _nearest(arrays["gaze_box"], grid)
        boxes = _take(values["gaze_box"], order["gaze_box"][index])
        # no box near: invalid (a filled frame takes the nearest box, as its other streams do)
        too_far = np.where(filled_rows, distance > (align.max_gap_s or 0.0) * 1e9, distance > tolerance_ns)
        boxes[too_far] = np.array([0, 0, 1, 1, 0], dtype=np.float32)
        gaze = boxes.astype(np.float32)
    if dropped:
        logger.info("%s: dropped %d of %d frames (no message within %.0f ms)",
                    path.name, dropped, dropped + grid.size - filled, align.tolerance * 1e3)
    return BagEpisode(
        path=path,
        topics=topics,
        fps=align.fps,
        timestamps=((grid - grid[0]) / 1e9).astype(np.float64),
        stamps_ns=grid,
        state=_take(values["follower_state"], kept["follower_state"]).astype(np.float32),
        action=_take(values["leader_command"], kept["leader_command"]).astype(np.float32),
        gaze=gaze,
        info=info,
        instruction=instruction,
        dropped_frames=dropped,
        image_sizes=image_sizes,
        stream_rates={role: _median_rate(arrays[role]) for role in required},
        filled_frames=filled,
        segments=segments,
        intervention=intervention_flags(stamps.get("intervention", []), values.get("intervention", []), grid),
        _image_index={"base_image": kept["base_image"], "wrist_image": kept["wrist_image"]},
    )


def intervention_flags(stamps_ns: Sequence[int], flags: Sequence[bool], grid_ns: np.ndarray) -> np.ndarray:
    """(T,) bool: at each grid time, the latest intervention flag at or before it; False before the
    first message and for a bag without the intervention topic."""
    out = np.zeros(np.asarray(grid_ns).shape[0], dtype=bool)
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    if stamps.size == 0:
        return out
    order = np.argsort(stamps, kind="stable")
    stamps, values = stamps[order], np.asarray(flags, dtype=bool)[order]
    latest = np.searchsorted(stamps, grid_ns, side="right") - 1
    seen = latest >= 0
    out[seen] = values[latest[seen]]
    return out


def _median_rate(stamps_ns: np.ndarray) -> float | None:
    """Messages per second from the median interval (robust to a few dropped or bunched messages);
    None for a stream of one message (no rate to measure)."""
    if stamps_ns.size < 2:
        return None
    interval = float(np.median(np.diff(stamps_ns)))
    return 1e9 / interval if interval > 0 else float("inf")


def _fill_short_holes(keep: np.ndarray, align: AlignConfig) -> tuple[np.ndarray, int, list[int]]:
    """Fill holes of at most ``max_gap_s`` between kept grid points (their nearest messages are used)
    and find the longer ones. Returns the new keep mask, how many points were filled, and the rows
    (in the kept frames) where a new segment starts."""
    kept_points = np.flatnonzero(keep)
    if align.max_gap_s is None:
        return keep, 0, []
    # A gap is the time between two kept frames; max_gap_s of two periods lets one frame be filled.
    max_steps = int(np.floor(align.max_gap_s * align.fps + 1e-6))
    steps = np.diff(kept_points)
    keep = keep.copy()
    filled = 0
    breaks_at_points: list[int] = []
    for left, step in zip(kept_points[:-1].tolist(), steps.tolist(), strict=True):
        if step <= 1:
            continue
        if step <= max_steps:
            keep[left + 1 : left + step] = True
            filled += step - 1
        else:
            breaks_at_points.append(left + step)
    # Leading and trailing grid points without data are trimmed, never filled.
    keep[: kept_points[0]] = False
    keep[kept_points[-1] + 1 :] = False
    rows = np.cumsum(keep) - 1  # grid point -> row in the kept frames
    return keep, filled, [int(rows[point]) for point in breaks_at_points]
