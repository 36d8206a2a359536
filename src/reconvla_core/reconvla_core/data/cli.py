"""``reconvla dataset build | info | view`` and ``reconvla bag recover``.

Heavy imports (pyarrow, rosbags, PIL, torch) stay inside the command functions so
``reconvla --help`` stays fast. ``--json`` prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    dataset = subparsers.add_parser("dataset", help="build, inspect and view LeRobot v3.0 datasets")
    sub = dataset.add_subparsers(dest="dataset_command", metavar="COMMAND", required=True)

    build = sub.add_parser("build", help="rosbag2 episodes -> LeRobot v3.0 dataset")
    build.add_argument("--bags", nargs="+", type=Path, required=True, metavar="DIR",
                       help="bag directories, or directories holding bag directories")
    build.add_argument("--out", type=Path, required=True, help="dataset directory to create")
    build.add_argument("--gaze", nargs="+", default=["sim"], metavar="BACKEND",
                       help="gaze boxes: sim | grounding-dino | boxes FILE (default: sim)")
    build.add_argument("--gaze-model", type=Path, default=None,
                       help="local Grounding DINO directory (for --gaze grounding-dino)")
    build.add_argument("--gaze-batch-size", type=int, default=8)
    build.add_argument("--gaze-device", default="cpu", help="torch device for Grounding DINO (cpu, cuda, cuda:1)")
    build.add_argument("--gaze-threshold", type=float, default=0.3,
                       help="Grounding DINO box score threshold; below it the frame falls back to the whole image")
    build.add_argument("--fps", type=float, default=10.0, help="dataset frame rate (default 10)")
    build.add_argument("--tolerance-ms", type=float, default=None,
                       help="max distance to the nearest message (default: half a frame period)")
    build.add_argument("--stamp-source", choices=("log", "header"), default="log",
                       help="align on bag receive time (log, default) or message header stamps")
    build.add_argument("--topic", action="append", default=[], metavar="ROLE=TOPIC",
                       help="override a topic, e.g. base_image=/camera/color/image_raw (repeatable); roles: "
                            "base_image wrist_image follower_state leader_command instruction gaze_box episode_info "
                            "intervention")
    build.add_argument("--image-format", choices=("jpeg", "png"), default="jpeg",
                       help="camera frame encoding in the parquet image columns (jpeg q95, default; png: lossless, "
                            "~10x slower to build and ~9x larger)")
    build.add_argument("--include-unsuccessful", action="store_true",
                       help="also convert episodes whose info says success=false (or has no info)")
    build.add_argument("--max-gap", type=float, default=None, metavar="SECONDS",
                       help="longest hole between frames inside one episode (default: 2 frame periods); shorter "
                            "holes are filled with the nearest messages so rows stay on the fps grid, a longer one "
                            "splits the bag into episodes (or fails it with --on-gap refuse)")
    build.add_argument("--on-gap", choices=("split", "refuse"), default="split",
                       help="what a gap longer than --max-gap does to its bag (default: split)")
    build.add_argument("--allow-low-rate", action="store_true",
                       help="convert bags with a camera or joint stream slower than --fps (default: fail them)")
    build.add_argument("--image-size", default=None, metavar="WxH",
                       help="camera image size of the dataset (default: the most common among the bags); "
                            "bags of another size are resized")
    build.add_argument("--allow-mono", action="store_true",
                       help="convert mono8 cameras to 3 equal channels (default: fail those bags)")
    build.add_argument("--warn-dropped-pct", type=float, default=5.0, metavar="PCT",
                       help="warn (one line per bag) when more than PCT %% of its frames were dropped (default 5)")
    build.add_argument("--recover", action="store_true",
                       help="recover cut-off MCAP bags in place first (as 'reconvla bag recover')")
    build.add_argument("--interventions", default="all", metavar="all|only|weight=W",
                       help="operator interventions (the recording's /reconvla/intervention flag, stored per frame "
                            "as the 'intervention' feature): all = keep every frame (default); only = keep only "
                            "intervention frames, each unbroken run an episode of its own; weight=W = keep every "
                            "frame and store a 'sample_weight' feature, W on intervention frames, 1 elsewhere")
    build.add_argument("--strict", action="store_true", help="fail the build on the first bad bag")
    build.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    build.add_argument("--workers", type=int, default=None, help="image-encoding threads (default: min(4, cores))")
    build.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    build.set_defaults(func=cmd_build)

    info = sub.add_parser("info", help="summary of a LeRobot v3 dataset")
    info.add_argument("root", type=Path)
    info.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    info.set_defaults(func=cmd_info)

    view = sub.add_parser("view", help="frames of one episode with the gaze box drawn (PNG or GIF)")
    view.add_argument("root", type=Path)
    view.add_argument("--episode", type=int, default=0)
    view.add_argument("--out", type=Path, required=True, help="*.png (contact sheet) or *.gif (animation)")
    view.add_argument("--max-frames", type=int, default=64, help="frames shown (evenly spaced)")
    view.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    view.set_defaults(func=cmd_view)

    bag = subparsers.add_parser("bag", help="repair rosbag2 episodes")
    bag_sub = bag.add_subparsers(dest="bag_command", metavar="COMMAND", required=True)
    recover = bag_sub.add_parser(
        "recover", help="make a cut-off MCAP episode (killed recorder, full disk) readable again, like "
                        "'ros2 bag reindex': rebuilds the summary and metadata.yaml from the whole records on disk")
    recover.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                         help="bag directories, or directories holding bag directories")
    recover.add_argument("--force", action="store_true", help="rewrite bags that look whole too")
    recover.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    recover.set_defaults(func=cmd_bag_recover)


def parse_gaze(values: list[str]) -> tuple[str, Path | None]:
    """``["sim"]`` | ``["grounding-dino"]`` | ``["boxes", FILE]`` -> (backend, file)."""
    from reconvla_core.cli.main import CLIError
    from reconvla_core.data.gaze import GAZE_BACKENDS

    kind = values[0]
    if kind not in GAZE_BACKENDS:
        raise CLIError(f"--gaze {kind}: choose sim, grounding-dino or boxes FILE")
    if kind == "boxes":
        if len(values) != 2:
            raise CLIError("--gaze boxes needs exactly one FILE: --gaze boxes boxes.json")
        return kind, Path(values[1])
    if len(values) != 1:
        raise CLIError(f"--gaze {kind} takes no further argument, got {values[1:]}")
    return kind, None


def cmd_build(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import CLIError, emit_result
    from reconvla_core.data.bag_reader import BagError, BagTopics
    from reconvla_core.data.build import BuildConfig, build_dataset, parse_image_size, parse_interventions

    gaze, boxes_file = parse_gaze(args.gaze)
    try:
        parse_interventions(args.interventions)
    except ValueError as error:
        raise CLIError(f"--interventions: {error}") from None
    config = BuildConfig(
        bags=args.bags,
        out=args.out,
        fps=args.fps,
        tolerance_s=None if args.tolerance_ms is None else args.tolerance_ms / 1000.0,
        stamp_source=args.stamp_source,
        topics=BagTopics.from_overrides(args.topic),
        gaze=gaze,
        gaze_boxes_file=boxes_file,
        gaze_model_dir=args.gaze_model,
        gaze_batch_size=args.gaze_batch_size,
        gaze_box_threshold=args.gaze_threshold,
        gaze_device=args.gaze_device,
        include_unsuccessful=args.include_unsuccessful,
        strict=args.strict,
        image_format=args.image_format,
        overwrite=args.overwrite,
        encode_workers=args.workers,
        progress=True,
        max_gap_s=args.max_gap,
        on_gap=args.on_gap,
        allow_low_rate=args.allow_low_rate,
        image_size=None if args.image_size is None else parse_image_size(args.image_size),
        allow_mono=args.allow_mono,
        dropped_warn_pct=args.warn_dropped_pct,
        recover=args.recover,
        interventions=args.interventions,
    )
    try:
        report = build_dataset(config)
    except BagError as error:
        raise CLIError(f"bad bag {error} (the build was not written; drop --strict to skip bad bags)") from None
    except FileExistsError as error:
        raise CLIError(str(error)) from None
    result: dict[str, Any] = {
        "episodes": report.episodes,
        "frames": report.frames,
        "gaze_fallbacks": report.gaze_fallbacks,
        "dropped_frames": report.dropped_frames,
        "filled_frames": report.filled_frames,
        "fps": report.fps,
        "image_size": report.image_size,
        "out": report.out,
        "skipped_unsuccessful": len(report.skipped_unsuccessful),
        "interventions": report.interventions,
        "intervention_frames": report.intervention_frames,
        "skipped_no_interventions": len(report.skipped_no_interventions),
        "failed": report.failed,
        "seconds": report.seconds,
        "frames_per_s": report.frames_per_s,
        "bags": report.bags,
    }
    for failure in report.failed:
        logger.warning("skipped bad bag %s: %s", failure["bag"], failure["reason"])
    emit_result(result, args.json)
    return 0


def cmd_bag_recover(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import emit_result
    from reconvla_core.data.bag_discovery import find_bags
    from reconvla_core.data.recover import RecoveryError, recover_bag

    bags: list[dict[str, Any]] = []
    for bag in find_bags(args.paths):
        try:
            report = recover_bag(bag, force=args.force)
        except RecoveryError as error:
            logger.error("%s", error)
            bags.append({"bag": bag.name, "outcome": "failed", "reason": str(error)})
            continue
        entry = report.to_dict()
        entry["bag"] = bag.name
        entry["outcome"] = "recovered" if report.recovered else "whole"
        if report.recovered:
            logger.info("%s: recovered %d messages, %.2f s%s", bag.name, report.messages, report.seconds,
                        f"; stopped at {report.stopped_at}" if report.stopped_at else "")
        bags.append(entry)
    failed = [b for b in bags if b["outcome"] == "failed"]
    result = {
        "recovered": sum(b["outcome"] == "recovered" for b in bags),
        "whole": sum(b["outcome"] == "whole" for b in bags),
        "failed": len(failed),
        "messages": sum(int(b.get("messages", 0)) for b in bags),
        "seconds": round(sum(float(b.get("seconds", 0.0)) for b in bags), 3),
        "bags": bags,
    }
    emit_result(result, args.json)
    return 2 if failed else 0


def dataset_summary(root: Path) -> dict[str, Any]:
    """What ``dataset info`` prints: counts, fps, features, tasks, success/operators, gaze validity."""
    import numpy as np

    from reconvla_core.data.lerobot_v3 import GAZE_KEY, load_episodes, load_info, load_stats, load_tasks

    info = load_info(root)
    episodes = load_episodes(root)
    tasks = load_tasks(root)
    summary: dict[str, Any] = {
        "root": str(root),
        "codebase_version": info["codebase_version"],
        "robot_type": info.get("robot_type"),
        "fps": info["fps"],
        "episodes": info["total_episodes"],
        "frames": info["total_frames"],
        "tasks": [tasks[index] for index in sorted(tasks)],
        "features": {key: {"dtype": ft["dtype"], "shape": ft["shape"]} for key, ft in info["features"].items()},
        "episode_lengths": {
            "min": min((e["length"] for e in episodes), default=0),
            "max": max((e["length"] for e in episodes), default=0),
            "mean": round(float(np.mean([e["length"] for e in episodes])), 2) if episodes else 0.0,
        },
    }
    operators = sorted({str(e["operator"]) for e in episodes if e.get("operator")})
    if operators:
        summary["operators"] = operators
    try:
        stats = load_stats(root)
    except FileNotFoundError:
        stats = {}
    if GAZE_KEY in stats:
        summary["gaze_valid_fraction"] = round(float(np.asarray(stats[GAZE_KEY]["mean"])[4]), 4)
    if "intervention" in stats:  # HG-DAgger recordings: the share of frames the operator drove
        summary["intervention_fraction"] = round(float(np.asarray(stats["intervention"]["mean"]).reshape(-1)[0]), 4)
    if "gaze_fallbacks" in (episodes[0] if episodes else {}):
        summary["gaze_fallbacks"] = int(sum(int(e.get("gaze_fallbacks") or 0) for e in episodes))
    return summary


def cmd_info(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import emit_result

    emit_result(dataset_summary(args.root), args.json)
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import emit_result
    from reconvla_core.data.view import render_episode

    result = render_episode(args.root, args.episode, args.out, max_frames=args.max_frames)
    emit_result(result, args.json)
    return 0
