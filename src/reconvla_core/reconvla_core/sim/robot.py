"""The simulated PiPer: a URDF generated from the DH tables, and its PyBullet driver.

The arm is built from ``reconvla_core.piper`` only (no meshes, nothing downloaded):
cylinders between consecutive DH frames, a box palm on the flange and two prismatic
box fingers (opening 0..0.07 m, the finger pads move symmetrically). Joint commands
are position targets; :class:`SimArm` ramps its internal set-point towards the target at
no more than ``MAX_JOINT_SPEED`` (3 rad/s) and the gripper at ``GRIPPER_SPEED``, and
PyBullet's position motors with finite forces track that set-point, so contacts, the
table and held objects push back. Grasping is by friction only (no constraint ever attaches
an object; the only constraint is the gear that couples the two fingers, as the real linkage does).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from reconvla_core.piper import (
    GRIPPER_MAX,
    GRIPPER_MIN,
    JOINT_LOWER,
    JOINT_NAMES,
    JOINT_UPPER,
    MAX_JOINT_SPEED,
)
from reconvla_core.sim.kinematics import TOOL_LENGTH, joint_origin

logger = logging.getLogger(__name__)

GRIPPER_SPEED = 0.1  # m/s of opening change (full stroke in 0.7 s)
GRIPPER_FORCE = 30.0  # N per finger
JOINT_FORCES = (60.0, 80.0, 60.0, 20.0, 20.0, 10.0)  # N m
FINGER_LENGTH = 0.05
FINGER_THICKNESS = 0.012
FINGER_WIDTH = 0.022
PALM_LENGTH = 0.065
FINGER_FRICTION = 1.0
# Wrist camera (on the palm, looking along the fingers), in the flange frame.
WRIST_CAMERA_OFFSET = (-0.055, 0.0, 0.035)
LINK_RGBA = (0.82, 0.82, 0.84, 1.0)
DARK_RGBA = (0.2, 0.2, 0.22, 1.0)


def _rpy_from_matrix(rot: np.ndarray) -> tuple[float, float, float]:
    """URDF fixed-axis roll/pitch/yaw with R = Rz(yaw) Ry(pitch) Rx(roll)."""
    pitch = math.atan2(-rot[2, 0], math.hypot(rot[0, 0], rot[1, 0]))
    if abs(math.cos(pitch)) < 1e-9:
        roll = 0.0
        yaw = math.atan2(-rot[0, 1], rot[1, 1])
    else:
        roll = math.atan2(rot[2, 1], rot[2, 2])
        yaw = math.atan2(rot[1, 0], rot[0, 0])
    return roll, pitch, yaw


def _origin(xyz: tuple[float, ...] | np.ndarray, rpy: tuple[float, ...] = (0.0, 0.0, 0.0)) -> str:
    x, y, z = (float(v) for v in xyz)
    r, p, w = (float(v) for v in rpy)
    return f'<origin xyz="{x:.6f} {y:.6f} {z:.6f}" rpy="{r:.6f} {p:.6f} {w:.6f}"/>'


def _segment_rpy(vec: np.ndarray) -> tuple[float, float, float]:
    """rpy turning the z axis onto ``vec`` (for a cylinder drawn along a segment)."""
    v = vec / np.linalg.norm(vec)
    pitch = math.acos(max(-1.0, min(1.0, v[2])))
    yaw = math.atan2(v[1], v[0])
    # Rz(yaw) Ry(pitch) maps z to v.
    return 0.0, pitch, yaw


def _inertial(mass: float, size: float = 0.05) -> str:
    inertia = mass * size * size / 6.0
    return (
        f'<inertial><mass value="{mass}"/>{_origin((0, 0, 0))}'
        f'<inertia ixx="{inertia:.6g}" iyy="{inertia:.6g}" izz="{inertia:.6g}" ixy="0" ixz="0" iyz="0"/></inertial>'
    )


def _shape(kind: str, geometry: str, origin: str, rgba: tuple[float, ...] | None = None) -> str:
    material = ""
    if rgba is not None:
        material = '<material name="c{}"><color rgba="{} {} {} {}"/></material>'.format(
            abs(hash(rgba)) % 10000, *rgba
        )
    return f"<{kind}>{origin}<geometry>{geometry}</geometry>{material}</{kind}>"


def _link(name: str, mass: float, shapes: list[tuple[str, str]], rgba: tuple[float, ...] = LINK_RGBA) -> str:
    body = [_inertial(mass)]
    for geometry, origin in shapes:
        body.append(_shape("visual", geometry, origin, rgba))
        body.append(_shape("collision", geometry, origin))
    return f'<link name="{name}">{"".join(body)}</link>'


def _cylinder_between(start: np.ndarray, end: np.ndarray, radius: float) -> tuple[str, str]:
    vec = np.asarray(end, dtype=np.float64) - np.asarray(start, dtype=np.float64)
    length = float(np.linalg.norm(vec))
    mid = (np.asarray(start) + np.asarray(end)) / 2.0
    return f'<cylinder radius="{radius}" length="{length:.6f}"/>', _origin(mid, _segment_rpy(vec))


def piper_urdf() -> str:
    """The PiPer twin as a URDF string (links ``base_link``, ``link1``..``link6``, ``gripper_base``,
    ``finger_left``/``finger_right``, ``tcp``, ``wrist_camera``; joints ``joint1``..``joint6``,
    ``finger_left_joint``/``finger_right_joint``). Usable for RViz as well."""
    parts = ['<?xml version="1.0"?>', '<robot name="piper_twin">']
    parts.append(
        _link(
            "base_link",
            2.0,
            [('<cylinder radius="0.055" length="0.10"/>', _origin((0, 0, 0.05)))],
            DARK_RGBA,
        )
    )
    radii = (0.045, 0.035, 0.03, 0.03, 0.028, 0.03)
    masses = (0.8, 1.0, 0.6, 0.3, 0.3, 0.2)
    for i in range(6):
        name = f"link{i + 1}"
        if i < 5:
            nxt = joint_origin(i + 1)[:3, 3]
        else:
            nxt = np.array([0.0, 0.0, 0.0])
        shapes: list[tuple[str, str]] = []
        if np.linalg.norm(nxt) > 1e-3:
            shapes.append(_cylinder_between(np.zeros(3), nxt, radii[i]))
        if i == 0:
            shapes.append((f'<cylinder radius="{radii[i]}" length="0.06"/>', _origin((0, 0, -0.02))))
        if i in (1, 2, 3, 4):  # a joint housing around each axis
            shapes.append((f'<cylinder radius="{radii[i] + 0.005}" length="0.07"/>', _origin((0, 0, 0))))
        if i == 5:  # flange disc
            shapes.append(('<cylinder radius="0.035" length="0.01"/>', _origin((0, 0, 0.005))))
        parts.append(_link(name, masses[i], shapes))
        parent = "base_link" if i == 0 else f"link{i}"
        origin = joint_origin(i)
        parts.append(
            f'<joint name="{JOINT_NAMES[i]}" type="revolute"><parent link="{parent}"/><child link="{name}"/>'
            f"{_origin(origin[:3, 3], _rpy_from_matrix(origin[:3, :3]))}"
            f'<axis xyz="0 0 1"/><limit lower="{JOINT_LOWER[i]}" upper="{JOINT_UPPER[i]}" '
            f'effort="{JOINT_FORCES[i]}" velocity="{MAX_JOINT_SPEED}"/></joint>'
        )
    # Gripper: palm box on the flange, fingers slide along the flange y axis.
    palm = f'<box size="0.045 {2 * (GRIPPER_MAX / 2 + FINGER_THICKNESS) + 0.01:.4f} {PALM_LENGTH}"/>'
    parts.append(_link("gripper_base", 0.3, [(palm, _origin((0, 0, PALM_LENGTH / 2)))], DARK_RGBA))
    parts.append(
        '<joint name="gripper_mount" type="fixed"><parent link="link6"/><child link="gripper_base"/>'
        f"{_origin((0, 0, 0))}</joint>"
    )
    finger_box = f'<box size="{FINGER_WIDTH} {FINGER_THICKNESS} {FINGER_LENGTH}"/>'
    for side, sign in (("left", 1.0), ("right", -1.0)):
        parts.append(
            _link(
                f"finger_{side}",
                0.05,
                [(finger_box, _origin((0, sign * FINGER_THICKNESS / 2, FINGER_LENGTH / 2)))],
                DARK_RGBA,
            )
        )
        parts.append(
            f'<joint name="finger_{side}_joint" type="prismatic"><parent link="gripper_base"/>'
            f'<child link="finger_{side}"/>{_origin((0, 0, PALM_LENGTH))}<axis xyz="0 {sign:.0f} 0"/>'
            f'<limit lower="0" upper="{GRIPPER_MAX / 2}" effort="{GRIPPER_FORCE}" velocity="{GRIPPER_SPEED}"/>'
            "</joint>"
        )
    for name, xyz in (("tcp", (0.0, 0.0, TOOL_LENGTH)), ("wrist_camera", WRIST_CAMERA_OFFSET)):
        parts.append(f'<link name="{name}">{_inertial(0.001, 0.01)}</link>')
        parts.append(
            f'<joint name="{name}_mount" type="fixed"><parent link="gripper_base"/><child link="{name}"/>'
            f"{_origin(xyz)}</joint>"
        )
    parts.append("</robot>")
    return "\n".join(parts)


@dataclass
class ArmState:
    """Measured joint angles (6, rad), gripper opening (m) and joint velocities (6, rad/s)."""

    joints: np.ndarray
    gripper: float
    velocities: np.ndarray

    def vector(self) -> np.ndarray:
        """The product's 7-vector: 6 joints + gripper opening."""
        return np.concatenate([self.joints, [self.gripper]]).astype(np.float64)


class SimArm:
    """Drives the PiPer body in one PyBullet client: speed-limited position control + gripper."""

    def __init__(self, client: object, urdf_path: str, base_position: tuple[float, float, float] = (0, 0, 0)):
        import pybullet as p

        self._p = client
        self.body = client.loadURDF(  # type: ignore[attr-defined]
            urdf_path,
            basePosition=base_position,
            useFixedBase=True,
            flags=p.URDF_USE_INERTIA_FROM_FILE,
        )
        names: dict[str, int] = {}
        links: dict[str, int] = {}
        for index in range(client.getNumJoints(self.body)):  # type: ignore[attr-defined]
            info = client.getJointInfo(self.body, index)  # type: ignore[attr-defined]
            names[info[1].decode()] = index
            links[info[12].decode()] = index
        self.joint_ids = [names[n] for n in JOINT_NAMES]
        self.finger_ids = [names["finger_left_joint"], names["finger_right_joint"]]
        self.link_ids = links
        self.tcp_link = links["tcp"]
        self.camera_link = links["wrist_camera"]
        self.finger_links = (links["finger_left"], links["finger_right"])
        for link in self.finger_links:
            client.changeDynamics(  # type: ignore[attr-defined]
                self.body, link, lateralFriction=FINGER_FRICTION, spinningFriction=0.003
            )
        # The real gripper's fingers are coupled by its linkage; without this the two
        # force-limited fingers could slide together along the closing axis with a held block.
        # A gear between the two finger joints (ratio -1: equal openings) models that linkage; it
        # never touches a scene object: grasping stays friction only.
        self.finger_coupling = client.createConstraint(  # type: ignore[attr-defined]
            self.body, self.finger_ids[0], self.body, self.finger_ids[1],
            jointType=p.JOINT_GEAR, jointAxis=[0, 1, 0], parentFramePosition=[0, 0, 0], childFramePosition=[0, 0, 0],
        )
        client.changeConstraint(self.finger_coupling, gearRatio=-1, erp=0.2, maxForce=200)  # type: ignore[attr-defined]
        self.setpoint = np.zeros(6)
        self.target = np.zeros(6)
        self.gripper_setpoint = GRIPPER_MAX
        self.gripper_target = GRIPPER_MAX

    def reset(self, joints: np.ndarray, gripper: float) -> None:
        """Teleport to a configuration (episode start only) and hold it."""
        joints = np.clip(np.asarray(joints, dtype=np.float64), JOINT_LOWER, JOINT_UPPER)
        for jid, value in zip(self.joint_ids, joints):
            self._p.resetJointState(self.body, jid, float(value), 0.0)  # type: ignore[attr-defined]
        half = float(np.clip(gripper, GRIPPER_MIN, GRIPPER_MAX)) / 2.0
        for fid in self.finger_ids:
            self._p.resetJointState(self.body, fid, half, 0.0)  # type: ignore[attr-defined]
        self.setpoint = joints.copy()
        self.target = joints.copy()
        self.gripper_setpoint = self.gripper_target = 2.0 * half
        self._send(np.zeros(6))

    def command(self, joints: np.ndarray, gripper: float) -> None:
        """Set the position target (already validated and clipped by the caller)."""
        self.target = np.asarray(joints, dtype=np.float64).copy()
        self.gripper_target = float(gripper)

    def pre_step(self, dt: float) -> None:
        """Move the set-point one physics step towards the target (speed limits) and send it."""
        delta = np.clip(self.target - self.setpoint, -MAX_JOINT_SPEED * dt, MAX_JOINT_SPEED * dt)
        self.setpoint = self.setpoint + delta
        step = GRIPPER_SPEED * dt
        if self.gripper_target > self.gripper_setpoint:
            # Fingers stopped on an object sit above the set-point a close command wound down to; a
            # servo gripper told to open past them moves from where they are, without first unwinding
            # that gap. A target still below them keeps squeezing as before.
            opening = self.opening()
            if self.gripper_target > opening:
                self.gripper_setpoint = max(self.gripper_setpoint, opening)
        self.gripper_setpoint += float(np.clip(self.gripper_target - self.gripper_setpoint, -step, step))
        self._send(delta / dt)

    def opening(self) -> float:
        """Measured gripper opening (m), saturated at the gripper's range as the real one reports it."""
        fingers = self._p.getJointStates(self.body, self.finger_ids)  # type: ignore[attr-defined]
        # The fingers' joint limits are soft in PyBullet (a few mm past the stop under violent arm
        # motion); the real gripper cannot open past its mechanical stop, so report it saturated.
        return float(np.clip(fingers[0][0] + fingers[1][0], GRIPPER_MIN, GRIPPER_MAX))

    def _send(self, velocity: np.ndarray) -> None:
        p = self._p
        import pybullet

        for jid, target, vel, force in zip(self.joint_ids, self.setpoint, velocity, JOINT_FORCES):
            # maxVelocity caps the joint's own speed too, so catching up after a lag never exceeds 3 rad/s.
            p.setJointMotorControl2(  # type: ignore[attr-defined]
                self.body,
                jid,
                pybullet.POSITION_CONTROL,
                targetPosition=float(target),
                targetVelocity=float(vel),
                force=force,
                positionGain=0.5,
                velocityGain=1.0,
                maxVelocity=MAX_JOINT_SPEED,
            )
        half = self.gripper_setpoint / 2.0
        p.setJointMotorControlArray(  # type: ignore[attr-defined]
            self.body,
            self.finger_ids,
            pybullet.POSITION_CONTROL,
            targetPositions=[half, half],
            forces=[GRIPPER_FORCE, GRIPPER_FORCE],
            positionGains=[0.3, 0.3],
            velocityGains=[1.0, 1.0],
        )

    def state(self) -> ArmState:
        """Measured joint state (what joint_states_single reports on the real arm)."""
        joint_states = self._p.getJointStates(self.body, self.joint_ids)  # type: ignore[attr-defined]
        joints = np.array([s[0] for s in joint_states])
        velocities = np.array([s[1] for s in joint_states])
        return ArmState(joints=joints, gripper=self.opening(), velocities=velocities)

    def link_pose(self, link: int) -> tuple[np.ndarray, np.ndarray]:
        """World position (3,) and rotation matrix (3, 3) of a link frame."""
        state = self._p.getLinkState(self.body, link, computeForwardKinematics=True)  # type: ignore[attr-defined]
        rot = np.asarray(self._p.getMatrixFromQuaternion(state[5])).reshape(3, 3)  # type: ignore[attr-defined]
        return np.asarray(state[4]), rot
