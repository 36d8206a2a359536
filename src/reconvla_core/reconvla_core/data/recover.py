"""``reconvla bag recover``: make a cut-off MCAP episode readable again (like ``ros2 bag reindex``).

A recorder killed by SIGKILL or a power loss, or stopped by a full disk, leaves an MCAP file
without its summary and footer, and no ``metadata.yaml``; ``rosbags`` (and so ``dataset
build``) cannot open it. MCAP is written as a sequence of length-prefixed records, so the
``mcap`` library's streaming reader reads such a file from the front up to its last whole
record: every chunk that reached the disk complete is recovered, a chunk cut short is not.

Recovery rewrites the messages into a fresh bag with ``rosbags`` (summary, footer and
metadata.yaml included), then swaps it in: the original file stays beside it, renamed
``*.mcap.truncated`` (and an old metadata.yaml as ``metadata.yaml.orig``), so nothing on disk
is lost. The episode info is marked ``interrupted`` and ``recovered`` with ``success=false``
(what the operator had recorded, if anything, is kept as ``recorded_success``): whether a
recovered episode goes into a dataset is the user's choice (``--include-unsuccessful``).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from reconvla_core.data.bag_writer import (
    EPISODE_INFO_CUSTOM_KEY,
    STRING_TYPE,
    get_typestore,
    stamp_to_iso,
)
from reconvla_core.interfaces import EPISODE_INFO_KEYS, EPISODE_INFO_TOPIC, INSTRUCTION_TOPIC

logger = logging.getLogger(__name__)

MCAP_MAGIC = b"\x89MCAP0\r\n"
TRUNCATED_SUFFIX = ".truncated"
_PLACEHOLDER_RIHS01 = "RIHS01_" + "0" * 64  # a type the Jazzy typestore does not know: no hash to give


class RecoveryError(Exception):
    """A bag that cannot be recovered; the message names it and says why."""


@dataclass
class RecoveryReport:
    bag: str
    recovered: bool  # False: the bag was whole already (nothing written)
    messages: int = 0
    seconds: float = 0.0
    topics: dict[str, int] = field(default_factory=dict)
    source_files: list[str] = field(default_factory=list)
    source_bytes: int = 0
    bytes_recovered: int = 0  # how far into the source files whole records reached
    stopped_at: str = ""  # why reading stopped early ("" when the files were whole)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcap_is_whole(path: Path) -> bool:
    """True when an MCAP file ends with its footer magic (written last on a clean close)."""
    size = path.stat().st_size
    if size < 2 * len(MCAP_MAGIC):
        return False
    with open(path, "rb") as handle:
        handle.seek(size - len(MCAP_MAGIC))
        return handle.read(len(MCAP_MAGIC)) == MCAP_MAGIC


def needs_recovery(bag: Path) -> bool:
    """A bag directory whose MCAP lacks its footer, or that has no metadata.yaml."""
    files = sorted(bag.glob("*.mcap"))
    if not files:
        return bool(sorted(bag.glob(f"*.mcap{TRUNCATED_SUFFIX}"))) and not (bag / "metadata.yaml").is_file()
    return not (bag / "metadata.yaml").is_file() or not all(mcap_is_whole(f) for f in files)


class _WholeReads:
    """A file whose short reads raise EndOfFile, so the stream reader never yields a cut record."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        from mcap.exceptions import EndOfFile

        data = self._handle.read(size)
        if size is not None and size > 0 and len(data) < size:
            raise EndOfFile()
        self.position += len(data)
        return data


def recover_bag(bag: str | Path, *, force: bool = False) -> RecoveryReport:
    """Recover one bag directory in place; returns what was recovered. Raises RecoveryError."""
    bag = Path(bag)
    if not bag.is_dir():
        raise RecoveryError(f"{bag}: not a bag directory")
    sources = sorted(bag.glob("*.mcap")) or sorted(bag.glob(f"*.mcap{TRUNCATED_SUFFIX}"))
    if not sources:
        if any(bag.glob("*.db3")):
            raise RecoveryError(f"{bag.name}: only MCAP bags can be recovered (this one is sqlite3)")
        raise RecoveryError(f"{bag.name}: no .mcap file to recover")
    if not force and not needs_recovery(bag):
        return RecoveryReport(bag=str(bag), recovered=False, source_files=[f.name for f in sources],
                              source_bytes=sum(f.stat().st_size for f in sources))
    staging_root = bag.parent / f".{bag.name}.recover-tmp"
    if staging_root.exists():  # left by a recovery that was itself interrupted
        shutil.rmtree(staging_root)
    staging_root.mkdir()
    try:
        report = _rewrite(bag, sources, staging_root / bag.name)
        _swap_in(bag, sources, staging_root / bag.name)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    logger.info("recovered %s: %d messages, %.2f s%s", bag.name, report.messages, report.seconds,
                f" (stopped at {report.stopped_at})" if report.stopped_at else "")
    return report


def _rewrite(bag: Path, sources: list[Path], target: Path) -> RecoveryReport:
    from mcap.exceptions import McapError
    from mcap.records import Channel, Message, Schema
    from mcap.stream_reader import StreamReader
    from rosbags.rosbag2 import StoragePlugin, Writer

    typestore = get_typestore()
    report = RecoveryReport(bag=str(bag), recovered=True, source_files=[f.name for f in sources],
                            source_bytes=sum(f.stat().st_size for f in sources))
    writer = Writer(target, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    info_texts: list[str] = []
    instruction = ""
    first: int | None = None
    last: int | None = None
    info_connection: Any = None
    try:
        for source in sources:
            schemas: dict[int, Schema] = {}
            channels: dict[int, Any] = {}  # source channel id -> rosbags connection (None: skipped)
            with open(source, "rb") as handle:
                reader = _WholeReads(handle)
                try:
                    for record in StreamReader(reader, validate_crcs=True).records:
                        if isinstance(record, Schema):
                            schemas[record.id] = record
                        elif isinstance(record, Channel):
                            channels[record.id] = _add_connection(writer, record, schemas.get(record.schema_id),
                                                                  typestore)
                        elif isinstance(record, Message):
                            connection = channels.get(record.channel_id)
                            if connection is None:
                                continue
                            if connection.topic == EPISODE_INFO_TOPIC:  # rewritten below, marked recovered
                                info_texts.append(_decode_string(record.data))
                                info_connection = connection
                                continue
                            if connection.topic == INSTRUCTION_TOPIC and connection.msgtype == STRING_TYPE:
                                instruction = _decode_string(record.data) or instruction
                            writer.write(connection, record.log_time, record.data)
                            report.messages += 1
                            report.topics[connection.topic] = report.topics.get(connection.topic, 0) + 1
                            first = record.log_time if first is None else min(first, record.log_time)
                            last = record.log_time if last is None else max(last, record.log_time)
                except (McapError, ValueError, OSError, EOFError) as error:  # cut or damaged from here on
                    reason = type(error).__name__ + (f": {error}" if str(error) else "")
                    report.stopped_at = f"{source.name} byte {reader.position} of {source.stat().st_size} ({reason})"
                    report.bytes_recovered += reader.position
                    break
                report.bytes_recovered += reader.position
        if report.messages == 0:
            raise RecoveryError(f"{bag.name}: no whole message found"
                                + (f" (stopped at {report.stopped_at})" if report.stopped_at else ""))
        info = _recovered_info(info_texts, instruction, first or 0, last or 0, report)
        text = json.dumps(info, default=str)
        if info_connection is None:
            info_connection = writer.add_connection(EPISODE_INFO_TOPIC, STRING_TYPE, typestore=typestore)
        msg = typestore.types[STRING_TYPE](data=text)
        writer.write(info_connection, last or 0, typestore.serialize_cdr(msg, STRING_TYPE))
        writer.set_custom_data(EPISODE_INFO_CUSTOM_KEY, text)
        report.info = info
        report.seconds = round(((last or 0) - (first or 0)) / 1e9, 3)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return report


def _add_connection(writer: Any, channel: Any, schema: Any, typestore: Any) -> Any:
    from rosbags.rosbag2.metadata import parse_qos

    if schema is None or channel.message_encoding != "cdr":
        logger.warning("skipping channel %s: no schema or not CDR", channel.topic)
        return None
    msgtype = schema.name
    qos_text = channel.metadata.get("offered_qos_profiles", "")
    try:
        qos = parse_qos(qos_text) if qos_text else []
    except Exception:  # QoS only matters to ros2 bag play; the messages do not depend on it
        qos = []
    for existing in writer.connections:
        if existing.topic == channel.topic and existing.msgtype == msgtype:
            return existing  # a split bag repeats its channels in every file
    if msgtype in typestore.types:
        return writer.add_connection(channel.topic, msgtype, typestore=typestore, offered_qos_profiles=qos)
    return writer.add_connection(channel.topic, msgtype, msgdef=schema.data.decode(), rihs01=_PLACEHOLDER_RIHS01,
                                 offered_qos_profiles=qos)


def _decode_string(raw: bytes) -> str:
    try:
        return str(get_typestore().deserialize_cdr(bytes(raw), STRING_TYPE).data)
    except Exception:
        return ""


def _recovered_info(texts: list[str], instruction: str, first: int, last: int,
                    report: RecoveryReport) -> dict[str, Any]:
    recorded: dict[str, Any] = {}
    for text in reversed(texts):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            recorded = parsed
            break
    info: dict[str, Any] = {
        "task": recorded.get("task") or instruction,
        "instruction": recorded.get("instruction") or instruction,
        "success": False,
        "operator": recorded.get("operator", ""),
        "software_version": recorded.get("software_version", ""),
        "start_time": recorded.get("start_time") or stamp_to_iso(first),
        "stop_time": stamp_to_iso(last),
    }
    assert set(EPISODE_INFO_KEYS) <= set(info)
    info.update({key: value for key, value in recorded.items() if key not in info})
    info.update(
        interrupted=True,
        recovered=True,
        recorded_success=recorded.get("success"),
        note=(f"recovered by reconvla bag recover: {report.messages} messages, "
              f"{(last - first) / 1e9:.2f} s" + (f"; stopped at {report.stopped_at}" if report.stopped_at else "")),
    )
    return info


def _swap_in(bag: Path, sources: list[Path], staged: Path) -> None:
    """Keep the originals beside the recovered bag (``*.mcap.truncated``), then move it in."""
    for source in sources:
        if not source.name.endswith(TRUNCATED_SUFFIX):
            source.rename(source.with_name(source.name + TRUNCATED_SUFFIX))
    old_meta = bag / "metadata.yaml"
    if old_meta.is_file():
        old_meta.rename(bag / "metadata.yaml.orig")
    for item in sorted(staged.iterdir(), key=lambda p: p.name == "metadata.yaml"):  # metadata last
        item.rename(bag / item.name)
