"""ROS-layer overhead, missed control ticks and memory slope of the deployed node graph.

camera_ingest, policy (tiny model by default) and arm_command (piper_ros backend) each run in
their own process, as the launch files run them, with real DDS between them. This process plays
the cameras (base + wrist images at ``--camera-rate``) and the piper_ros driver (feedback at
``--feedback-rate``, a perfect follower of joint_ctrl_single). The nodes are instrumented
subclasses that append (frame stamp, event, time.monotonic()) lines to a file per process while
measuring; CLOCK_MONOTONIC is system-wide, so the parent merges them after the run.

Figures:
- ``overhead_p50_ms`` / ``overhead_p99_ms``: per chunk, camera image publish -> command published
  by arm_command's first control tick after the chunk arrived, MINUS what is not ROS-layer work
  and is reported separately: the model's inference time (``inference_*``), the time the frame
  waited because the policy worker was still busy with the previous inference
  (``policy_busy_wait_*``) and the wait for the next control tick (``tick_wait_*``, under one
  period by construction of a fixed-rate loop). What remains is DDS transport (3 hops), image
  conversion, pairing, stitching, policy pre/post-processing, queue push, and the arm_command tick
  (feedback, queue sample, safety filter, command publish); ``camera_to_policy_*``,
  ``policy_wake_*``, ``policy_to_arm_*`` and ``arm_tick_*`` break it down. The stitch (the model
  processor's resize of both camera views, arguably model pre-processing) is inside the overhead;
  ``stitch_*`` and ``overhead_excluding_stitch_*`` show it separately. ``dds_*`` is the floor no
  node code can remove: the three inter-process hops (camera -> camera_ingest, camera_ingest ->
  policy, policy -> arm_command), measured in the same run; ``overhead_excluding_dds_*`` is the rest.
- ``--cpu-load N``: the loaded-machine mode, N busy processes competing for the cores while
  measuring (a training job, a browser), to set next to the quiet figure.
- ``missed_ticks``: control periods lost at ``--control-rate``: a tick that starts more than 1.5
  periods after the previous one counts the periods it skipped (arm_command's own definition).
- ``rss_slope_mb_per_min``: least-squares slope of the three node processes' summed RSS, sampled
  every second after the warm-up (per-node slopes in ``rss_slope_by_node``).
The event log and the figures' arithmetic live in ``ros_events.py``; this module runs the processes.
rclpy is imported inside the functions that run nodes only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from reconvla_core.bench.ros_events import (FRAME_KEY, EventLog, breakdown, missed_ticks, percentiles, read_events,
                                             slope_per_min)

logger = logging.getLogger(__name__)

QUICK_OVERRIDES = {"duration": 15.0, "warmup": 3.0}
ROLES = ("arm", "ingest", "policy")
FOLLOWER_START = [0.0, 1.0, -1.0, 0.0, 0.3, 0.0, 0.03]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds after the warm-up")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds between all nodes ready and measuring (allocators settle)")
    parser.add_argument("--control-rate", type=float, default=30.0, help="arm_command control rate (Hz)")
    parser.add_argument("--camera-rate", type=float, default=30.0, help="camera frame rate (Hz)")
    parser.add_argument("--feedback-rate", type=float, default=100.0, help="fake piper_ros joint_states_single rate")
    parser.add_argument("--image-width", type=int, default=640)
    parser.add_argument("--image-height", type=int, default=480)
    parser.add_argument("--model", choices=("tiny", "stub"), default="tiny",
                        help="tiny: a random tiny ReconVLA checkpoint; stub: constant actions (no torch)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="use this checkpoint instead of a tiny one")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--action-rate", type=float, default=10.0, help="spacing of chunk steps (Hz)")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds to wait for the nodes to start")
    parser.add_argument("--stitch", choices=("cv2", "model"), default="cv2",
                        help="camera_ingest's stitch_backend (model: the processor's PIL stitch)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="the policy node's torch_threads (0: torch's default)")
    parser.add_argument("--cpu-load", type=int, default=0,
                        help="loaded-machine mode: this many busy background processes while measuring")


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return math.nan


# --- the node processes ----------------------------------------------------------------------
def _make_node(role: str, cfg: dict[str, Any], context: Any, log: EventLog) -> Any:
    """The instrumented product node for ``role``."""
    from rclpy.parameter import Parameter

    from reconvla_ros.common import stamp_to_s

    def key_of(stamp: Any) -> int:
        return int(round(stamp_to_s(stamp) * 1e9))

    def params(values: dict[str, Any]) -> list:
        return [Parameter(k, value=v) for k, v in values.items()]

    if role == "ingest":
        from reconvla_ros.camera_ingest import CameraIngest

        class BenchIngest(CameraIngest):
            stitch_s = 0.0

            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                stitch = self._stitch

                def timed_stitch(base: Any, wrist: Any) -> Any:
                    t0 = time.monotonic()
                    out = stitch(base, wrist)
                    self.stitch_s = time.monotonic() - t0
                    return out

                self._stitch = timed_stitch
                publisher = self._frame_pub
                ingest = self

                class TimedPublisher:
                    def publish(self, msg: Any) -> None:
                        key = key_of(msg.header.stamp)
                        log.mark(key, "frame_published")  # the moment publish is called
                        log.mark(key, "stitch_s", ingest.stitch_s)
                        publisher.publish(msg)

                self._frame_pub = TimedPublisher()

            def _on_image(self, stream: str, msg: Any) -> None:
                log.mark(key_of(msg.header.stamp), f"ingest_{stream}_arrival")
                super()._on_image(stream, msg)

        return BenchIngest(context=context, parameter_overrides=params(
            {"model_preset": "tiny", "checkpoint": cfg["checkpoint"] or "", "stitch_backend": cfg["stitch"]}))

    if role == "arm":
        from reconvla_ros.arm_command import ArmCommand

        class BenchArm(ArmCommand):
            pending: list[int] = []

            def _on_chunk(self, msg: Any) -> None:
                key = key_of(msg.header.stamp)
                log.mark(key, "chunk_arrival")
                self.pending.append(key)
                super()._on_chunk(msg)

            def _tick(self) -> None:
                tick_start = time.monotonic()
                log.mark(0, "tick", tick_start)
                sent = self.counts["sent"]
                super()._tick()
                if self.counts["sent"] > sent:
                    done = time.monotonic()
                    keys, self.pending = self.pending, []
                    for key in keys:
                        log.mark(key, "tick_start", tick_start)
                        log.mark(key, "command_sent", done)

        return BenchArm(context=context, parameter_overrides=params({
            "backend": "piper_ros", "control_rate": cfg["control_rate"], "auto_enable": True,
            "observation_timeout": 0.5, "chunk_timeout": 2.0}))

    from reconvla_core.policy import ActionChunk, CheckpointPolicy, Policy
    from reconvla_ros.policy import PolicyNode

    class HoldStill(Policy):
        """Without a checkpoint: a chunk that holds the observed state (measures the graph, not a model)."""

        def infer(self, obs: dict[str, Any]) -> ActionChunk:
            return ActionChunk(np.repeat(np.asarray(obs["state"])[None], 5, axis=0))

    inner = CheckpointPolicy(cfg["checkpoint"], cfg["device"]) if cfg["checkpoint"] else HoldStill()
    last = {"s": 0.0}

    class Timed(Policy):
        """``inner`` with the time of its last inference kept for the event log."""

        def infer(self, obs: dict[str, Any]) -> ActionChunk:
            t0 = time.monotonic()
            out = inner.infer(obs)
            last["s"] = time.monotonic() - t0
            return out

    class BenchPolicy(PolicyNode):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            publisher, node = self._chunk_pub, self
            self.frame_key = 0

            class AliasingPublisher:
                """A chunk is stamped with its observation time, the older of the frame's and the
                state's stamps; the arm's events under that key belong to the frame's record."""

                def publish(self, msg: Any) -> None:
                    chunk_key = key_of(msg.header.stamp)
                    if chunk_key != node.frame_key:
                        log.mark(chunk_key, FRAME_KEY, node.frame_key)
                    publisher.publish(msg)

            self._chunk_pub = AliasingPublisher()

        def _on_frame(self, msg: Any) -> None:
            log.mark(key_of(msg.header.stamp), "policy_arrival")
            super()._on_frame(msg)

        def _next_input(self, last_seq: int) -> Any:
            wait_start = time.monotonic()
            item = super()._next_input(last_seq)
            if item is not None:
                key = key_of(item[1].header.stamp)
                log.mark(key, "worker_wait_start", wait_start)
                log.mark(key, "worker_pick")
            return item

        def _infer_once(self, frame_msg: Any, state: Any, state_time: float, instruction: str) -> None:
            self.frame_key = key_of(frame_msg.header.stamp)
            before = self.counts["chunks"]
            super()._infer_once(frame_msg, state, state_time, instruction)
            if self.counts["chunks"] > before:
                log.mark(key_of(frame_msg.header.stamp), "inference_s", last["s"])

    return BenchPolicy(policy=Timed(), context=context, parameter_overrides=params({
        "instruction": "put the red block in the blue bowl", "viz_rate": 0.0, "max_obs_age": 2.0,
        "action_rate": cfg["action_rate"], "torch_threads": cfg["torch_threads"]}))


def _node_process(role: str, cfg_json: str, events_path: str, ready: Any, measuring: Any, stop: Any) -> None:
    """Child process: one product node spun until ``stop``; events to ``events_path``."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    cfg = json.loads(cfg_json)
    log = EventLog(events_path, measuring)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = executor = None
    try:
        node = _make_node(role, cfg, context, log)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        ready.set()
        while not stop.is_set() and context.ok():
            executor.spin_once(timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
        log.close()


def _burn_cpu(stop: Any) -> None:
    """A background process that keeps one core busy until ``stop`` (the loaded-machine mode)."""
    count = 0
    while not stop.is_set():
        for _ in range(100_000):
            count += 1


def _bench_node(args: argparse.Namespace, context: Any, log: EventLog) -> Any:
    """Cameras (base + wrist, same stamp) and a perfect-follower piper_ros driver."""
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState

    from reconvla_ros.common import COMMAND_QOS, stamp_to_s

    node = Node("bench_cameras_and_driver", context=context)
    base_pub = node.create_publisher(Image, "/camera/camera/color/image_raw", qos_profile_sensor_data)
    wrist_pub = node.create_publisher(Image, "/wrist_camera/color/image_raw", qos_profile_sensor_data)
    state_pub = node.create_publisher(JointState, "joint_states_single", 10)
    rng = np.random.default_rng(0)
    width, height = args.image_width, args.image_height
    pixels = [rng.integers(0, 255, (height, width, 3), dtype=np.uint8).tobytes() for _ in range(2)]
    follower = {"position": list(FOLLOWER_START)}

    def publish_images() -> None:
        stamp = node.get_clock().now().to_msg()
        log.mark(int(round(stamp_to_s(stamp) * 1e9)), "camera_publish")  # before: includes the publish calls
        for publisher, data in zip((base_pub, wrist_pub), pixels):
            msg = Image(height=height, width=width, encoding="rgb8", step=width * 3, data=data)
            msg.header.stamp = stamp
            publisher.publish(msg)

    def on_command(msg: JointState) -> None:
        follower["position"] = list(msg.position)

    def publish_state() -> None:
        msg = JointState(position=follower["position"])
        msg.header.stamp = node.get_clock().now().to_msg()
        state_pub.publish(msg)

    node.create_subscription(JointState, "joint_ctrl_single", on_command, COMMAND_QOS)
    node.create_timer(1.0 / args.camera_rate, publish_images)
    node.create_timer(1.0 / args.feedback_rate, publish_state)
    return node


def _tiny_checkpoint(directory: Path) -> Path:
    from reconvla_core.model import ReconVLA, ReconVLAConfig
    from reconvla_core.piper import GRIPPER_MAX, JOINT_LOWER, JOINT_UPPER

    model = ReconVLA(ReconVLAConfig.from_preset("tiny"), build_reconstruction=False)
    low = np.array(JOINT_LOWER + (0.0,)) * 0.5
    high = np.array(JOINT_UPPER + (GRIPPER_MAX,)) * 0.5
    entry = {"min": low.tolist(), "max": high.tolist(), "q01": low.tolist(), "q99": high.tolist(),
             "mean": ((low + high) / 2).tolist(), "std": ((high - low) / 4).tolist()}
    model.set_norm_stats({"action": entry, "observation.state": entry})
    return model.save_pretrained(directory / "tiny")


# --- the benchmark ---------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="reconvla-bench-ros-") as tmp_dir:
        tmp = Path(tmp_dir)
        checkpoint = args.checkpoint
        if checkpoint is None and args.model == "tiny":
            checkpoint = _tiny_checkpoint(tmp)
        cfg = json.dumps({"checkpoint": str(checkpoint) if checkpoint else "", "device": args.device,
                          "control_rate": args.control_rate, "action_rate": args.action_rate,
                          "stitch": args.stitch, "torch_threads": args.torch_threads})
        measuring, stop = spawn.Event(), spawn.Event()
        processes: dict[str, Any] = {}
        readies: dict[str, Any] = {}
        for role in ROLES:
            readies[role] = spawn.Event()
            processes[role] = spawn.Process(target=_node_process, name=f"bench-{role}", args=(
                role, cfg, str(tmp / f"{role}.jsonl"), readies[role], measuring, stop))
        context = rclpy.Context()
        rclpy.init(context=context)
        log = EventLog(str(tmp / "bench.jsonl"), measuring)
        node = executor = None
        spin_stop = threading.Event()
        spinner = None
        rss: dict[str, list[tuple[float, float]]] = {role: [] for role in ROLES}
        burners: list[Any] = []
        try:
            for process in processes.values():
                process.start()
            deadline = time.monotonic() + args.start_timeout
            for role, ready in readies.items():
                if not ready.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"bench ros: the {role} node did not start within {args.start_timeout} s "
                                       f"(exit code {processes[role].exitcode})")
            node = _bench_node(args, context, log)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)

            def spin() -> None:
                while not spin_stop.is_set() and context.ok():
                    executor.spin_once(timeout_sec=0.05)

            spinner = threading.Thread(target=spin, name="bench-spin")
            spinner.start()
            time.sleep(args.warmup)
            for index in range(args.cpu_load):
                burner = spawn.Process(target=_burn_cpu, name=f"bench-load-{index}", args=(stop,), daemon=True)
                burner.start()
                burners.append(burner)
            load_start = os.getloadavg()[0]
            measuring.set()
            start = time.monotonic()
            while (elapsed := time.monotonic() - start) < args.duration:
                for role, process in processes.items():
                    rss[role].append((elapsed, _rss_mb(process.pid)))
                time.sleep(min(1.0, max(0.0, args.duration - elapsed)))
            measured = time.monotonic() - start
            measuring.clear()
            time.sleep(0.5)  # let the last lines land
        finally:
            measuring.clear()
            stop.set()
            for burner in burners:
                burner.join(timeout=10.0)
            for process in processes.values():
                if process.pid is not None:
                    process.join(timeout=60.0)
                    if process.is_alive():
                        process.terminate()
                        process.join(timeout=10.0)
            spin_stop.set()
            if spinner is not None:
                spinner.join(timeout=10.0)
            if executor is not None:
                executor.shutdown(timeout_sec=2.0)
            if node is not None:
                node.destroy_node()
            rclpy.try_shutdown(context=context)
            log.close()
        events, ticks = read_events([tmp / f"{name}.jsonl" for name in (*ROLES, "bench")])

    parts = breakdown(events)
    event_counts: dict[str, int] = {}
    for record in events.values():
        for name in record:
            event_counts[name] = event_counts.get(name, 0) + 1
    period = 1.0 / args.control_rate
    samples = min(len(rss[role]) for role in ROLES)
    total_rss = [(rss[ROLES[0]][i][0], sum(rss[role][i][1] for role in ROLES)) for i in range(samples)]
    result: dict[str, Any] = {}
    result.update(percentiles(parts["overhead"], "overhead"))
    result["missed_ticks"] = missed_ticks(ticks, period)
    result["control_rate_hz"] = round((len(ticks) - 1) / (max(ticks) - min(ticks)), 3) if len(ticks) > 1 else 0.0
    result["duration_s"] = round(measured, 1)
    result["rss_slope_mb_per_min"] = round(slope_per_min(total_rss), 3)
    result["rss_slope_by_node"] = {role: round(slope_per_min(rss[role]), 3) for role in ROLES}
    result["rss_mb_by_node"] = {role: round(rss[role][-1][1], 1) if rss[role] else math.nan for role in ROLES}
    for name in ("dds", "overhead_excluding_dds", "overhead_excluding_stitch", "stitch", "end_to_end", "inference", "policy_busy_wait", "tick_wait",
                 "camera_to_policy", "camera_to_ingest", "ingest_processing", "ingest_to_policy", "policy_wake",
                 "policy_to_arm", "arm_tick"):
        result.update(percentiles(parts[name], name))
    gaps = np.diff(np.sort(ticks)) * 1e3 if len(ticks) > 1 else np.array([math.nan])
    result.update({
        "tick_interval_max_ms": round(float(np.max(gaps)), 3),
        "ticks": len(ticks),
        "chunks_measured": len(parts["overhead"]),
        "event_counts": event_counts,
        "target_control_rate_hz": args.control_rate,
        "model": "checkpoint" if args.checkpoint else args.model,
        "image_size": f"{args.image_width}x{args.image_height}",
        "stitch_backend": args.stitch,
        "torch_threads": args.torch_threads,
        "cpu_load_workers": args.cpu_load,
        "load_average_1min_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "definition": ("overhead = camera publish -> command published, minus model inference, minus the wait for "
                       "a busy policy worker, minus the wait for the next control tick; one process per node, "
                       "real DDS"),
    })
    return result
