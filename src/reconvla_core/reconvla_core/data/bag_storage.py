"""One rosbag2 directory's messages, by topic and by position in time order (the "ordinal").

Reading a dataset out of a bag takes two passes (``bag_reader.py``): the timestamps of every
stream first, then only the camera frames the aligned episode uses. Random access makes both
cheap, so each storage layout gets the fastest reader it allows:

- ``McapStorage``: a single-file MCAP with chunk and message indexes, what ``rosbags`` and
  ``ros2 bag record`` write by default. The ``mcap`` library reads the summary and the per-chunk
  message indexes (timestamps without payloads), then single message records by seeking.
- ``SqliteStorage``: a single-file sqlite3 bag (Humble's default): timestamps per topic from the
  ``messages`` table, payloads by row id.
- ``ScanStorage``: anything else ``rosbags`` reads (split or compressed bags): no random access,
  so messages are streamed in bag order, and the small (non-image) ones kept in memory.

``rosbags`` opens every bag first (``metadata.yaml``: topics, types, custom data), so a bag it
cannot open fails the same way whichever storage reads it.
"""

from __future__ import annotations

import abc
import io
import struct
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from reconvla_core.data.bag_writer import IMAGE_TYPE


class BagError(Exception):
    """A bag that cannot be converted; the message names the bag and the reason."""

    def __init__(self, bag: str | Path, reason: str) -> None:
        self.bag = str(bag)
        self.reason = reason
        super().__init__(f"{Path(bag).name}: {reason}")


class BagStorage(abc.ABC):
    """A bag's messages by topic and ordinal (position in the topic's time order).

    ``close`` releases file handles; a later read reopens them, so a storage read in pass 1 serves
    pass 2 without building its index again."""

    def __init__(self, path: Path, topics: dict[str, str], custom: dict[str, str]) -> None:
        self.path = path
        self.topics = topics  # topic -> message type
        self.custom = custom  # metadata.yaml custom_data

    def __enter__(self) -> BagStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release file or database handles (reads reopen them)."""

    @abc.abstractmethod
    def stamps(self, topic: str) -> np.ndarray:
        """(N,) int64 log (receive) times of the topic's messages, in ordinal order."""

    @abc.abstractmethod
    def read(self, topic: str, ordinal: int) -> bytes:
        """The serialized (CDR) payload of the topic's ``ordinal``-th message."""

    def read_many(self, wanted: Mapping[str, Iterable[int]]) -> Iterator[tuple[str, int, bytes]]:
        """``(topic, ordinal, payload)`` of each wanted message once, in time order (so a consumer
        pairing topics holds few at a time)."""
        requests = []
        for position, (topic, ordinals) in enumerate(wanted.items()):
            stamps = self.stamps(topic)
            requests.extend((int(stamps[o]), position, o, topic) for o in sorted({int(o) for o in ordinals}))
        for _, _, ordinal, topic in sorted(requests):
            yield topic, ordinal, self.read(topic, ordinal)


def _bag_metadata(path: Path) -> tuple[Any, dict[str, str], dict[str, str]]:
    """Open the bag with rosbags: (its storage readers, topic -> type, custom data); closed again."""
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        custom = getattr(reader.storage.metadata, "custom", None) or {}
        storages = list(getattr(reader.storage, "storages", []))
        compressed = reader.compression_mode not in (None, "", "none")
    return (None if compressed else storages), topics, dict(custom)


class McapStorage(BagStorage):
    """Random access to a single-file MCAP bag with uncompressed, indexed chunks (see the module doc)."""

    def __init__(self, path: Path, file: Path, topics: dict[str, str], custom: dict[str, str]) -> None:
        super().__init__(path, topics, custom)
        self._file_path = file
        self._file: IO[bytes] | None = None
        self._channels: dict[str, list[int]] = {}  # topic -> its MCAP channel ids
        # per chunk: (start of its records, file offset of its message indexes, their bytes, channel -> offset)
        self._chunks: list[tuple[int, int, bytes, dict[int, int]]] = []
        # topic -> ((N,) log times, (N,) file offsets of the message records), in time order; built on first use
        self._index: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def open(cls, path: Path) -> McapStorage | None:
        """The storage, or None for a layout it does not handle (split, compressed, unindexed)."""
        storages, topics, custom = _bag_metadata(path)
        if storages is None or len(storages) != 1 or type(storages[0]).__name__ != "McapReader":
            return None
        storage = cls(path, Path(storages[0].path), topics, custom)
        try:
            if not storage._read_summary():
                return None
        finally:
            storage.close()
        return storage

    def _read_summary(self) -> bool:
        """The summary's chunk indexes and the chunks' message index records (a few bytes per
        message); False when the file has no usable index (then the bag is scanned)."""
        from mcap.reader import make_reader

        handle = self._handle()
        summary = make_reader(handle).get_summary()
        if summary is None or not summary.chunk_indexes:
            return False
        if any(chunk.compression or not chunk.message_index_offsets for chunk in summary.chunk_indexes):
            return False
        for channel_id, channel in summary.channels.items():
            self._channels.setdefault(channel.topic, []).append(channel_id)
        for chunk in summary.chunk_indexes:
            # Message index offsets count from the start of the chunk's records, its last field.
            records_start = chunk.chunk_start_offset + chunk.chunk_length - chunk.compressed_size
            # The chunk's message indexes follow it: read at once here, parsed per topic when needed
            # (the library's parser reads 8 bytes at a time, much faster from memory than from a file).
            block_start = chunk.chunk_start_offset + chunk.chunk_length
            handle.seek(block_start)
            block = handle.read(chunk.message_index_length)
            self._chunks.append((records_start, block_start, block, dict(chunk.message_index_offsets)))
        return True

    def _topic_index(self, topic: str) -> tuple[np.ndarray, np.ndarray]:
        """The topic's messages: log times and record offsets in time order (then file order)."""
        from mcap.opcode import Opcode

        if topic not in self._index:
            parts = [np.zeros((0, 2), dtype=np.int64)]
            for records_start, block_start, block, offsets in self._chunks:
                stream = io.BytesIO(block)
                for channel_id in self._channels.get(topic, []):
                    if channel_id in offsets:
                        record = self._record_at(offsets[channel_id], Opcode.MESSAGE_INDEX, "message index",
                                                 (block_start, stream))
                        pairs = np.array(record.records, dtype=np.int64).reshape(-1, 2)
                        pairs[:, 1] += records_start
                        parts.append(pairs)
            pairs = np.concatenate(parts)
            order = np.lexsort((pairs[:, 1], pairs[:, 0]))
            self._index[topic] = (pairs[order, 0], pairs[order, 1])
        return self._index[topic]

    def _handle(self) -> IO[bytes]:
        if self._file is None:
            self._file = open(self._file_path, "rb")  # noqa: SIM115 - closed in close()
        return self._file

    def _record_at(self, offset: int, opcode: int, kind: str,
                   block: tuple[int, IO[bytes]] | None = None) -> Any:
        """The MCAP record of type ``opcode`` at byte ``offset``, parsed by the mcap library, from the
        file or from ``block`` (its file offset, the bytes read ahead). The type is checked first: the
        library's reader would skip an unknown (corrupt) record and return whatever follows it."""
        from mcap.exceptions import McapError
        from mcap.stream_reader import StreamReader

        start, stream = (0, self._handle()) if block is None else block
        stream.seek(offset - start)
        if stream.read(1) != bytes([opcode]):
            raise BagError(self.path, f"no MCAP {kind} record at byte {offset} (corrupt file?)")
        stream.seek(offset - start)
        try:
            return next(StreamReader(stream, skip_magic=True).records)
        except (McapError, StopIteration, ValueError, struct.error):
            raise BagError(self.path, f"MCAP {kind} at byte {offset} cut short (truncated file?)") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def stamps(self, topic: str) -> np.ndarray:
        return self._topic_index(topic)[0]

    def read(self, topic: str, ordinal: int) -> bytes:
        from mcap.opcode import Opcode

        return self._record_at(int(self._topic_index(topic)[1][ordinal]), Opcode.MESSAGE, "message").data


class SqliteStorage(BagStorage):
    """Random access to a single-file, uncompressed sqlite3 bag (see the module doc)."""

    def __init__(self, path: Path, db_path: Path, topics: dict[str, str], custom: dict[str, str]) -> None:
        super().__init__(path, topics, custom)
        self._db_path = db_path
        self._db: Any = None
        self._topic_ids: dict[str, int] = {}
        self._rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # topic -> (timestamps, row ids)

    @classmethod
    def open(cls, path: Path) -> SqliteStorage | None:
        """The storage, or None for a layout it does not handle (split, compressed)."""
        storages, topics, custom = _bag_metadata(path)
        if storages is None or len(storages) != 1 or type(storages[0]).__name__ != "Sqlite3Reader":
            return None
        db_path = Path(storages[0].path)
        return cls(path, db_path, topics, custom) if db_path.is_file() else None

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

    def _table(self, topic: str) -> tuple[np.ndarray, np.ndarray]:
        if topic not in self._rows:
            conn = self._conn()
            if topic not in self._topic_ids:
                raise BagError(self.path, f"topic {topic} is declared but has no table entry")
            rows = conn.execute("SELECT timestamp, id FROM messages WHERE topic_id = ? ORDER BY timestamp, id",
                                (self._topic_ids[topic],)).fetchall()
            table = np.array(rows, dtype=np.int64).reshape(-1, 2)
            self._rows[topic] = (table[:, 0], table[:, 1])
        return self._rows[topic]

    def stamps(self, topic: str) -> np.ndarray:
        return self._table(topic)[0]

    def read(self, topic: str, ordinal: int) -> bytes:
        row_id = int(self._table(topic)[1][ordinal])
        found = self._conn().execute("SELECT data FROM messages WHERE id = ?", (row_id,)).fetchone()
        if found is None:
            raise BagError(self.path, f"message row {row_id} vanished")
        return bytes(found[0])


class ScanStorage(BagStorage):
    """Any bag rosbags reads, streamed in bag order (see the module doc). The first ``stamps`` call
    reads ``topics`` once and keeps the payloads of all but the camera topics; camera frames are
    streamed again by ``read_many``."""

    def __init__(self, path: Path, topics: Collection[str] | None = None) -> None:
        _, bag_topics, custom = _bag_metadata(path)
        super().__init__(path, bag_topics, custom)
        self._wanted = set(self.topics) if topics is None else set(topics) & set(self.topics)
        self._stamps: dict[str, list[int]] | None = None
        self._payloads: dict[str, list[bytes]] = {}  # every message of the non-image topics

    def _scan(self) -> dict[str, list[int]]:
        if self._stamps is None:
            stamps: dict[str, list[int]] = {topic: [] for topic in self._wanted}
            kept = {topic for topic in self._wanted if self.topics[topic] != IMAGE_TYPE}
            payloads: dict[str, list[bytes]] = {topic: [] for topic in kept}
            for topic, log_ns, raw in self._stream(self._wanted):
                stamps[topic].append(log_ns)
                if topic in kept:
                    payloads[topic].append(bytes(raw))
            self._stamps, self._payloads = stamps, payloads
        return self._stamps

    def _stream(self, topics: Collection[str]) -> Iterator[tuple[str, int, bytes]]:
        from rosbags.rosbag2 import Reader

        with Reader(self.path) as reader:
            connections = [c for c in reader.connections if c.topic in topics]
            for connection, log_ns, raw in reader.messages(connections=connections):
                yield connection.topic, log_ns, raw

    def stamps(self, topic: str) -> np.ndarray:
        return np.asarray(self._scan().get(topic, []), dtype=np.int64)

    def read(self, topic: str, ordinal: int) -> bytes:
        if self.topics.get(topic) != IMAGE_TYPE:
            self._scan()
            return self._payloads[topic][ordinal]
        for _, _, raw in self.read_many({topic: [ordinal]}):  # one camera frame: streamed up to it
            return raw
        raise BagError(self.path, f"{topic} has no message {ordinal}")

    def read_many(self, wanted: Mapping[str, Iterable[int]]) -> Iterator[tuple[str, int, bytes]]:
        remaining = {topic: {int(o) for o in ordinals} for topic, ordinals in wanted.items()}
        count = sum(len(ordinals) for ordinals in remaining.values())
        seen = dict.fromkeys(remaining, -1)
        if not count:
            return
        for topic, _, raw in self._stream(remaining):
            seen[topic] += 1
            if seen[topic] in remaining[topic]:
                yield topic, seen[topic], raw
                count -= 1
                if not count:  # the rest of the bag is not needed
                    return


def open_storage(path: Path, topics: Collection[str] | None = None, *, scan: bool = False) -> BagStorage:
    """The fastest storage reader for this bag's layout (``scan``: always stream with rosbags;
    ``topics``: what a scan reads)."""
    if not scan and path.is_dir():
        storage: BagStorage | None = None
        if any(path.glob("*.mcap")):
            storage = McapStorage.open(path)
        elif any(path.glob("*.db3")):
            storage = SqliteStorage.open(path)
        if storage is not None:
            return storage
    return ScanStorage(path, topics)
