"""Bags -> LeRobot v3.0 dataset: the ``reconvla dataset build`` pipeline.

Per bag: read and align (pass 1), keep it if the episode succeeded (by default), then
stream its frames (pass 2) through the gaze backend and the v3 writer. A bag that
cannot be converted is reported by name and skipped (or fails the build with
``strict``); the dataset appears at ``out`` only when the build completed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reconvla_core.data.bag_reader import AlignConfig, BagEpisode, BagError, BagTopics, read_episode
from reconvla_core.data.gaze import GazeBackend, make_gaze_backend, sanitise_boxes
from reconvla_core.data.lerobot_v3 import BASE_IMAGE_KEY, WRIST_IMAGE_KEY, LeRobotV3Writer

logger = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    bags: Sequence[Path]
    out: Path
    fps: float = 10.0
    tolerance_s: float | None = None
    stamp_source: str = "log"
    topics: BagTopics = field(default_factory=BagTopics)
    gaze: str = "sim"
    gaze_boxes_file: Path | None = None
    gaze_model_dir: Path | None = None
    gaze_batch_size: int = 8
    gaze_box_threshold: float = 0.3
    gaze_device: str = "cpu"
    include_unsuccessful: bool = False
    strict: bool = False
    image_format: str = "jpeg"
    overwrite: bool = False
    batch_frames: int = 16
    encode_workers: int | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if not self.bags:
            raise ValueError("no bags given (--bags DIR [DIR ...])")
        if self.batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {self.batch_frames}")


@dataclass
class BuildReport:
    episodes: int = 0
    frames: int = 0
    gaze_fallbacks: int = 0
    dropped_frames: int = 0
    fps: float = 10.0
    out: str = ""
    gaze: str = "sim"
    bags_found: int = 0
    skipped_unsuccessful: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)  # {"bag", "reason"}
    seconds: float = 0.0
    frames_per_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_bag_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    if (path / "metadata.yaml").is_file():
        return True
    return any(path.glob("*.mcap")) or any(path.glob("*.db3"))


def find_bags(paths: Iterable[str | Path]) -> list[Path]:
    """Each path is a bag directory or a directory of bag directories (searched one level down)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"bag path {path} does not exist")
        if is_bag_dir(path):
            found.append(path)
            continue
        children = sorted(child for child in path.iterdir() if is_bag_dir(child))
        if not children:
            raise FileNotFoundError(f"{path} holds no rosbag2 directory (metadata.yaml, *.mcap or *.db3)")
        found.extend(children)
    return found


def peek_success(path: Path) -> bool | None:
    """The episode's success flag from metadata.yaml custom_data, without reading messages (None if absent)."""
    import json

    import yaml

    from reconvla_core.data.bag_writer import EPISODE_INFO_CUSTOM_KEY

    meta = path / "metadata.yaml"
    if not meta.is_file():
        return None
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        with open(meta, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=loader) or {}  # noqa: S506 - a safe loader
        custom = (data.get("rosbag2_bagfile_information") or {}).get("custom_data") or {}
        if EPISODE_INFO_CUSTOM_KEY not in custom:
            return None
        return bool(json.loads(custom[EPISODE_INFO_CUSTOM_KEY]).get("success"))
    except Exception:  # an unreadable metadata file is diagnosed by the full read
        return None


def build_dataset(config: BuildConfig) -> BuildReport:
    """Convert ``config.bags`` into a LeRobot v3.0 dataset at ``config.out``."""
    started = time.perf_counter()
    if Path(config.out).exists() and not config.overwrite:
        raise FileExistsError(f"{config.out} exists already; use --overwrite to replace it")
    bags = find_bags(config.bags)
    backend = make_gaze_backend(
        config.gaze, boxes_file=config.gaze_boxes_file, model_dir=config.gaze_model_dir,
        **({"batch_size": config.gaze_batch_size, "box_threshold": config.gaze_box_threshold,
            "device": config.gaze_device} if config.gaze == "grounding-dino" else {}),
    )
    align = AlignConfig(
        fps=config.fps, tolerance_s=config.tolerance_s, stamp_source=config.stamp_source,
        require_gaze=backend.needs_gaze_topic,
    )
    report = BuildReport(fps=config.fps, out=str(config.out), gaze=config.gaze, bags_found=len(bags))
    slot = _WriterSlot()
    try:
        for bag in _progress(bags, config.progress):
            _convert_bag(bag, config, align, backend, slot, report)
        if slot.writer is None:
            raise ValueError(_nothing_written(report))
        report.seconds = round(time.perf_counter() - started, 3)
        report.frames_per_s = round(report.frames / max(report.seconds, 1e-9), 1)
        slot.writer.finalize(build_report=report.to_dict())
    finally:  # any exit without finalize (bad bag under --strict, Ctrl-C, error) drops the staging area
        if slot.writer is not None and not slot.writer.finalized:
            slot.writer.abort()
    return report


@dataclass
class _WriterSlot:
    """The dataset writer, created with the first converted episode (its image sizes fix the schema)."""

    writer: LeRobotV3Writer | None = None


def _nothing_written(report: BuildReport) -> str:
    parts = [f"no episode converted from {report.bags_found} bag(s)"]
    if report.skipped_unsuccessful:
        parts.append(f"{len(report.skipped_unsuccessful)} unsuccessful (use --include-unsuccessful)")
    if report.failed:
        parts.append("failed: " + "; ".join(f"{f['bag']}: {f['reason']}" for f in report.failed))
    return ", ".join(parts)


def _progress(items: list[Path], enabled: bool) -> Iterable[Path]:
    if not enabled:
        return items
    import sys

    from tqdm import tqdm

    return tqdm(items, desc="bags", unit="bag", file=sys.stderr)


def _convert_bag(
    bag: Path,
    config: BuildConfig,
    align: AlignConfig,
    backend: GazeBackend,
    slot: _WriterSlot,
    report: BuildReport,
) -> None:
    if not config.include_unsuccessful and peek_success(bag) is False:
        report.skipped_unsuccessful.append(bag.name)
        return
    try:
        episode = read_episode(bag, config.topics, align)
        if not config.include_unsuccessful and not episode.success:
            report.skipped_unsuccessful.append(bag.name)
            return
        if slot.writer is None:
            _open_writer(config, episode, slot)
        assert slot.writer is not None
        fallbacks = _write_episode(slot.writer, episode, backend, config.batch_frames)
    except BagError as error:
        if config.strict:
            raise
        logger.error("skipping bag %s", error)
        report.failed.append({"bag": bag.name, "reason": error.reason})
        return
    report.episodes += 1
    report.frames += episode.num_frames
    report.dropped_frames += episode.dropped_frames
    report.gaze_fallbacks += fallbacks


def _open_writer(config: BuildConfig, episode: BagEpisode, slot: _WriterSlot) -> None:
    shapes = {
        BASE_IMAGE_KEY: (*episode.image_sizes["base_image"], 3),
        WRIST_IMAGE_KEY: (*episode.image_sizes["wrist_image"], 3),
    }
    slot.writer = LeRobotV3Writer(
        config.out, fps=config.fps, image_shapes=shapes, image_format=config.image_format,
        overwrite=config.overwrite, encode_workers=config.encode_workers,
    )
    slot.writer.open()


def _write_episode(writer: LeRobotV3Writer, episode: BagEpisode, backend: GazeBackend, batch_frames: int) -> int:
    """Stream one episode into the writer; returns the number of whole-image gaze fallbacks."""
    for role, key in (("base_image", BASE_IMAGE_KEY), ("wrist_image", WRIST_IMAGE_KEY)):
        have = (*episode.image_sizes[role], 3)
        if have != writer.image_shapes[key]:
            raise BagError(episode.path, f"{role} is {have[1]}x{have[0]}, the dataset's is "
                                         f"{writer.image_shapes[key][1]}x{writer.image_shapes[key][0]}")
    metadata = {
        "source_bag": episode.name,
        "success": episode.success,
        "operator": str(episode.info.get("operator", "")),
        "instruction": episode.instruction,
        "dropped_frames": episode.dropped_frames,
    }
    target = writer.start_episode(episode.task, metadata)
    fallbacks = 0
    try:
        buffer: list[tuple[int, np.ndarray, np.ndarray]] = []

        def flush() -> int:
            indices = np.array([item[0] for item in buffer], dtype=np.int64)
            base = [item[1] for item in buffer]
            boxes = sanitise_boxes(backend.annotate(episode, indices, base))
            target.add_frames(
                base, [item[2] for item in buffer], episode.state[indices], episode.action[indices],
                boxes, episode.timestamps[indices],
            )
            buffer.clear()
            return int((boxes[:, 4] < 0.5).sum())

        for item in episode.iter_frames():
            buffer.append(item)
            if len(buffer) >= batch_frames:
                fallbacks += flush()
        if buffer:
            fallbacks += flush()
        target.metadata["gaze_fallbacks"] = fallbacks
        target.finish()
    except BaseException as error:
        target.discard()
        if isinstance(error, (BagError, KeyboardInterrupt, SystemExit, MemoryError)):
            raise
        raise BagError(episode.path, f"conversion failed ({type(error).__name__}: {error})") from error
    return fallbacks
