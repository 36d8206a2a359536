"""Bags -> LeRobot v3.0 dataset: the ``reconvla dataset build`` pipeline.

Per bag: read and align (pass 1), keep it if the episode succeeded (by default), then
stream its frames (pass 2) through the gaze backend and the v3 writer. A bag that
cannot be converted is reported by name and skipped (or fails the build with
``strict``); the dataset appears at ``out`` only when the build completed.

What the build guarantees for every episode it writes (each fault has its per-bag outcome):
- time-correct rows: row k of an episode is at k / fps. A hole of at most ``max_gap_s``
  (default two frame periods) is filled with the nearest messages; a longer one splits the
  bag into separate episodes (``on_gap="split"``, default) or fails the bag (``"refuse"``);
- every required stream comes at least at the dataset fps, else the bag fails (a 1 Hz joint
  stream would otherwise be stretched over ten frames);
- one image size (``image_size``, default the most common among the bags): bags of another size
  are resized, with a note;
- colour only: single-channel (mono8) cameras fail the bag unless ``allow_mono``.

Operator interventions (``interventions``): every frame carries the ``intervention`` flag (the
recording's intervention topic; False without it). ``"all"`` keeps every frame, ``"only"`` keeps
only intervention frames (each unbroken run becomes an episode of its own, so rows stay on the fps
grid; a bag without any is skipped and listed), ``"weight=W"`` keeps every frame and stores a
``sample_weight`` of W on intervention frames and 1 on the others.

Relabelled states: every frame also carries the ``relabelled`` flag (the recording's relabelled
topic, which ``reconvla dagger`` writes on the frames the policy drove: their action is the expert's
label, not what the arm did; False without it). The training loader ends a sample's action chunk at
the first relabelled frame after its own (``data/dataset.py``).

Finding and peeking at bags: ``bag_discovery.py``; the per-episode checks and notes: ``build_checks.py``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reconvla_core.data.bag_discovery import find_bags, peek_image_sizes, peek_success
from reconvla_core.data.bag_reader import AlignConfig, BagEpisode, BagError, BagTopics, read_episode
from reconvla_core.data.build_checks import check_episode, episode_figures, intervention_segments, resize_notes
from reconvla_core.data.gaze import GazeBackend, make_gaze_backend, sanitise_boxes
from reconvla_core.data.lerobot_v3 import BASE_IMAGE_KEY, WRIST_IMAGE_KEY, LeRobotV3Writer

logger = logging.getLogger(__name__)

GAP_POLICIES = ("split", "refuse")
_CAMERA_ROLES = ("base_image", "wrist_image")
INTERVENTION_MODES = ("all", "only", "weight")


def parse_interventions(text: str) -> tuple[str, float]:
    """``all`` | ``only`` | ``weight=W`` (W > 0) -> (mode, weight of an intervention frame)."""
    text = str(text).strip()
    if text in ("all", "only"):
        return text, 1.0
    if text.startswith("weight="):
        try:
            weight = float(text[len("weight="):])
        except ValueError:
            weight = float("nan")
        if np.isfinite(weight) and weight > 0:
            return "weight", weight
    raise ValueError(f"interventions must be 'all', 'only' or 'weight=W' with W > 0, got {text!r}")


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
    max_gap_s: float | None = None  # default: two frame periods
    on_gap: str = "split"  # "split" the episode at a longer gap, or "refuse" the bag
    allow_low_rate: bool = False  # convert bags with a stream slower than fps (warn instead)
    image_size: tuple[int, int] | None = None  # (width, height); default: most common among the bags
    allow_mono: bool = False
    dropped_warn_pct: float = 5.0  # one warning line per bag that dropped more of its frames
    recover: bool = False  # recover cut-off MCAP bags (bag recover) before reading them
    interventions: str = "all"  # all | only | weight=W (see the module docstring)
    intervention_mode: str = field(init=False, default="all")  # parsed from interventions
    intervention_weight: float = field(init=False, default=1.0)

    def __post_init__(self) -> None:
        self.intervention_mode, self.intervention_weight = parse_interventions(self.interventions)
        if not self.bags:
            raise ValueError("no bags given (--bags DIR [DIR ...])")
        if self.batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {self.batch_frames}")
        if self.on_gap not in GAP_POLICIES:
            raise ValueError(f"on_gap must be one of {GAP_POLICIES}, got {self.on_gap!r}")
        if self.max_gap_s is None:
            self.max_gap_s = 2.0 / self.fps
        if self.max_gap_s < 1.0 / self.fps:
            raise ValueError(f"max_gap must be at least one frame period ({1e3 / self.fps:.0f} ms), "
                             f"got {self.max_gap_s * 1e3:.0f} ms")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"image_size must be (width, height) >= 1, got {self.image_size}")


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
    filled_frames: int = 0
    image_size: str = ""  # WxH of the dataset's camera images
    interventions: str = "all"
    intervention_frames: int = 0  # frames written with the intervention flag set
    skipped_no_interventions: list[str] = field(default_factory=list)  # --interventions only
    # Every bag with its outcome: converted | skipped_unsuccessful | failed, and per-bag figures
    bags: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_image_size(text: str) -> tuple[int, int]:
    """``"320x240"`` -> (320, 240) (width, height)."""
    width, sep, height = text.lower().partition("x")
    try:
        size = (int(width), int(height))
    except ValueError:
        size = (0, 0)
    if not sep or min(size) < 1:
        raise ValueError(f"image size must look like WIDTHxHEIGHT (e.g. 320x240), got {text!r}")
    return size


def dataset_image_sizes(bags: Sequence[Path], config: BuildConfig) -> dict[str, tuple[int, int]] | None:
    """role -> (h, w) the dataset stores: ``image_size`` for both cameras, else the most common pair
    among the bags that will be converted (ties: the first listed)."""
    if config.image_size is not None:
        width, height = config.image_size
        return {role: (height, width) for role in _CAMERA_ROLES}
    counts: Counter[tuple[tuple[int, int], tuple[int, int]]] = Counter()
    for bag in bags:
        if not config.include_unsuccessful and peek_success(bag) is False:
            continue
        pair = peek_image_sizes(bag, config.topics)
        if pair is not None:
            counts[pair] += 1
    if not counts:
        return None  # no readable bag: the conversions say why
    base, wrist = counts.most_common(1)[0][0]
    return {"base_image": base, "wrist_image": wrist}


def build_dataset(config: BuildConfig) -> BuildReport:
    """Convert ``config.bags`` into a LeRobot v3.0 dataset at ``config.out``."""
    started = time.perf_counter()
    if Path(config.out).exists() and not config.overwrite:
        raise FileExistsError(f"{config.out} exists already; use --overwrite to replace it")
    bags = find_bags(config.bags)
    recovered = _recover_bags(bags, config) if config.recover else {}
    backend = make_gaze_backend(
        config.gaze, boxes_file=config.gaze_boxes_file, model_dir=config.gaze_model_dir,
        **({"batch_size": config.gaze_batch_size, "box_threshold": config.gaze_box_threshold,
            "device": config.gaze_device} if config.gaze == "grounding-dino" else {}),
    )
    align = AlignConfig(
        fps=config.fps, tolerance_s=config.tolerance_s, stamp_source=config.stamp_source,
        require_gaze=backend.needs_gaze_topic, max_gap_s=config.max_gap_s,
    )
    report = BuildReport(fps=config.fps, out=str(config.out), gaze=config.gaze, bags_found=len(bags),
                         interventions=config.interventions)
    slot = _WriterSlot(sizes=dataset_image_sizes(bags, config))
    if slot.sizes is not None:
        report.image_size = "{1}x{0}".format(*slot.sizes["base_image"])
    try:
        for bag in _progress(bags, config.progress):
            if bag in recovered and isinstance(recovered[bag], BagError):
                _fail(bag, recovered[bag], config, report, {"recovered": False})
                continue
            _convert_bag(bag, config, align, backend, slot, report, recovered=bag in recovered)
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
    """The dataset writer, created with the first converted episode, and the image sizes it stores."""

    writer: LeRobotV3Writer | None = None
    sizes: dict[str, tuple[int, int]] | None = None  # role -> (h, w); None: the first episode's


def _recover_bags(bags: Sequence[Path], config: BuildConfig) -> dict[Path, Any]:
    """``--recover``: cut-off MCAP bags are recovered in place first. bag -> report, or BagError."""
    from reconvla_core.data.recover import RecoveryError, needs_recovery, recover_bag

    done: dict[Path, Any] = {}
    for bag in bags:
        try:
            if not needs_recovery(bag):
                continue
            done[bag] = recover_bag(bag)
            logger.warning("%s: recovered %d messages (%.2f s) from a cut-off bag", bag.name,
                           done[bag].messages, done[bag].seconds)
        except (RecoveryError, OSError) as error:
            done[bag] = BagError(bag, f"could not be recovered: {error}")
    return done


def _fail(bag: Path, error: BagError, config: BuildConfig, report: BuildReport, entry: dict[str, Any]) -> None:
    if config.strict:
        raise error
    logger.error("skipping bag %s", error)
    report.failed.append({"bag": bag.name, "reason": error.reason})
    report.bags.append({"bag": bag.name, "outcome": "failed", "reason": error.reason, **entry})


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
    recovered: bool = False,
) -> None:
    entry: dict[str, Any] = {"recovered": True} if recovered else {}
    if not config.include_unsuccessful and peek_success(bag) is False:
        report.skipped_unsuccessful.append(bag.name)
        report.bags.append({"bag": bag.name, "outcome": "skipped_unsuccessful", **entry})
        return
    try:
        if not recovered and _looks_cut_off(bag):
            raise BagError(bag, "cut off (no metadata.yaml or no MCAP footer: recorder killed or disk full); "
                                f"run 'reconvla bag recover {bag}' or build with --recover")
        episode = read_episode(bag, config.topics, align)
        if not config.include_unsuccessful and not episode.success:
            report.skipped_unsuccessful.append(bag.name)
            report.bags.append({"bag": bag.name, "outcome": "skipped_unsuccessful", **entry})
            return
        entry.update(episode_figures(episode))
        notes = check_episode(episode, config)
        segments = intervention_segments(episode, config.intervention_mode)
        if not segments:  # --interventions only, and the operator never took over
            report.skipped_no_interventions.append(bag.name)
            report.bags.append({"bag": bag.name, "outcome": "skipped_no_interventions", **entry})
            return
        if slot.writer is None:
            _open_writer(config, episode, slot)
        assert slot.writer is not None
        notes += resize_notes(episode, slot.writer)
        fallbacks = _write_episode(slot.writer, episode, backend, config.batch_frames, segments,
                                   config.intervention_weight)
    except BagError as error:
        _fail(bag, error, config, report, entry)
        return
    for note in notes:
        logger.warning("%s: %s", bag.name, note)
    frames = sum(stop - start for start, stop in segments)
    flagged = sum(int(episode.intervention[start:stop].sum()) for start, stop in segments)
    report.bags.append({"bag": bag.name, "outcome": "converted", "episodes": len(segments),
                        "notes": notes, **entry, "intervention_frames": flagged})
    report.episodes += len(segments)
    report.frames += frames
    report.intervention_frames += flagged
    report.dropped_frames += episode.dropped_frames
    report.filled_frames += episode.filled_frames
    report.gaze_fallbacks += fallbacks


def _looks_cut_off(bag: Path) -> bool:
    from reconvla_core.data.recover import needs_recovery

    try:
        return needs_recovery(bag)
    except OSError:
        return False  # unreadable: read_episode says why


def _open_writer(config: BuildConfig, episode: BagEpisode, slot: _WriterSlot) -> None:
    sizes = slot.sizes or episode.image_sizes
    shapes = {
        BASE_IMAGE_KEY: (*sizes["base_image"], 3),
        WRIST_IMAGE_KEY: (*sizes["wrist_image"], 3),
    }
    slot.writer = LeRobotV3Writer(
        config.out, fps=config.fps, image_shapes=shapes, image_format=config.image_format,
        overwrite=config.overwrite, encode_workers=config.encode_workers,
        sample_weights=config.intervention_mode == "weight",
    )
    slot.writer.open()


def _resized(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if image.shape[:2] == tuple(shape[:2]):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _write_episode(writer: LeRobotV3Writer, episode: BagEpisode, backend: GazeBackend, batch_frames: int,
                   segments: list[tuple[int, int]] | None = None, intervention_weight: float = 1.0) -> int:
    """Stream one bag into the writer in one pass, one dataset episode per segment (each starting at
    t = 0 on the fps grid; default the bag's segments); frames of another size are resized to the
    dataset's. Intervention frames get ``intervention_weight`` as their sample weight (in a dataset
    that stores one). Returns the number of whole-image gaze fallbacks."""
    base_shape, wrist_shape = writer.image_shapes[BASE_IMAGE_KEY], writer.image_shapes[WRIST_IMAGE_KEY]
    metadata = {
        "source_bag": episode.name,
        "success": episode.success,
        "operator": str(episode.info.get("operator", "")),
        "instruction": episode.instruction,
        "dropped_frames": episode.dropped_frames,
    }
    segments = segments if segments is not None else (list(episode.segments) or [(0, episode.num_frames)])
    flags, relabelled = (values if values.shape[0] == episode.num_frames else np.zeros(episode.num_frames, dtype=bool)
                         for values in (episode.intervention, episode.relabelled))
    weighted = writer.features.get("sample_weight") is not None
    total_fallbacks = 0
    written = 0
    frames = episode.iter_frames()
    for first, stop in segments:
        target = writer.start_episode(episode.task, dict(metadata))
        origin = episode.timestamps[first]
        fallbacks = 0
        try:
            buffer: list[tuple[int, np.ndarray, np.ndarray]] = []

            def flush() -> int:
                indices = np.array([item[0] for item in buffer], dtype=np.int64)
                base = [_resized(item[1], base_shape) for item in buffer]
                boxes = sanitise_boxes(backend.annotate(episode, indices, base))
                target.add_frames(
                    base, [_resized(item[2], wrist_shape) for item in buffer], episode.state[indices],
                    episode.action[indices], boxes, episode.timestamps[indices] - origin,
                    intervention=flags[indices], relabelled=relabelled[indices],
                    sample_weight=np.where(flags[indices], intervention_weight, 1.0) if weighted else None,
                )
                buffer.clear()
                return int((boxes[:, 4] < 0.5).sum())

            for item in frames:
                if item[0] < first:
                    continue  # a frame between two intervention runs (--interventions only)
                buffer.append(item)
                if len(buffer) >= batch_frames:
                    fallbacks += flush()
                if item[0] == stop - 1:
                    break
            if buffer:
                fallbacks += flush()
            target.metadata["gaze_fallbacks"] = fallbacks
            target.metadata["intervention_frames"] = int(flags[first:stop].sum())
            target.finish()
        except BaseException as error:
            target.discard()
            if isinstance(error, (KeyboardInterrupt, SystemExit, MemoryError)):
                raise
            kept = f" ({written} of its {len(segments)} episodes were written before)" if written else ""
            if isinstance(error, BagError):
                raise BagError(episode.path, error.reason + kept) from error
            raise BagError(episode.path, f"conversion failed ({type(error).__name__}: {error}){kept}") from error
        written += 1
        total_fallbacks += fallbacks
    return total_fallbacks
