"""The workspace itself: colcon builds reconvla_ros, the CLI answers, the core stays ROS-free."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_import_core_does_not_import_rclpy():
    code = "import sys, reconvla_core, reconvla_core.cli.main; assert 'rclpy' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_cli_version_and_help():
    version = subprocess.run([BIN / "reconvla", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("reconvla ")
    help_text = subprocess.run([BIN / "reconvla", "--help"], capture_output=True, text=True, check=True)
    assert "usage: reconvla" in help_text.stdout


def test_cli_without_command_fails_cleanly():
    result = subprocess.run([BIN / "reconvla"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stdout == ""


@pytest.mark.slow
def test_colcon_build_installs_package(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "src").symlink_to(REPO / "src")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        [BIN / "colcon", "--log-base", str(tmp_path / "log"), "build", "--symlink-install",
         "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install")],
        cwd=workspace, capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    share = tmp_path / "install" / "reconvla_ros" / "share" / "reconvla_ros"
    assert (share / "package.xml").is_file()
    launch_files = sorted(p.name for p in (share / "launch").glob("*.launch.py"))
    expected = sorted(p.name for p in (REPO / "launch").glob("*.launch.py"))
    assert launch_files == expected
    assert (share / "urdf" / "piper.urdf").is_file()  # robot_state_publisher's description
    # ros2 run looks for executables in lib/<package>.
    lib = tmp_path / "install" / "reconvla_ros" / "lib" / "reconvla_ros"
    nodes = {p.name for p in lib.iterdir()} if lib.is_dir() else set()
    setup_py = (REPO / "src" / "reconvla_ros" / "setup.py").read_text()
    for name in ("camera_ingest", "policy", "arm_command", "teleop_recorder", "sim_robot"):
        if (REPO / "src" / "reconvla_ros" / "reconvla_ros" / f"{name}.py").is_file():
            assert name in nodes, f"{name} not installed into lib/reconvla_ros"
    assert "console_scripts" in setup_py
    shutil.rmtree(tmp_path / "build", ignore_errors=True)
