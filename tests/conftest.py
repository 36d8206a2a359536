"""Shared pytest fixtures.

ROS isolation: before anything imports rclpy, this session picks its own ROS_DOMAIN_ID
and restricts discovery to localhost, so parallel test runs (and a robot on the LAN)
never see each other. Child processes started by tests inherit the same environment.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

# Domain ids 0..101 are safe with Fast DDS' default ports; spread sessions by pid.
os.environ["ROS_DOMAIN_ID"] = str(10 + os.getpid() % 90)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_LOCALHOST_ONLY", None)  # deprecated since Jazzy; the range above replaces it
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class RosHarness:
    """An rclpy context plus a background executor; nodes added here are spun and cleaned up."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        # Single-threaded, as every node runs in production (run_node -> rclpy.spin). rclpy's
        # MultiThreadedExecutor resubmits a ready task on every spin until a pool thread starts it;
        # on a loaded 2-core machine that queue snowballed (3,500 pending copies in 10 s) and the
        # nodes' 30-100 Hz callbacks ran at ~5 Hz.
        self.executor = SingleThreadedExecutor(context=self.context)
        self._nodes: list = []
        self._thread = threading.Thread(target=self._spin, name="ros-test-executor", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except (ExternalShutdownException, RuntimeError):
            pass  # context shut down while spinning: normal at teardown

    def add_node(self, node):
        self._nodes.append(node)
        self.executor.add_node(node)
        return node

    def make_node(self, name: str, **kwargs):
        from rclpy.node import Node

        return self.add_node(Node(name, context=self.context, **kwargs))

    def remove_node(self, node) -> None:
        self.executor.remove_node(node)
        self._nodes.remove(node)
        node.destroy_node()

    @staticmethod
    def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, period: float = 0.02) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(period)
        return predicate()

    def call(self, client, request, timeout: float = 10.0, resend_after: float | None = None):
        """``client``'s answer to ``request`` within ``timeout``. ``resend_after`` (idempotent services
        only, such as a reset): resend the request every that many seconds without an answer, for a
        server that has just started. A request sent right after discovery can be lost while the
        server has not yet matched the client's response reader, which ``wait_for_service`` (the
        request side) does not cover."""
        assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
        deadline = time.monotonic() + timeout
        while True:
            future = client.call_async(request)
            wait = deadline - time.monotonic() if resend_after is None else resend_after
            if self.wait_for(future.done, timeout=max(0.0, min(wait, deadline - time.monotonic()))):
                return future.result()
            client.remove_pending_request(future)
            assert time.monotonic() < deadline, f"service {client.srv_name} did not answer"

    def close(self) -> None:
        import rclpy

        for node in list(self._nodes):
            self.remove_node(node)
        self.executor.shutdown(timeout_sec=2.0)
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)


@pytest.fixture
def ros() -> Iterator[RosHarness]:
    """A fresh ROS context and spinning executor per test; torn down in order (no abort at exit)."""
    harness = RosHarness()
    try:
        yield harness
    finally:
        harness.close()
