"""The ROS description of the PiPer (installed as reconvla_ros/urdf/piper.urdf) against the twin.

Its joints are parsed with the standard library and chained with numpy, independently of the DH
code, and compared with ``kinematics.forward_frames``; PyBullet's URDF loader must accept it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from reconvla_core.piper import GRIPPER_MAX, JOINT_LOWER, JOINT_NAMES, JOINT_UPPER
from reconvla_core.sim import camera as cam
from reconvla_core.sim.description import (
    BASE_CAMERA_OPTICAL_FRAME,
    WRIST_CAMERA_OPTICAL_FRAME,
    CameraMount,
    piper_description_urdf,
    rpy_matrix,
)
from reconvla_core.sim.kinematics import forward_frames

REPO = Path(__file__).resolve().parents[2]
INSTALLED = REPO / "src" / "reconvla_ros" / "urdf" / "piper.urdf"


def _floats(text: str | None, default: str) -> np.ndarray:
    return np.array([float(v) for v in (text or default).split()])


def _axis_transform(kind: str, axis: np.ndarray, value: float) -> np.ndarray:
    out = np.eye(4)
    if kind in ("revolute", "continuous"):
        k = axis / np.linalg.norm(axis)
        skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        out[:3, :3] = np.eye(3) + np.sin(value) * skew + (1 - np.cos(value)) * skew @ skew
    elif kind == "prismatic":
        out[:3, 3] = axis * value
    return out


class UrdfTree:
    """Link poses from a URDF, the way robot_state_publisher computes them (mimic joints included)."""

    def __init__(self, text: str) -> None:
        root = ET.fromstring(text)
        self.links = {link.get("name") for link in root.findall("link")}
        self.joints: dict[str, dict] = {}
        for joint in root.findall("joint"):
            origin = joint.find("origin")
            fixed = np.eye(4)
            if origin is not None:
                fixed[:3, :3] = rpy_matrix(_floats(origin.get("rpy"), "0 0 0"))
                fixed[:3, 3] = _floats(origin.get("xyz"), "0 0 0")
            axis = joint.find("axis")
            mimic = joint.find("mimic")
            self.joints[joint.get("name")] = {
                "type": joint.get("type"),
                "parent": joint.find("parent").get("link"),
                "child": joint.find("child").get("link"),
                "origin": fixed,
                "axis": _floats(axis.get("xyz") if axis is not None else None, "1 0 0"),
                "mimic": None if mimic is None else (mimic.get("joint"), float(mimic.get("multiplier", "1"))),
            }
        self.parent_joint = {j["child"]: name for name, j in self.joints.items()}

    def chain(self, link: str) -> list[str]:
        """Joint names from the root down to ``link``."""
        names = []
        while link in self.parent_joint:
            name = self.parent_joint[link]
            names.append(name)
            link = self.joints[name]["parent"]
        return names[::-1]

    def root_of(self, link: str) -> str:
        chain = self.chain(link)
        return self.joints[chain[0]]["parent"] if chain else link

    def pose(self, link: str, positions: dict[str, float]) -> np.ndarray:
        out = np.eye(4)
        for name in self.chain(link):
            joint = self.joints[name]
            value = positions.get(name, 0.0)
            if joint["mimic"] is not None:
                value = positions.get(joint["mimic"][0], 0.0) * joint["mimic"][1]
            out = out @ joint["origin"] @ _axis_transform(joint["type"], joint["axis"], value)
        return out


@pytest.fixture(scope="module")
def tree() -> UrdfTree:
    return UrdfTree(INSTALLED.read_text())


def test_installed_urdf_is_the_generated_one():
    assert INSTALLED.read_text() == piper_description_urdf() + "\n", (
        "src/reconvla_ros/urdf/piper.urdf is stale: python -m reconvla_core.sim.description "
        "src/reconvla_ros/urdf/piper.urdf")


def test_frames_chain_from_base_link_to_the_cameras_and_the_gripper(tree):
    for link in ("tcp", "gripper_base", "finger_left", "finger_right", "camera_link",
                 BASE_CAMERA_OPTICAL_FRAME, "wrist_camera_link", WRIST_CAMERA_OPTICAL_FRAME):
        assert tree.root_of(link) == "base_link", link
    assert "link6" in [tree.joints[j]["parent"] for j in tree.chain(WRIST_CAMERA_OPTICAL_FRAME)]
    assert [j for j in tree.chain("tcp") if tree.joints[j]["type"] != "fixed"] == list(JOINT_NAMES)


def test_urdf_forward_kinematics_matches_the_twin_to_1mm(tree):
    rng = np.random.default_rng(0)
    for _ in range(200):
        q = rng.uniform(JOINT_LOWER, JOINT_UPPER)
        frames = forward_frames(q)
        positions = dict(zip(JOINT_NAMES, q))
        for i in range(6):
            urdf_pose = tree.pose(f"link{i + 1}", positions)
            assert np.abs(urdf_pose[:3, 3] - frames[i][:3, 3]).max() < 1e-3
            # the URDF prints angles to 1e-6 rad, six joints compound it
            assert np.abs(urdf_pose[:3, :3] - frames[i][:3, :3]).max() < 1e-5
        tcp = tree.pose("tcp", positions)
        assert np.abs(tcp[:3, 3] - frames[-1][:3, 3]).max() < 1e-3


def test_gripper_joint_opens_the_fingers_symmetrically(tree):
    opening = 0.05
    left = tree.pose("finger_left", {"gripper": opening})[:3, 3]
    right = tree.pose("finger_right", {"gripper": opening})[:3, 3]
    closed = tree.pose("finger_left", {"gripper": 0.0})[:3, 3]
    assert np.linalg.norm(left - right) == pytest.approx(opening, abs=1e-9)
    assert np.linalg.norm(left - closed) == pytest.approx(opening / 2, abs=1e-9)
    limit = ET.fromstring(INSTALLED.read_text()).find("joint[@name='gripper']/limit")
    assert float(limit.get("upper")) == GRIPPER_MAX


def test_camera_optical_frames_look_where_the_twin_cameras_look(tree):
    base = tree.pose(BASE_CAMERA_OPTICAL_FRAME, {})
    eye, target = np.array(cam.BASE_CAMERA_EYE), np.array(cam.BASE_CAMERA_TARGET)
    assert np.allclose(base[:3, 3], eye, atol=1e-6)
    assert np.allclose(base[:3, 2], (target - eye) / np.linalg.norm(target - eye), atol=1e-6)  # z forward
    assert base[2, 1] < 0  # optical y points down in the image: world-down for the base camera
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.uniform(JOINT_LOWER, JOINT_UPPER)
        positions = dict(zip(JOINT_NAMES, q))
        flange = forward_frames(q)[5]
        wrist = tree.pose(WRIST_CAMERA_OPTICAL_FRAME, positions)
        look = flange[:3, :3] @ cam.WRIST_LOOK_AT_FLANGE + flange[:3, 3] - wrist[:3, 3]
        assert np.allclose(wrist[:3, 2], look / np.linalg.norm(look), atol=1e-5)
        # the twin's wrist image has the fingers at the bottom: optical y along +x of the flange
        assert wrist[:3, 1] @ flange[:3, 0] > 0.9


def test_camera_mounts_move_the_camera_frames():
    mount = CameraMount.parse("0.5, 0.1 0.3 0 0.4 3.14")
    assert mount.xyz == (0.5, 0.1, 0.3)
    tree = UrdfTree(piper_description_urdf(base_camera=mount, optical_frames=False))
    assert BASE_CAMERA_OPTICAL_FRAME not in tree.links
    assert np.allclose(tree.pose("camera_link", {}), mount.matrix(), atol=1e-6)
    with pytest.raises(ValueError, match="six finite numbers"):
        CameraMount.parse("0.5 0.1 0.3")
    with pytest.raises(ValueError, match="six finite numbers"):
        CameraMount.parse("0.5 0.1 0.3 0 nan 0")


def test_pybullet_loads_the_description():
    pybullet = pytest.importorskip("pybullet")
    client = pybullet.connect(pybullet.DIRECT)
    try:
        body = pybullet.loadURDF(str(INSTALLED), useFixedBase=True, physicsClientId=client)
        names = {pybullet.getJointInfo(body, i, physicsClientId=client)[1].decode()
                 for i in range(pybullet.getNumJoints(body, physicsClientId=client))}
    finally:
        pybullet.disconnect(client)
    assert set(JOINT_NAMES) | {"gripper", "camera_link_mount", "wrist_camera_link_mount"} <= names
