"""Static checks of the robot-PC image and compose file (Docker does not run on CI machines)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = (DOCKER / "Dockerfile").read_text()
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(current)
            current = ""
    return [
        (entry.split(None, 1)[0].upper(), entry.split(None, 1)[1] if " " in entry else "")
        for entry in logical
    ]


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_dockerfile_base_and_copied_files_exist():
    instructions = dockerfile_instructions()
    froms = [args for name, args in instructions if name == "FROM"]
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for name, a in instructions if name == "ARG" and "=" in a}
    assert froms == ["ros:${ROS_DISTRO}"] and args["ROS_DISTRO"] == "jazzy"
    copies = [shlex.split(a) for name, a in instructions if name == "COPY"]
    assert copies, "the image copies nothing from the repository"
    for parts in copies:
        sources = [p for p in parts[:-1] if not p.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the build context (repository root)"
    entry = [a for name, a in instructions if name == "ENTRYPOINT"]
    assert entry and "reconvla-entrypoint" in entry[0]


def test_dockerfile_installs_the_stack():
    runs = " ".join(a for name, a in dockerfile_instructions() if name == "RUN")
    assert "ros-${ROS_DISTRO}-realsense2-camera" in runs
    assert "${ORBBEC_REPO}" in runs and "${PIPER_ROS_REPO}" in runs
    assert "--packages-up-to orbbec_camera piper piper_msgs" in runs
    assert re.search(r'pip install "torch==\$\{TORCH_VERSION\}" --index-url "\$\{TORCH_INDEX_URL\}"', runs)
    assert "piper_sdk" in runs and "pip install --no-deps src/reconvla_core" in runs
    assert "colcon build --base-paths src" in runs
    # The lock's ROS wheels must not shadow the apt ROS installation.
    assert "grep -v -E '^(ros-|colcon|numpy" in runs
    text = (DOCKER / "Dockerfile").read_text()
    torch_pin = re.search(r"^torch==(\S+)$", (REPO / "requirements.lock").read_text(), re.M)
    assert torch_pin and f"ARG TORCH_VERSION={torch_pin.group(1)}" in text, "image and lock disagree on torch"
    assert "ORBBEC_REF=main" in text  # v1 series: the branch that ships dabai.launch.py


def test_entrypoint_sources_all_three_layers():
    script = (DOCKER / "entrypoint.sh").read_text()
    for setup in (
        "/opt/ros/${ROS_DISTRO:-jazzy}/setup.bash",
        "/opt/underlay/install/setup.bash",
        "/opt/reconvla/install/setup.bash",
    ):
        assert f"source {setup}" in script or f'source "{setup}"' in script
    assert 'exec "$@"' in script


def test_compose_gives_the_robot_can_usb_gpu_and_dds():
    services = compose()["services"]
    robot = services["robot"]
    assert robot["build"]["context"] == ".." and (DOCKER / ".." / robot["build"]["dockerfile"]).is_file()
    assert robot["network_mode"] == "host" and "NET_ADMIN" in robot["cap_add"]
    assert "/dev/bus/usb:/dev/bus/usb" in robot["volumes"]
    assert "c 189:* rmw" in robot["device_cgroup_rules"]
    gpu = robot["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for name, service in services.items():
        env = service["environment"]
        assert "ROS_DOMAIN_ID" in env and env["ROS_AUTOMATIC_DISCOVERY_RANGE"].endswith("SUBNET}"), name
        assert service["network_mode"] == "host", name
    assert "deploy" not in services["drivers"]  # the robot PC of the two-host setup needs no GPU
    assert "deploy" in services["policy"]


def _launch_calls(service: dict) -> list[tuple[str, set[str]]]:
    command = service["command"]
    text = command if isinstance(command, str) else " ".join(command)
    calls = []
    for match in re.finditer(r"ros2 launch reconvla_ros (\S+)((?:\s+[\w.]+:=\S*)*)", text):
        calls.append((match.group(1), set(re.findall(r"([\w.]+):=", match.group(2)))))
    return calls


@pytest.mark.parametrize("service", ["robot", "drivers", "policy", "record"])
def test_compose_commands_use_existing_launch_files_and_arguments(service):
    import ast

    calls = _launch_calls(compose()["services"][service])
    assert calls, f"{service} starts no launch file"
    for launch_file, arguments in calls:
        path = REPO / "launch" / launch_file
        assert path.is_file(), launch_file
        tree = ast.parse(path.read_text())
        declared = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "ARGUMENTS" for t in node.targets
            ):
                declared |= {entry[0] for entry in ast.literal_eval(node.value)}
        assert arguments <= declared, (
            f"{service}: {sorted(arguments - declared)} not declared by {launch_file}"
        )
