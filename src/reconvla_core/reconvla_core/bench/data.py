"""Dataset build speed (two 640x480 cameras) and loader wait share during tiny-model training steps.

Build: synthetic camera-like episodes (gradient background, moving blocks, sensor noise)
are written as MCAP bags first (not timed), then ``build_dataset`` is timed end to end
(read + align + gaze + encode + parquet). Target: >= 100 dataset frames/s.

Loader: ``VLADataset`` through the tiny model's processor in a ``DataLoader`` with
``--workers`` workers feeding forward+backward+step of the tiny ReconVLA; the share of
wall time spent waiting for the next batch is reported. Target: < 10 % with 2 workers.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BUILD_TARGET_FPS = 100.0
WAIT_TARGET_FRACTION = 0.10
QUICK_OVERRIDES = {"episodes": 1, "seconds": 6.0, "steps": 4, "warmup_steps": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=2, help="synthetic episodes to build")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each episode (s)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--camera-hz", type=float, default=30.0, help="camera rate in the bags (real: 30, sim: 10)")
    parser.add_argument("--joint-hz", type=float, default=200.0, help="joint-state rate in the bags (real: 200)")
    parser.add_argument("--fps", type=float, default=10.0, help="dataset fps")
    parser.add_argument("--image-format", choices=("png", "jpeg", "both"), default="both")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the loader benchmark")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--skip-loader", action="store_true", help="only measure the build")
    parser.add_argument("--workdir", type=Path, default=None, help="where bags and datasets go (default: a temp dir)")


class _SceneRenderer:
    """Camera-like frames: a smooth background, three coloured blocks that move, sensor noise."""

    def __init__(self, height: int, width: int, camera: int) -> None:
        rng = np.random.default_rng(camera)
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
        self.background = np.stack([90 + 60 * x / width, 100 + 40 * y / height, 120 + 30 * (x + y) / (width + height)],
                                   axis=-1) * tint
        self.noise = rng.integers(-3, 4, size=(8, height, width, 3)).astype(np.float32)
        self.blocks = [(rng.uniform(0.1, 0.7), rng.uniform(0.2, 0.7), rng.integers(0, 255, 3)) for _ in range(3)]
        self.height, self.width = height, width

    def frame(self, index: int) -> np.ndarray:
        image = self.background + self.noise[index % len(self.noise)]
        for number, (bx, by, colour) in enumerate(self.blocks):
            cx = int((bx + 0.1 * np.sin(0.05 * index + number)) * self.width)
            cy = int((by + 0.05 * np.cos(0.04 * index + number)) * self.height)
            size = self.height // 8
            image[max(cy, 0) : cy + size, max(cx, 0) : cx + size] = colour
        return np.clip(image, 0, 255).astype(np.uint8)


def write_synthetic_bags(folder: Path, args: argparse.Namespace) -> int:
    """Episodes at real-robot rates; returns the number of image messages written."""
    from reconvla_core import interfaces as itf
    from reconvla_core.data.bag_writer import EpisodeBagWriter

    images = 0
    base_renderer = _SceneRenderer(args.height, args.width, 0)
    wrist_renderer = _SceneRenderer(args.height, args.width, 1)
    for episode in range(args.episodes):
        start = 1_700_000_000_000_000_000 + episode * 100_000_000_000
        events: list[tuple[int, str, int]] = []
        events += [(start + round(i * 1e9 / args.joint_hz), "joint", i) for i in range(int(args.seconds * args.joint_hz) + 1)]
        events += [(start + round(i * 1e9 / args.camera_hz), "camera", i)
                   for i in range(int(args.seconds * args.camera_hz) + 1)]
        with EpisodeBagWriter(folder / f"episode_{episode:03d}") as bag:
            bag.write_string(itf.INSTRUCTION_TOPIC, start, "pick up the red block and place it in the box")
            for stamp, kind, i in sorted(events):
                t = (stamp - start) / 1e9
                if kind == "joint":
                    joints = np.array([0.2 * np.sin(t), 1.0 + 0.1 * t, -1.0, 0.0, 0.3, 0.1 * t, 0.03])
                    bag.write_joint_state(itf.FOLLOWER_STATE_TOPIC, stamp, joints)
                    bag.write_joint_state(itf.LEADER_COMMAND_TOPIC, stamp, joints + 0.01)
                else:
                    bag.write_image(itf.BASE_IMAGE_TOPIC, stamp, base_renderer.frame(i))
                    bag.write_image(itf.WRIST_IMAGE_TOPIC, stamp, wrist_renderer.frame(i + 7))
                    bag.write_gaze_box(stamp, [0.3, 0.3, 0.5, 0.5])
                    images += 2
            bag.finish({"success": True, "operator": "bench"})
    return images


def bench_build(workdir: Path, args: argparse.Namespace, image_format: str) -> dict[str, Any]:
    import os

    from reconvla_core.data.build import BuildConfig, build_dataset

    out = workdir / f"dataset_{image_format}"
    load_before = os.getloadavg()[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    report = build_dataset(BuildConfig(bags=[workdir / "bags"], out=out, fps=args.fps, gaze="sim",
                                       image_format=image_format))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    return {
        "image_format": image_format,
        "episodes": report.episodes,
        "frames": report.frames,
        "seconds": round(seconds, 3),
        "frames_per_s": round(report.frames / seconds, 1),
        # CPU time of all threads: frames per CPU-second is what one free core would do (less load-dependent)
        "cpu_s": round(cpu_seconds, 3),
        "frames_per_cpu_s": round(report.frames / max(cpu_seconds, 1e-9), 1),
        "load_average_1min_before": round(load_before, 2),
        "dataset_mb": round(size_mb, 1),
        "meets_target": report.frames / seconds >= BUILD_TARGET_FPS,
    }


def bench_loader(dataset_root: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from reconvla_core.data.dataset import DatasetSource, VLADataset
    from reconvla_core.model import ReconVLA, ReconVLAConfig

    torch.manual_seed(0)
    model = ReconVLA(ReconVLAConfig.from_preset("tiny", recon_target="gaze", chunk_size=5))
    processor = model.processor
    dataset = VLADataset([DatasetSource(dataset_root)], chunk_size=5, processor=processor, val_fraction=0.0,
                         augment=True)
    total_steps = args.warmup_steps + args.steps
    sampler = dataset.sampler(total_steps * args.batch_size, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        collate_fn=processor.collate, persistent_workers=False, prefetch_factor=2 if args.workers else None)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    waits, steps = [], []
    iterator = iter(loader)
    for step in range(total_steps):
        t0 = time.perf_counter()
        batch = next(iterator)
        t1 = time.perf_counter()
        out = model(batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if step >= args.warmup_steps:
            waits.append(t1 - t0)
            steps.append(t2 - t0)
    del iterator
    wait, total = float(np.sum(waits)), float(np.sum(steps))
    return {
        "workers": args.workers,
        "batch_size": args.batch_size,
        "steps": len(steps),
        "step_s_mean": round(total / len(steps), 4),
        "data_wait_s_mean": round(wait / len(steps), 4),
        "data_wait_fraction": round(wait / total, 4),
        "meets_target": wait / total < WAIT_TARGET_FRACTION,
        "torch_threads": torch.get_num_threads(),
    }


def bench_decode(dataset_root: Path, samples: int = 40) -> dict[str, Any]:
    """Raw-sample throughput of the reader alone (one process, no processor)."""
    from reconvla_core.data.dataset import DatasetSource, VLADataset

    dataset = VLADataset([DatasetSource(dataset_root)], chunk_size=5, val_fraction=0.0)
    indices = dataset.sampler(samples, seed=1).indices()
    started = time.perf_counter()
    for index in indices:
        dataset[int(index)]
    seconds = time.perf_counter() - started
    return {"samples": samples, "samples_per_s": round(samples / seconds, 1)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="reconvla-bench-data-"))
    cleanup = args.workdir is None
    try:
        (workdir / "bags").mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        images = write_synthetic_bags(workdir / "bags", args)
        result: dict[str, Any] = {
            "camera": f"{args.width}x{args.height}x2 at {args.camera_hz:g} Hz, joints at {args.joint_hz:g} Hz",
            "dataset_fps": args.fps,
            "bag_images": images,
            "bag_write_s": round(time.perf_counter() - started, 2),
            "target_build_frames_per_s": BUILD_TARGET_FPS,
            "target_data_wait_fraction": WAIT_TARGET_FRACTION,
        }
        formats = ("jpeg", "png") if args.image_format == "both" else (args.image_format,)
        for image_format in formats:
            result[f"build_{image_format}"] = bench_build(workdir, args, image_format)
        root = workdir / f"dataset_{formats[0]}"
        result["reader_raw"] = bench_decode(root)
        if not args.skip_loader:
            result["loader"] = bench_loader(root, args)
        return result
    finally:
        if cleanup:
            shutil.rmtree(workdir, ignore_errors=True)
