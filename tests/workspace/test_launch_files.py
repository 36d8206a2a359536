"""Launch files, configs and the RViz layout, checked without a ROS install.

Always: each launch file parses, declares the documented arguments, starts only executables that
setup.py installs (for our package) and references only config / rviz files that exist, and the
YAML configs only set parameters the nodes declare. Where ``launch`` and ``launch_ros`` import
(a ROS machine), each launch description is also expanded with the real launch API against a
fake install prefix: conditions, substitutions, includes and ParameterValue all evaluate.
"""

from __future__ import annotations

import ast
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LAUNCH_DIR = REPO / "launch"
ROS_PKG = REPO / "src" / "reconvla_ros"
PACKAGE = "reconvla_ros"

EXPECTED_ARGUMENTS = {
    "robot.launch.py": {
        "checkpoint",
        "instruction",
        "backend",
        "use_rviz",
        "can_port",
        "base_serial",
        "wrist_serial",
        "role",
        "description",
        "base_camera_pose",
        "wrist_camera_pose",
    },
    "sim.launch.py": {"checkpoint", "use_rviz", "task", "seed"},
    "record.launch.py": {
        "sim",
        "output_dir",
        "task",
        "operator",
        "min_free_gb",
        "can_port",
        "base_serial",
        "wrist_serial",
    },
}
EXTERNAL_PACKAGES = {"realsense2_camera", "orbbec_camera", "piper", "rviz2",
                     "robot_state_publisher", "tf2_ros"}


def console_scripts() -> dict[str, str]:
    """NODES from setup.py (name -> module:function), read with ast (setup.py itself calls setup())."""
    tree = ast.parse((ROS_PKG / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "NODES" for t in node.targets):
            if isinstance(node.value, ast.List):
                return dict(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no NODES list")


def launch_tree(name: str) -> ast.Module:
    return ast.parse((LAUNCH_DIR / name).read_text(), filename=name)


def declared_arguments(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ARGUMENTS" for t in node.targets):
            names |= {ast.literal_eval(entry.elts[0]) for entry in node.value.elts}  # defaults may be computed
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
    return names


def node_calls(tree: ast.Module) -> list[dict[str, Any]]:
    """package/executable keywords of every Node(...) call (PACKAGE resolved)."""
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Node":
            kw = {}
            for keyword in node.keywords:
                if keyword.arg in ("package", "executable", "name"):
                    value = keyword.value
                    kw[keyword.arg] = (
                        PACKAGE if getattr(value, "id", None) == "PACKAGE" else ast.literal_eval(value)
                    )
            calls.append(kw)
    return calls


def node_parameter_keys(tree: ast.Module) -> dict[str, set[str]]:
    """executable -> keys of the inline parameter dicts of our package's Node(...) calls."""
    keys: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Node"):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        if getattr(kw.get("package"), "id", None) != "PACKAGE" or "parameters" not in kw:
            continue
        executable = ast.literal_eval(kw["executable"])
        for item in getattr(kw["parameters"], "elts", []):
            if isinstance(item, ast.Dict):
                keys.setdefault(executable, set()).update(ast.literal_eval(k) for k in item.keys)
    return keys


def string_constants(tree: ast.Module) -> set[str]:
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_launch_directory_holds_the_three_launch_files():
    assert sorted(p.name for p in LAUNCH_DIR.glob("*.launch.py")) == sorted(EXPECTED_ARGUMENTS)


@pytest.mark.parametrize("name", sorted(EXPECTED_ARGUMENTS))
def test_launch_file_arguments_nodes_and_files(name):
    tree = launch_tree(name)
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    assert EXPECTED_ARGUMENTS[name] <= declared_arguments(tree)
    scripts = console_scripts()
    nodes = node_calls(tree)
    assert nodes, f"{name} starts no node"
    for call in nodes:
        if call["package"] == PACKAGE:
            assert call["executable"] in scripts, f"{call['executable']} is not a console script in setup.py"
            module = scripts[call["executable"]].split(":")[0]
            assert (ROS_PKG / (module.replace(".", "/") + ".py")).is_file(), f"{module} does not exist"
        else:
            assert call["package"] in EXTERNAL_PACKAGES, call
    constants = string_constants(tree)
    for config in {c for c in constants if re.fullmatch(r"[\w-]+\.yaml", c)}:
        assert (ROS_PKG / "config" / config).is_file(), f"{name} references missing config/{config}"
    for rviz in {c for c in constants if c.endswith(".rviz")}:
        assert (ROS_PKG / "rviz" / rviz).is_file(), f"{name} references missing rviz/{rviz}"


@pytest.mark.parametrize("name", sorted(EXPECTED_ARGUMENTS))
def test_launch_files_set_only_parameters_the_configs_know(name):
    """Each inline parameter a launch file gives our nodes is a documented key of config/<node>.yaml."""
    for executable, keys in node_parameter_keys(launch_tree(name)).items():
        config = ROS_PKG / "config" / f"{executable}.yaml"
        documented = yaml.safe_load(config.read_text())[executable]["ros__parameters"]
        assert keys <= set(documented), (
            f"{name}: {executable} gets {sorted(keys - set(documented))} not in {config.name}"
        )


# Nodes whose exit shuts the launch down (launch file -> executables).
REQUIRED_NODES = {
    "sim.launch.py": {"sim_robot", "camera_ingest", "policy", "arm_command"},
    "robot.launch.py": {"piper_ctrl_single_node", "camera_ingest", "arm_command", "policy"},
    "record.launch.py": {"sim_robot", "teleop_recorder"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ARGUMENTS))
def test_required_nodes_shut_the_launch_down_and_rviz_is_optional(name):
    tree = launch_tree(name)
    # required(<the Node variable>, "<its node name>"): the variable must be the Node of that name.
    variables = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) == "Node":
            kw = {k.arg: k.value for k in node.value.keywords}
            variables[node.targets[0].id] = ast.literal_eval(kw["name"])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "required":
            variable, label = node.args[0].id, ast.literal_eval(node.args[1])
            assert variables[variable] == label, f"{name}: required({variable}, {label!r})"
            names.add(label)
    assert names == REQUIRED_NODES[name], f"{name}: required {names}, expected {REQUIRED_NODES[name]}"
    rviz_calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Node"
                  and any(k.arg == "package" and getattr(k.value, "value", None) == "rviz2" for k in n.keywords)]
    for call in rviz_calls:
        condition = next(k.value for k in call.keywords if k.arg == "condition")
        assert getattr(condition.func, "id", None) == "if_installed", f"{name}: rviz2 without if_installed"


def test_launch_support_starts_rviz_only_when_wanted_and_installed():
    """RViz is the one node the launch files take from launch_support (rviz_node) rather than spell out."""
    tree = ast.parse((ROS_PKG / PACKAGE / "launch_support.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Node"]
    assert len(calls) == 1
    keywords = {k.arg: k.value for k in calls[0].keywords}
    assert ast.literal_eval(keywords["package"]) == "rviz2"
    assert getattr(keywords["condition"].func, "id", None) == "if_installed"
    assert "use_rviz" in ast.dump(keywords["condition"])
    for rviz in {c for c in string_constants(tree) if c.endswith(".rviz")}:
        assert (ROS_PKG / "rviz" / rviz).is_file(), f"launch_support references missing rviz/{rviz}"
    for name in EXPECTED_ARGUMENTS:
        launch = launch_tree(name)
        assert "use_rviz" in declared_arguments(launch), f"{name} starts RViz but has no use_rviz argument"
        assert "rviz_node" in {n.id for n in ast.walk(launch) if isinstance(n, ast.Name)}, name


def test_sim_launch_checks_the_checkpoint_before_starting_anything():
    tree = launch_tree("sim.launch.py")
    assert "checkpoint_problem" in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    generate = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description")
    returned = next(n for n in ast.walk(generate) if isinstance(n, ast.Return))
    # The description holds only the arguments and the OpaqueFunction that starts the nodes.
    assert "OpaqueFunction" in ast.dump(returned.value) and "sim_robot" not in ast.dump(returned.value)


def test_sim_launch_defaults_to_the_shipped_checkpoint():
    from reconvla_core.model.pretrained import SHIPPED_CHECKPOINT
    from reconvla_ros.launch_support import checkpoint_problem

    tree = launch_tree("sim.launch.py")
    assert "SHIPPED_CHECKPOINT" in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert checkpoint_problem(str(SHIPPED_CHECKPOINT)) is None  # shipped in the package: the launch starts


def test_checkpoint_problem_names_the_argument(tmp_path):
    from reconvla_ros.launch_support import checkpoint_problem

    for value in ("", "  ", str(tmp_path / "missing"), str(tmp_path)):
        problem = checkpoint_problem(value)
        assert problem is not None and "'checkpoint'" in problem and "\n" not in problem
    (tmp_path / "config.json").write_text("{}")
    assert checkpoint_problem(str(tmp_path)) is None


def test_executable_in_package_looks_where_launch_ros_does(tmp_path, monkeypatch):
    from reconvla_ros.launch_support import executable_in_package

    prefix = _fake_prefix(tmp_path)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    assert executable_in_package("rviz2", "rviz2")
    assert not executable_in_package("rviz2", "rviz3")
    assert not executable_in_package("no_such_package", "rviz2")


def test_robot_launch_uses_the_real_drivers_names():
    constants = string_constants(launch_tree("robot.launch.py"))
    assert {
        "rs_launch.py",
        "dabai.launch.py",
        "wrist_camera",
        "piper_single_ctrl",
        "piper_ctrl_single_node",
        "camera_namespace",
        "camera_name",
        "serial_no",
        "serial_number",
        "can_port",
        "auto_enable",
    } <= constants


def _node_call_conditions(tree: ast.Module, package: str) -> list[ast.AST]:
    return [next((k.value for k in n.keywords if k.arg == "condition"), None)
            for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Node"
            and any(k.arg == "package" and getattr(k.value, "value", None) == package for k in n.keywords)]


@pytest.mark.parametrize("name", ["sim.launch.py", "robot.launch.py"])
def test_robot_state_publisher_runs_when_installed(name):
    tree = launch_tree(name)
    conditions = _node_call_conditions(tree, "robot_state_publisher")
    assert len(conditions) == 1, f"{name} starts no robot_state_publisher"
    assert getattr(conditions[0].func, "id", None) == "if_installed"
    assert "robot_description" in string_constants(tree)
    for condition in _node_call_conditions(tree, "tf2_ros"):
        assert getattr(condition.func, "id", None) == "if_installed"


def test_robot_launch_publishes_camera_mounts_for_other_urdfs():
    tree = launch_tree("robot.launch.py")
    names = {c.get("name") for c in node_calls(tree) if c["package"] == "tf2_ros"}
    assert names == {"base_camera_tf", "wrist_camera_tf"}


def test_robot_description_choices(tmp_path, monkeypatch):
    import xml.etree.ElementTree as ET

    from reconvla_core.sim.description import twin_base_camera, twin_wrist_camera
    from reconvla_ros.launch_support import robot_description

    base, wrist = twin_base_camera().as_text(), twin_wrist_camera().as_text()
    ours = ET.fromstring(robot_description("reconvla", base, wrist, optical_frames=False))
    links = {link.get("name") for link in ours.findall("link")}
    assert {"base_link", "link6", "camera_link", "wrist_camera_link"} <= links
    assert "camera_color_optical_frame" not in links  # the real drivers publish it
    mount = ours.find("joint[@name='camera_link_mount']/origin")
    moved = ET.fromstring(robot_description("reconvla", "0.7 0.1 0.5 0 0.6 3.0", wrist, optical_frames=False))
    assert moved.find("joint[@name='camera_link_mount']/origin").get("xyz") == "0.700000 0.100000 0.500000"
    assert mount.get("xyz") != "0.700000 0.100000 0.500000"
    with pytest.raises(ValueError, match="base_camera_pose / wrist_camera_pose"):
        robot_description("reconvla", "0.7 0.1", wrist, optical_frames=False)
    custom = tmp_path / "arm.urdf"
    custom.write_text('<robot name="x"/>')
    assert robot_description(str(custom), base, wrist, optical_frames=False) == '<robot name="x"/>'
    with pytest.raises(ValueError, match="no URDF file"):
        robot_description(str(tmp_path / "missing.urdf"), base, wrist, optical_frames=False)
    pytest.importorskip("ament_index_python")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "empty_prefix"))
    with pytest.raises(ValueError, match="piper_description is not installed"):
        robot_description("piper_description", base, wrist, optical_frames=False)
    index = tmp_path / "prefix" / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "piper_description").write_text("")
    urdf = tmp_path / "prefix" / "share" / "piper_description" / "urdf" / "piper_description.urdf"
    urdf.parent.mkdir(parents=True)
    urdf.write_text('<robot name="piper"/>')
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "prefix"))
    assert robot_description("piper_description", base, wrist, optical_frames=False) == '<robot name="piper"/>'


def test_camera_transform_arguments_are_static_transform_publishers_named_form():
    from reconvla_ros.launch_support import camera_transform_arguments

    args = camera_transform_arguments("0.6 0 0.42 0 0.81 3.14159", "base_link", "camera_link")
    assert args == ["--x", "0.600000", "--y", "0.000000", "--z", "0.420000", "--roll", "0.000000",
                    "--pitch", "0.810000", "--yaw", "3.141590", "--frame-id", "base_link",
                    "--child-frame-id", "camera_link"]
    with pytest.raises(ValueError):
        camera_transform_arguments("0.6 0 0.42", "base_link", "camera_link")


def test_setup_py_installs_the_urdf():
    assert '"urdf/*.urdf"' in (ROS_PKG / "setup.py").read_text()
    assert (ROS_PKG / "urdf" / "piper.urdf").is_file()


def test_setup_py_installs_launch_config_and_rviz():
    text = (ROS_PKG / "setup.py").read_text()
    assert '"/launch"' in text and '"config/*.yaml"' in text and '"rviz/*.rviz"' in text
    setup_cfg = (ROS_PKG / "setup.cfg").read_text()
    assert "script_dir=$base/lib/reconvla_ros" in setup_cfg
    assert "install_scripts=$base/lib/reconvla_ros" in setup_cfg
    scripts = console_scripts()
    assert scripts["sim_robot"] == "reconvla_ros.sim_robot:main"
    assert scripts["teleop_recorder"] == "reconvla_ros.teleop_recorder:main"


def test_rviz_layout_is_rviz2_yaml_with_the_product_topics():
    layout = yaml.safe_load((ROS_PKG / "rviz" / "reconvla.rviz").read_text())
    displays = layout["Visualization Manager"]["Displays"]
    assert all(d["Class"].startswith("rviz_default_plugins/") for d in displays)
    topics = {d["Topic"]["Value"] for d in displays if "Topic" in d}
    assert {
        "/camera/camera/color/image_raw",
        "/wrist_camera/color/image_raw",
        "/reconvla/attention",
        "/arm_command/chunk_markers",
    } <= topics
    by_class = {d["Class"]: d for d in displays}
    robot = by_class["rviz_default_plugins/RobotModel"]
    # robot_state_publisher latches /robot_description: only a transient-local reader gets it.
    assert robot["Description Source"] == "Topic"
    assert robot["Description Topic"]["Value"] == "/robot_description"
    assert robot["Description Topic"]["Durability Policy"] == "Transient Local"
    assert "rviz_default_plugins/TF" in by_class
    assert by_class["rviz_default_plugins/MarkerArray"]["Topic"]["Value"] == "/arm_command/chunk_markers"
    assert layout["Visualization Manager"]["Global Options"]["Fixed Frame"] == "base_link"
    images = [d for d in displays if d["Class"] == "rviz_default_plugins/Image"]
    # Best effort receives from both best-effort (drivers) and reliable publishers.
    assert all(d["Topic"]["Reliability Policy"] == "Best Effort" for d in images)
    assert layout["Visualization Manager"]["Global Options"]["Fixed Frame"]


@pytest.mark.parametrize("config", ["sim_robot.yaml", "teleop_recorder.yaml"])
def test_config_files_are_ros_parameter_files(config):
    data = yaml.safe_load((ROS_PKG / "config" / config).read_text())
    node_name = config.removesuffix(".yaml")
    assert list(data) == [node_name]
    params = data[node_name]["ros__parameters"]
    assert params, f"{config} sets no parameter"


# ---------------------------------------------------------------------------- real launch API
def _fake_prefix(root: Path) -> Path:
    """An install prefix with our package (configs, rviz, launch, executables) and fake drivers."""
    prefix = root / "install"
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)

    def package(name: str, executables: tuple[str, ...] = ()) -> Path:
        (index / name).write_text("")
        share = prefix / "share" / name
        share.mkdir(parents=True, exist_ok=True)
        lib = prefix / "lib" / name
        lib.mkdir(parents=True, exist_ok=True)
        for exe in executables:
            path = lib / exe
            path.write_text("#!/bin/sh\n")
            path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return share

    share = package(PACKAGE, tuple(console_scripts()))
    shutil.copytree(ROS_PKG / "config", share / "config")
    shutil.copytree(ROS_PKG / "rviz", share / "rviz")
    shutil.copytree(LAUNCH_DIR, share / "launch")
    shutil.copytree(ROS_PKG / "urdf", share / "urdf")
    package("robot_state_publisher", ("robot_state_publisher",))
    package("tf2_ros", ("static_transform_publisher",))
    package("piper", ("piper_single_ctrl",))
    package("rviz2", ("rviz2",))
    package("rclcpp_components", ("component_container",))
    # Stand-ins for the drivers' launch files: they declare the arguments we pass and start one node.
    for name, launch_file, args, exe in (
        (
            "realsense2_camera",
            "rs_launch.py",
            (
                "camera_namespace",
                "camera_name",
                "serial_no",
                "rgb_camera.color_profile",
                "rgb_camera.color_format",
                "enable_color",
                "enable_depth",
                "pointcloud.enable",
            ),
            "realsense2_camera_node",
        ),
        (
            "orbbec_camera",
            "dabai.launch.py",
            (
                "camera_name",
                "serial_number",
                "enable_depth",
                "enable_ir",
                "enable_point_cloud",
                "color_width",
                "color_height",
                "color_fps",
            ),
            "orbbec_camera_node",
        ),
    ):
        driver_share = package(name, (exe,))
        (driver_share / "launch").mkdir()
        decls = ", ".join(f"DeclareLaunchArgument({a!r}, default_value='')" for a in args)
        params = ", ".join(f"{a!r}: LaunchConfiguration({a!r})" for a in args)
        (driver_share / "launch" / launch_file).write_text(
            "from launch import LaunchDescription\n"
            "from launch.actions import DeclareLaunchArgument\n"
            "from launch.substitutions import LaunchConfiguration\n"
            "from launch_ros.actions import Node\n"
            "def generate_launch_description():\n"
            f"    return LaunchDescription([{decls}, Node(package={name!r}, executable={exe!r},"
            f" parameters=[{{{params}}}])])\n"
        )
    return prefix


def expand(launch_file: Path, arguments: dict[str, str]) -> list[Any]:
    """Expand a launch description like `ros2 launch` would, collecting the Node actions it starts."""
    from launch import LaunchContext, LaunchDescription
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from launch_ros.actions import Node

    context = LaunchContext()
    started: list[Any] = []

    def visit(entities: list[Any]) -> None:
        for entity in entities:
            if isinstance(entity, LaunchDescription):
                visit(entity.entities)
                continue
            condition = getattr(entity, "condition", None)
            if condition is not None and not condition.evaluate(context):
                continue
            if isinstance(entity, Node):
                entity._perform_substitutions(context)  # resolves executable, parameters, yaml files
                started.append(entity)
            elif isinstance(entity, IncludeLaunchDescription):
                visit(list(entity.execute(context) or []))
            else:
                visit(list(entity.visit(context) or []))

    # Enter through an include, as `ros2 launch file.py a:=b` does (sets the launch file locals).
    visit(
        [
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(str(launch_file)), launch_arguments=arguments.items()
            )
        ]
    )
    return started


def _parameters(node: Any) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for entry in node._Node__expanded_parameter_arguments or []:
        value, is_file = entry
        if is_file:
            data = yaml.safe_load(Path(value).read_text())
            for section in data.values():
                merged.update(section.get("ros__parameters", {}))
        else:
            merged.update({param.name: param.value for param in [value]} if hasattr(value, "name") else value)
    return merged


@pytest.fixture
def launch_env(tmp_path, monkeypatch):
    pytest.importorskip("launch")
    pytest.importorskip("launch_ros")
    prefix = _fake_prefix(tmp_path)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    monkeypatch.setenv("ROS_DISTRO", "jazzy")
    return prefix / "share" / PACKAGE / "launch"


def _names(nodes: list[Any]) -> set[str]:
    return {f"{n.node_package}/{n.node_executable}" for n in nodes}


def test_robot_launch_expands_with_the_launch_api(launch_env):
    nodes = expand(
        launch_env / "robot.launch.py",
        {"base_serial": "831612073525", "instruction": "yes", "checkpoint": "/models/ckpt"},
    )
    names = _names(nodes)
    assert {
        "realsense2_camera/realsense2_camera_node",
        "orbbec_camera/orbbec_camera_node",
        "piper/piper_single_ctrl",
        f"{PACKAGE}/camera_ingest",
        f"{PACKAGE}/arm_command",
        f"{PACKAGE}/policy",
    } <= names
    assert "rviz2/rviz2" not in names
    by_exe = {n.node_executable: n for n in nodes}
    realsense = _parameters(by_exe["realsense2_camera_node"])
    assert realsense["serial_no"] == "_831612073525" and realsense["camera_name"] == "camera"
    assert _parameters(by_exe["orbbec_camera_node"])["camera_name"] == "wrist_camera"
    piper = _parameters(by_exe["piper_single_ctrl"])
    assert piper["can_port"] == "can0" and piper["auto_enable"] is False
    policy = _parameters(by_exe["policy"])
    assert policy["instruction"] == "yes" and policy["checkpoint"] == "/models/ckpt"  # strings stay strings

    sdk = _names(expand(launch_env / "robot.launch.py", {"backend": "piper_sdk", "role": "robot"}))
    assert "piper/piper_single_ctrl" not in sdk and f"{PACKAGE}/policy" not in sdk
    assert f"{PACKAGE}/arm_command" in sdk
    teleop = {
        n.node_executable: n
        for n in expand(launch_env / "robot.launch.py", {"backend": "piper_sdk", "teleop": "true"})
    }
    teleop_params = _parameters(teleop["arm_command"])
    assert teleop_params["teleop"] is True and teleop_params["joint_states_topic"] == "joint_states_single"
    assert _parameters(by_exe["arm_command"])["joint_states_topic"] == "joint_states"
    workstation = _names(expand(launch_env / "robot.launch.py", {"role": "policy", "use_rviz": "true"}))
    assert workstation == {f"{PACKAGE}/policy", "rviz2/rviz2"}
    # TF on the robot side: our URDF with the camera mounts given; no static publishers needed.
    assert "tf2_ros/static_transform_publisher" not in names
    description = _parameters(by_exe["robot_state_publisher"])["robot_description"]
    assert 'name="camera_link"' in description and 'name="wrist_camera_link"' in description
    moved = {n.node_executable: n for n in expand(launch_env / "robot.launch.py",
                                                   {"base_camera_pose": "0.7 0.1 0.5 0 0.6 3.0"})}
    assert 'xyz="0.700000 0.100000 0.500000"' in _parameters(moved["robot_state_publisher"])["robot_description"]
    custom = launch_env.parent / "urdf" / "piper.urdf"
    other = [n for n in expand(launch_env / "robot.launch.py", {"description": str(custom)})]
    assert sum(n.node_executable == "static_transform_publisher" for n in other) == 2
    # A pose that does not parse: no robot_state_publisher (the launch gets a Shutdown naming it).
    assert all(n.node_executable != "robot_state_publisher"
               for n in expand(launch_env / "robot.launch.py", {"base_camera_pose": "1 2"}))


def test_sim_and_record_launch_expand_with_the_launch_api(launch_env, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    sim = expand(launch_env / "sim.launch.py", {"seed": "7", "task": "pick", "checkpoint": str(checkpoint)})
    assert _names(sim) == {f"{PACKAGE}/{n}" for n in ("sim_robot", "camera_ingest", "policy", "arm_command")} | {
        "robot_state_publisher/robot_state_publisher"}
    rsp = _parameters(next(n for n in sim if n.node_executable == "robot_state_publisher"))
    assert 'name="camera_color_optical_frame"' in rsp["robot_description"]  # the twin's images' frames
    sim_params = _parameters(next(n for n in sim if n.node_executable == "sim_robot"))
    assert sim_params["seed"] == 7 and sim_params["task"] == "pick" and sim_params["expert_leader"] is False
    arm = _parameters(next(n for n in sim if n.node_executable == "arm_command"))
    assert arm["backend"] == "piper_ros" and arm["auto_enable"] is True

    recorded = expand(launch_env / "record.launch.py", {"sim": "true", "operator": "alice"})
    assert _names(recorded) == {f"{PACKAGE}/sim_robot", f"{PACKAGE}/teleop_recorder"}
    recorder = _parameters(next(n for n in recorded if n.node_executable == "teleop_recorder"))
    assert recorder["operator"] == "alice" and recorder["min_free_gb"] == 5.0
    real = _names(expand(launch_env / "record.launch.py", {"sim": "false"}))
    assert f"{PACKAGE}/teleop_recorder" in real and "realsense2_camera/realsense2_camera_node" in real
    assert f"{PACKAGE}/sim_robot" not in real and "piper/piper_single_ctrl" not in real
    arm = _parameters(
        next(
            n
            for n in expand(launch_env / "record.launch.py", {"sim": "false"})
            if n.node_executable == "arm_command"
        )
    )
    assert arm["backend"] == "piper_sdk" and arm["teleop"] is True and arm["auto_enable"] is False


def test_sim_launch_without_a_checkpoint_starts_nothing(launch_env, tmp_path):
    assert expand(launch_env / "sim.launch.py", {"seed": "7", "checkpoint": ""}) == []
    assert expand(launch_env / "sim.launch.py", {"checkpoint": str(tmp_path / "missing")}) == []


def test_use_rviz_without_rviz2_goes_on_without_it(launch_env, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    with_rviz = _names(expand(launch_env / "sim.launch.py", {"checkpoint": str(checkpoint), "use_rviz": "true"}))
    assert "rviz2/rviz2" in with_rviz
    prefix = launch_env.parents[2]
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "rviz2").unlink()  # rviz2 not installed
    without = _names(expand(launch_env / "sim.launch.py", {"checkpoint": str(checkpoint), "use_rviz": "true"}))
    assert without == with_rviz - {"rviz2/rviz2"}
    workstation = _names(expand(launch_env / "robot.launch.py", {"role": "policy", "use_rviz": "true"}))
    assert workstation == {f"{PACKAGE}/policy"}


# ------------------------------------------------------------------- a real LaunchService run
LAUNCH_RUNNER = """
import sys
from launch import LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

service = LaunchService()
arguments = [tuple(a.split(":=", 1)) for a in sys.argv[2:]]
service.include_launch_description(
    IncludeLaunchDescription(PythonLaunchDescriptionSource(sys.argv[1]), launch_arguments=arguments))
sys.exit(service.run())
"""
# A stand-in node: notes that it started, and that it was stopped (SIGINT/SIGTERM) before exiting.
STAND_IN_NODE = """#!/bin/sh
name=$(basename "$0")
echo started > "$MARKER_DIR/$name.started"
trap 'echo stopped > "$MARKER_DIR/$name.stopped"; exit 0' INT TERM
while true; do sleep 0.05; done
"""


def _run_launch(launch_env: Path, tmp_path: Path, arguments: dict[str, str], failing: str | None = None,
                stop_after_started: set[str] | None = None) -> tuple[int, str, Path]:
    """Run sim.launch.py under a real LaunchService with stand-in executables."""
    import os
    import signal
    import subprocess
    import sys
    import time

    markers = tmp_path / "markers"
    markers.mkdir()
    lib = launch_env.parents[2] / "lib" / PACKAGE
    for exe in lib.iterdir():
        exe.write_text("#!/bin/sh\nsleep 1\nexit 2\n" if exe.name == failing else STAND_IN_NODE)  # fails once loaded
    runner = tmp_path / "run_launch.py"
    runner.write_text(LAUNCH_RUNNER)
    env = dict(os.environ, MARKER_DIR=str(markers), ROS_LOG_DIR=str(tmp_path / "log"))
    process = subprocess.Popen([sys.executable, str(runner), str(launch_env / "sim.launch.py")]
                               + [f"{k}:={v}" for k, v in arguments.items()],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if stop_after_started is not None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all((markers / f"{n}.started").exists() for n in stop_after_started):
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)  # Ctrl-C
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"the launch did not come down:\n{output}") from None
    return process.returncode, output, markers


def _checkpoint(tmp_path: Path) -> Path:
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    return checkpoint


def test_a_required_node_that_exits_brings_the_launch_down(launch_env, tmp_path):
    _, output, markers = _run_launch(launch_env, tmp_path, {"checkpoint": str(_checkpoint(tmp_path))},
                                     failing="policy")
    assert "policy exited with code 2" in output, output
    assert (markers / "arm_command.started").exists() or (markers / "sim_robot.started").exists(), output
    for name in ("sim_robot", "camera_ingest", "arm_command"):
        if (markers / f"{name}.started").exists():  # started before the policy failed: stopped, not orphaned
            assert (markers / f"{name}.stopped").exists(), f"{name} kept running:\n{output}"


def test_a_missing_checkpoint_starts_no_node_and_says_which_argument(launch_env, tmp_path):
    _, output, markers = _run_launch(launch_env, tmp_path, {"checkpoint": ""})
    assert "launch argument 'checkpoint' is empty" in output, output
    assert list(markers.iterdir()) == [], "a node started without a checkpoint"


def test_use_rviz_without_rviz2_warns_and_ctrl_c_stops_every_node(launch_env, tmp_path):
    (launch_env.parents[2] / "share" / "ament_index" / "resource_index" / "packages" / "rviz2").unlink()
    nodes = {"sim_robot", "camera_ingest", "policy", "arm_command"}
    _, output, markers = _run_launch(launch_env, tmp_path, {"checkpoint": str(_checkpoint(tmp_path)),
                                                            "use_rviz": "true"}, stop_after_started=nodes)
    assert "rviz2/rviz2 is not installed" in output, output
    for name in nodes:
        assert (markers / f"{name}.started").exists() and (markers / f"{name}.stopped").exists(), output
