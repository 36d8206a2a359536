"""Driving a whole ROS graph from Python: the demo's recording session and closed-loop deployment.

What ``sim.launch.py`` / ``record.launch.py`` start on a robot PC, started here as console-script
processes (the launch package is not available everywhere), plus one client node that calls the
services and watches the topics. Used by ``reconvla demo``; every wait has a timeout.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

STATUS_TOPIC = "/sim_robot/status"


def _parameter_arguments(parameters: Mapping[str, Any]) -> list[str]:
    arguments: list[str] = []
    for name, value in parameters.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = json.dumps(value)  # YAML-quoted so "pick red" or "" stay strings
        else:
            text = json.dumps(value)
        arguments += ["-p", f"{name}:={text}"]
    return arguments


def node_executable(name: str) -> str:
    """The console script of a reconvla_ros node next to this interpreter (venv or colcon install)."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    raise FileNotFoundError(f"node executable '{name}' not found next to {sys.executable}; "
                            "was reconvla_ros installed (make setup, or colcon build and source install/setup.bash)?")


class NodeProcesses:
    """Node processes started like `ros2 run reconvla_ros NAME --ros-args -p ...`, logs to files."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, parameters: Mapping[str, Any]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        command = [node_executable(name), "--ros-args", *_parameter_arguments(parameters)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"node {name} exited with code {process.returncode}: " + " | ".join(tail))

    def stop(self, timeout: float = 10.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5.0)
        self.processes.clear()


class GraphClient:
    """One rclpy node in its own context and executor thread: service calls, status, attention."""

    def __init__(self, name: str = "reconvla_demo") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile
        from std_msgs.msg import String

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        self.status: dict[str, Any] = {}
        self.status_count = 0
        self.node.create_subscription(String, STATUS_TOPIC, self._on_status, QoSProfile(depth=10))
        self._thread = threading.Thread(target=self._spin, name="graph-client", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except (ExternalShutdownException, RuntimeError):
            pass

    def _on_status(self, msg: Any) -> None:
        try:
            status = json.loads(msg.data)
        except json.JSONDecodeError:
            logger.warning("malformed sim_robot status ignored: %r", msg.data[:80])
            return
        with self._lock:
            self.status = status
            self.status_count += 1

    def latest_status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.status)

    def call(self, service: str, srv_type: Any, request: Any = None, timeout: float = 10.0) -> Any:
        client = self.node.create_client(srv_type, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"service {service} not available after {timeout:.0f} s")
            future = client.call_async(request if request is not None else srv_type.Request())
            done = threading.Event()
            future.add_done_callback(lambda _: done.set())
            if not done.wait(timeout):
                raise TimeoutError(f"service {service} did not answer within {timeout:.0f} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def subscribe(self, msg_type: Any, topic: str, callback: Callable[[Any], None], depth: int = 5) -> Any:
        from rclpy.qos import QoSProfile

        return self.node.create_subscription(msg_type, topic, callback, QoSProfile(depth=depth))

    def wait_for(self, predicate: Callable[[], bool], timeout: float, period: float = 0.05,
                 check: Callable[[], None] | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if check is not None:
                check()
            time.sleep(period)
        return predicate()

    def close(self) -> None:
        import rclpy

        self.executor.remove_node(self.node)
        self.node.destroy_node()
        self.executor.shutdown(timeout_sec=2.0)
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)


@contextmanager
def running_graph(nodes: Mapping[str, Mapping[str, Any]], log_dir: Path) -> Iterator[tuple[NodeProcesses, GraphClient]]:
    """Start the node processes and a client; always stop everything (SIGINT, then kill)."""
    processes = NodeProcesses(log_dir)
    client = None
    try:
        for name, parameters in nodes.items():
            processes.start(name, parameters)
        client = GraphClient()
        yield processes, client
    finally:
        if client is not None:
            client.close()
        processes.stop()


def _sim_parameters(seed: int, image_size: tuple[int, int], expert_leader: bool, task: str = "") -> dict[str, Any]:
    width, height = image_size
    return {"seed": seed, "task": task, "image_width": width, "image_height": height,
            "expert_leader": expert_leader, "camera_rate": 10.0, "control_rate": 10.0,
            "physics_rate": 100.0, "joint_state_rate": 50.0}


def start_episode(client: GraphClient, timeout: float = 30.0) -> None:
    """Start a recorder episode; the recorder may still be waiting for the latched instruction."""
    from std_srvs.srv import Trigger

    deadline = time.monotonic() + timeout
    while True:
        answer = client.call("/teleop_recorder/start_episode", Trigger, timeout=timeout)
        if answer.success:
            return
        if "no task text" not in answer.message or time.monotonic() > deadline:
            raise RuntimeError(f"teleop_recorder refused to start an episode: {answer.message}")
        time.sleep(0.2)


def record_demonstrations(bags_dir: Path, episodes: int, seed: int, image_size: tuple[int, int], log_dir: Path,
                          subtask_timeout: float = 60.0, progress: Callable[[int, bool], None] | None = None
                          ) -> dict[str, Any]:
    """The teleop journey in the twin: the expert plays the leader arm, teleop_recorder writes bags.

    One episode per subtask (the instruction is constant inside an episode); the recorder's
    start/stop services frame it; a subtask the expert fails is recorded with success=false
    and the scene is reset. Returns {"episodes", "successful", "seconds"}.
    """
    from std_srvs.srv import SetBool, Trigger

    nodes = {
        "sim_robot": _sim_parameters(seed, image_size, expert_leader=True),
        "teleop_recorder": {"output_dir": str(bags_dir), "operator": "sim-expert", "min_free_gb": 0.5},
    }
    started = time.monotonic()
    successful = recorded = 0
    with running_graph(nodes, log_dir) as (processes, client):
        if not client.wait_for(lambda: client.status_count > 0, timeout=120.0, check=processes.check_alive):
            raise TimeoutError("sim_robot published no status within 120 s (see its log in " + str(log_dir) + ")")
        while recorded < episodes:
            status = client.latest_status()
            if status.get("done"):
                client.call("/sim_robot/reset", Trigger)
                first = client.status_count
                client.wait_for(lambda: client.status_count > first + 1
                                and not client.latest_status().get("done"), timeout=30.0)
                continue
            index, scene = status.get("subtask_index"), status.get("seed")
            start_episode(client)

            def subtask_over() -> bool:
                now = client.latest_status()
                return now.get("seed") != scene or now.get("subtask_index") != index or bool(now.get("done"))

            client.wait_for(subtask_over, timeout=subtask_timeout, check=processes.check_alive)
            final = client.latest_status()
            success = final.get("seed") == scene and int(final.get("completed", 0)) > int(status.get("completed", 0))
            client.call("/teleop_recorder/stop_episode", SetBool, SetBool.Request(data=bool(success)))
            recorded += 1
            successful += int(success)
            if progress is not None:
                progress(recorded, success)
    return {"episodes": recorded, "successful": successful, "seconds": round(time.monotonic() - started, 1)}


def deploy_closed_loop(checkpoint: Path, seconds: float, seed: int, image_size: tuple[int, int], out_dir: Path,
                       log_dir: Path, max_overlays: int = 6) -> dict[str, Any]:
    """journey 5 in the twin: sim_robot -> camera_ingest -> policy -> arm_command -> sim_robot.

    Runs ``seconds`` of closed-loop control, saves a few attention overlays the policy publishes,
    and reports what crossed the graph: chunks, commands, arm motion, subtasks completed, and
    arm_command's own count of chunks executed vs dropped (and why) from its ``~/status``.
    """
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory

    from reconvla_core.interfaces import ACTION_CHUNK_TOPIC, ARM_COMMAND_TOPIC, ATTENTION_TOPIC, FOLLOWER_STATE_TOPIC
    from reconvla_core.runtime.image import image_to_rgb

    nodes = {
        "sim_robot": _sim_parameters(seed, image_size, expert_leader=False),
        "camera_ingest": {"checkpoint": str(checkpoint)},
        "policy": {"checkpoint": str(checkpoint), "device": "cpu", "viz_rate": 1.0},
        "arm_command": {"backend": "piper_ros", "auto_enable": True, "control_rate": 10.0},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"chunks": 0, "commands": 0, "overlays": 0}
    states: list[np.ndarray] = []
    saved: list[str] = []
    lock = threading.Lock()

    def on_chunk(msg: Any) -> None:
        with lock:
            counts["chunks"] += 1

    def on_command(msg: Any) -> None:
        with lock:
            counts["commands"] += 1

    def on_state(msg: Any) -> None:
        with lock:
            states.append(np.asarray(msg.position, dtype=np.float64))

    arm_status: dict[str, Any] = {}

    def on_arm_status(msg: Any) -> None:
        with lock:
            arm_status.clear()
            arm_status.update(json.loads(msg.data))

    def on_attention(msg: Any) -> None:
        import imageio.v3 as iio

        with lock:
            counts["overlays"] += 1
            if len(saved) >= max_overlays:
                return
            path = out_dir / f"attention_{len(saved):02d}.png"
            saved.append(str(path))
        iio.imwrite(path, image_to_rgb(msg))

    with running_graph(nodes, log_dir) as (processes, client):
        client.subscribe(JointTrajectory, ACTION_CHUNK_TOPIC, on_chunk)
        client.subscribe(JointState, ARM_COMMAND_TOPIC, on_command, depth=50)
        client.subscribe(JointState, FOLLOWER_STATE_TOPIC, on_state, depth=50)
        client.subscribe(Image, ATTENTION_TOPIC, on_attention)
        client.subscribe(String, "/arm_command/status", on_arm_status)
        if not client.wait_for(lambda: counts["chunks"] > 0, timeout=180.0, check=processes.check_alive):
            raise TimeoutError(f"no action chunk within 180 s of starting the graph (logs in {log_dir})")
        first_status = client.latest_status()
        start = time.monotonic()
        client.wait_for(lambda: False, timeout=seconds, period=0.5, check=processes.check_alive)
        elapsed = time.monotonic() - start
        last_status = client.latest_status()
    with lock:
        motion = float(np.abs(states[-1][:6] - states[0][:6]).max()) if len(states) > 1 else 0.0
        return {"seconds": round(elapsed, 1), "chunks": counts["chunks"], "commands": counts["commands"],
                "chunks_per_s": round(counts["chunks"] / max(elapsed, 1e-9), 2),
                "arm_motion_rad": round(motion, 3), "subtasks_completed": int(last_status.get("completed", 0)),
                "instruction": first_status.get("instruction", ""), "attention_overlays": saved,
                "chunks_executed": int(arm_status.get("chunks", 0)),
                "chunks_dropped": {key[len("dropped_"):]: int(value) for key, value in arm_status.items()
                                   if key.startswith("dropped_") and key != "dropped_chunks"},
                "last_chunk_age_s": arm_status.get("last_chunk_age_s")}
