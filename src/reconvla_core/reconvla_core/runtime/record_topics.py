"""What the teleop recorder records: the default topics and their types, ``"/topic[:pkg/msg/Type]"``
specs, and the subscription QoS adapted to what the publishers offer (as ``ros2 bag record`` does)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from reconvla_core.data.bag_writer import normalise_msgtype
from reconvla_core.interfaces import (
    ARM_COMMAND_TOPIC,
    BASE_IMAGE_TOPIC,
    FOLLOWER_STATE_TOPIC,
    GAZE_BOX_TOPIC,
    INSTRUCTION_TOPIC,
    INTERVENTION_TOPIC,
    LEADER_COMMAND_TOPIC,
    WRIST_IMAGE_TOPIC,
)

# What the recorder writes by default, with the message type each topic carries.
DEFAULT_TOPIC_TYPES: dict[str, str] = {
    BASE_IMAGE_TOPIC: "sensor_msgs/msg/Image",
    WRIST_IMAGE_TOPIC: "sensor_msgs/msg/Image",
    FOLLOWER_STATE_TOPIC: "sensor_msgs/msg/JointState",
    LEADER_COMMAND_TOPIC: "sensor_msgs/msg/JointState",
    INSTRUCTION_TOPIC: "std_msgs/msg/String",
    GAZE_BOX_TOPIC: "std_msgs/msg/Float32MultiArray",
    # While arm_command runs with operator interventions (HG-DAgger): true while the leader drives,
    # and what the arm was commanded (piper_ros backend), the action of the frames the policy drove.
    INTERVENTION_TOPIC: "std_msgs/msg/Bool",
    ARM_COMMAND_TOPIC: "sensor_msgs/msg/JointState",
}
DEFAULT_RECORD_TOPICS: tuple[str, ...] = tuple(DEFAULT_TOPIC_TYPES)
# Topics published once and latched (transient local): the last message seen before an episode
# starts is written at the episode's start, so every bag carries its instruction.
DEFAULT_LATCHED_TOPICS: tuple[str, ...] = (INSTRUCTION_TOPIC,)


@dataclasses.dataclass(frozen=True)
class TopicSpec:
    """One topic to record; ``msgtype`` None means: take it from the ROS graph when it appears."""

    name: str
    msgtype: str | None


def parse_topic_spec(spec: str, known_types: dict[str, str] | None = None) -> TopicSpec:
    """``"/topic"`` or ``"/topic:pkg/msg/Type"`` -> TopicSpec.

    Without an explicit type, a topic in ``known_types`` (default DEFAULT_TOPIC_TYPES) gets
    that type; any other topic is resolved later from the ROS graph (``msgtype=None``).
    """
    known = DEFAULT_TOPIC_TYPES if known_types is None else known_types
    text = spec.strip()
    if not text:
        raise ValueError("empty topic in the topics list")
    name, sep, msgtype = text.partition(":")
    name = name.strip()
    if not name.startswith("/"):
        raise ValueError(
            f"topic {name!r} must be absolute (start with '/') so bags do not depend on namespaces"
        )
    if sep:
        return TopicSpec(name, normalise_msgtype(msgtype))
    return TopicSpec(name, known.get(name))


def parse_topic_specs(specs: Iterable[str], known_types: dict[str, str] | None = None) -> list[TopicSpec]:
    """Parse a topics parameter; duplicates are an error (they would double-record)."""
    result: list[TopicSpec] = []
    seen: set[str] = set()
    for spec in specs:
        parsed = parse_topic_spec(spec, known_types)
        if parsed.name in seen:
            raise ValueError(f"topic {parsed.name} is listed twice")
        seen.add(parsed.name)
        result.append(parsed)
    if not result:
        raise ValueError("the topics list is empty: nothing to record")
    return result


QOS_MODES = ("auto", "reliable", "best_effort")


def adapt_qos(offered: Iterable[tuple[str, str]], latched: bool = False) -> tuple[str, str]:
    """Subscription (reliability, durability) for the publishers' offered QoS, as ``ros2 bag record``.

    ``offered``: (reliability, durability) per publisher, each ``"reliable"``/``"best_effort"`` and
    ``"transient_local"``/``"volatile"``. Reliable only when every publisher is reliable (a reliable
    subscription does not match a best-effort publisher), which lets large messages such as camera
    images be retransmitted instead of lost; transient local only for latched topics whose
    publishers all offer it. Raises ValueError when there is no publisher to adapt to.
    """
    offers = list(offered)
    if not offers:
        raise ValueError("no publisher to adapt the QoS to")
    reliability = "reliable" if all(r == "reliable" for r, _ in offers) else "best_effort"
    durability = (
        "transient_local" if latched and all(d == "transient_local" for _, d in offers) else "volatile"
    )
    return reliability, durability
