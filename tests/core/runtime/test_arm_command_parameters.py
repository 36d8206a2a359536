"""arm_command's parameters -> the controller's config, without ROS: the shipped values build it, bad ones
are refused naming the parameter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from reconvla_core.runtime.arm_command_parameters import controller_config_from_parameters

pytestmark = pytest.mark.unit

SHIPPED = Path(__file__).resolve().parents[3] / "src" / "reconvla_ros" / "config" / "arm_command.yaml"


def shipped_parameters(**changes: Any) -> dict[str, Any]:
    """The shipped config/arm_command.yaml values with ``changes``; backend sim, since piper_ros
    registers only when the node module is imported."""
    values = yaml.safe_load(SHIPPED.read_text())["arm_command"]["ros__parameters"]
    return {**values, "backend": "sim", **changes}


def test_the_shipped_parameters_build_the_controller_config() -> None:
    config = controller_config_from_parameters(shipped_parameters())
    assert config.safety.control_rate_hz == 30.0 and config.safety.max_joint_speed == 1.0
    assert config.safety.speed_percent == 50 and config.safety.auto_enable is False
    assert config.queue.mode == "blend" and config.queue.trim == "executed" and config.queue.max_chunk_age_s == 2.0
    assert config.home == (0.0, 0.3, -0.3, 0.0, 0.3, 0.0, 0.07) and config.enable_timeout_s == 2.0
    assert config.intervention is None and config.read_leader is False


def test_interventions_build_the_gate_config_and_zero_turns_auto_takeover_off() -> None:
    off = controller_config_from_parameters(shipped_parameters(interventions=True))
    assert off.intervention is not None and off.intervention.auto_takeover_rad is None
    assert off.intervention.agree_tol_rad == 0.05 and off.intervention.leader_timeout_s == 0.2
    on = controller_config_from_parameters(shipped_parameters(interventions=True, auto_takeover_rad=0.3))
    assert on.intervention is not None and on.intervention.auto_takeover_rad == 0.3


def test_teleop_reads_the_leader_with_the_sdk_backend() -> None:
    assert controller_config_from_parameters(shipped_parameters(backend="piper_sdk", teleop=True)).read_leader


@pytest.mark.parametrize(("changes", "match"), [
    ({"backend": "can"}, "backend must be one of"),
    ({"queue_mode": "mix"}, "queue_mode must be one of"),
    ({"trim": "none"}, "trim must be one of"),
    ({"max_chunk_age": 0.0}, "max_chunk_age must be > 0"),
    ({"home_position": [0.0] * 6}, "home_position needs 7 values"),
    ({"home_position": [9.0] * 7}, "outside"),
    ({"enable_timeout": 0.0}, "enable_timeout must be > 0"),
    ({"teleop": True}, "teleop needs backend 'piper_sdk'"),
    ({"gripper_effort": 6000}, "gripper_effort must be in 0..5000"),
    ({"max_joint_speed": 5.0}, "max_joint_speed"),
    ({"backend": "piper_sdk", "teleop": True, "interventions": True}, "interventions exclude teleop"),
    ({"interventions": True, "auto_takeover_rad": -0.1}, "auto_takeover_rad must be >= 0"),
])
def test_bad_parameters_are_refused_naming_the_parameter(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        controller_config_from_parameters(shipped_parameters(**changes))
