"""`reconvla sim collect`: bags read back with rosbags, on the real robot's topics and types."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reconvla_core import interfaces as itf
from reconvla_core.cli.main import main

EXPECTED_TYPES = {
    itf.BASE_IMAGE_TOPIC: "sensor_msgs/msg/Image",
    itf.WRIST_IMAGE_TOPIC: "sensor_msgs/msg/Image",
    itf.FOLLOWER_STATE_TOPIC: "sensor_msgs/msg/JointState",
    itf.LEADER_COMMAND_TOPIC: "sensor_msgs/msg/JointState",
    itf.INSTRUCTION_TOPIC: "std_msgs/msg/String",
    itf.GAZE_BOX_TOPIC: "std_msgs/msg/Float32MultiArray",
    itf.EPISODE_INFO_TOPIC: "std_msgs/msg/String",
}


def _read(bag):
    from rosbags.rosbag2 import Reader

    from reconvla_core.data.bag_writer import get_typestore

    typestore = get_typestore()
    with Reader(bag) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        assert list(bag.glob("*.mcap"))  # MCAP storage
        messages: dict[str, list] = {}
        for connection, stamp, raw in reader.messages():
            messages.setdefault(connection.topic, []).append(
                (stamp, typestore.deserialize_cdr(raw, connection.msgtype))
            )
    return types, messages


def test_collect_writes_readable_bags(tmp_path, capsys):
    out = tmp_path / "demos"
    code = main(["sim", "collect", "--episodes", "2", "--out", str(out), "--seed", "0",
                 "--image-size", "48x32", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert set(result) >= {"episodes", "successful", "frames", "steps_per_s"}
    assert result["episodes"] == 2 and result["successful"] == 2 and result["steps_per_s"] > 0
    bags = sorted(out.iterdir())
    assert [b.name for b in bags] == ["episode_000000", "episode_000001"]
    total = 0
    instructions = []
    for bag in bags:
        types, messages = _read(bag)
        assert types == EXPECTED_TYPES
        frames = len(messages[itf.BASE_IMAGE_TOPIC])
        total += frames
        for topic in (itf.WRIST_IMAGE_TOPIC, itf.FOLLOWER_STATE_TOPIC, itf.LEADER_COMMAND_TOPIC, itf.GAZE_BOX_TOPIC):
            assert len(messages[topic]) == frames
        assert len(messages[itf.INSTRUCTION_TOPIC]) == 1 and len(messages[itf.EPISODE_INFO_TOPIC]) == 1
        image = messages[itf.BASE_IMAGE_TOPIC][0][1]
        assert (image.width, image.height, image.encoding, image.step) == (48, 32, "rgb8", 48 * 3)
        stamps = [s for s, _ in messages[itf.FOLLOWER_STATE_TOPIC]]
        assert np.allclose(np.diff(stamps), 1e8)  # 10 Hz
        state = messages[itf.FOLLOWER_STATE_TOPIC][0][1]
        assert list(state.name) == ["joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "gripper"]
        leader = np.array([m.position for _, m in messages[itf.LEADER_COMMAND_TOPIC]])
        assert leader.shape == (frames, 7) and np.all(leader[:, 6] <= 0.07)
        gaze = np.array([m.data for _, m in messages[itf.GAZE_BOX_TOPIC]])
        assert np.all(gaze[:, 4] == 1.0) and np.all((gaze[:, :4] >= 0) & (gaze[:, :4] <= 1))
        info = json.loads(messages[itf.EPISODE_INFO_TOPIC][0][1].data)
        instruction = messages[itf.INSTRUCTION_TOPIC][0][1].data
        assert info["success"] is True and info["operator"] == "sim-expert"
        assert info["instruction"] == instruction == info["task"]
        assert info["frames"] == frames and info["task_family"] in ("pick", "place", "stack")
        instructions.append(instruction)
    assert total == result["frames"]
    assert instructions[0] != instructions[1]  # one subtask per episode, consecutive in a chain
    # The frame helper (also `reconvla sim frames`): base | wrist side by side, 4 per row.
    import imageio.v2 as imageio

    from reconvla_core.sim.collect import save_episode_frames

    sheet = imageio.imread(save_episode_frames(bags[0], tmp_path / "sheet.png", every=5))
    assert sheet.shape[1] == 4 * 2 * 48 and sheet.shape[0] % 32 == 0
    assert main(["sim", "frames", str(bags[1]), "--out", str(tmp_path / "ep.gif")]) == 0
    assert (tmp_path / "ep.gif").stat().st_size > 0


def test_collect_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "old").mkdir()
    from reconvla_core.sim.collect import collect

    with pytest.raises(ValueError, match="not empty"):
        collect(tmp_path, 1)
    assert main(["sim", "collect", "--episodes", "1", "--out", str(tmp_path)]) == 2


def test_demonstration_scenes_are_disjoint_from_the_evaluation_chains():
    """Both of the demo's recorders (direct collector and ROS teleop) record in scenes no
    evaluation set scores: a policy is never evaluated on a scene it was shown."""
    from reconvla_core.demo.pipeline import DIRECT_COLLECT_SEED_OFFSET, ros_record_scene
    from reconvla_core.sim.collect import collection_chain, collection_scene
    from reconvla_core.sim.tasks import make_eval_chains

    evaluated = {chain.seed for seed in (0, 1, 100) for chain in make_eval_chains(100, seed=seed)}
    for demo_seed in (0, 1, 5):
        ros_scenes = {ros_record_scene(demo_seed) + i for i in range(200)}  # sim_robot: next seed per reset
        direct_scenes = {collection_scene(i, demo_seed + DIRECT_COLLECT_SEED_OFFSET) for i in range(200)}
        assert not ros_scenes & evaluated and not direct_scenes & evaluated
        assert not ros_scenes & direct_scenes
    assert collection_chain(3, 7).seed == collection_scene(3, 7)


def test_execution_noise_perturbs_the_approach_only():
    """DART-style noise: a drifting offset on the executed joints until the first close, none after;
    the recorded command is never touched."""
    from reconvla_core.sim.collect import ExecutionNoise

    process = ExecutionNoise(std_rad=0.05, time_constant_s=1.0).process(0.1, np.random.default_rng(0))
    open_command = np.array([0.1, 1.2, -0.8, 0.0, 1.0, 0.0, 0.07])
    approach = [process.perturb(open_command.copy()) - open_command for _ in range(200)]
    offsets = np.array(approach)[:, :6]
    assert np.all(np.array(approach)[:, 6] == 0.0)  # the gripper runs as commanded
    assert 0.02 < offsets.std() < 0.08  # about the configured std (stationary OU)
    assert np.abs(np.diff(offsets, axis=0)).mean() < 0.5 * np.abs(offsets).mean()  # drifts, does not jitter
    closed = open_command.copy()
    closed[6] = 0.0
    assert np.array_equal(process.perturb(closed), closed)
    assert np.array_equal(process.perturb(open_command), open_command)  # after the close: the expert's own
    with pytest.raises(ValueError, match="std"):
        ExecutionNoise(std_rad=float("nan"))
    with pytest.raises(ValueError, match="time constant"):
        ExecutionNoise(std_rad=0.03, time_constant_s=0.0)


def test_collect_with_noise_records_the_expert_commands(tmp_path):
    """The arm runs off the expert's path (the state differs from a clean run) while the bag's leader
    command is the expert's; the episode info says how much noise was injected."""
    from reconvla_core.sim.collect import ExecutionNoise, collect
    from reconvla_core.sim.env import SimConfig

    config = SimConfig(image_width=48, image_height=32)
    clean = collect(tmp_path / "clean", 1, seed=3, config=config, progress=False)
    noisy = collect(tmp_path / "noisy", 1, seed=3, config=config, progress=False,
                    noise=ExecutionNoise(std_rad=0.05))
    assert clean["successful"] == noisy["successful"] == 1
    assert noisy["execution_noise_std_rad"] == 0.05
    _, clean_msgs = _read(tmp_path / "clean" / "episode_000000")
    _, noisy_msgs = _read(tmp_path / "noisy" / "episode_000000")
    info = json.loads(noisy_msgs[itf.EPISODE_INFO_TOPIC][0][1].data)
    assert info["execution_noise_std_rad"] == 0.05
    state = lambda msgs: np.array([m.position for _, m in msgs[itf.FOLLOWER_STATE_TOPIC]])  # noqa: E731
    leader = lambda msgs: np.array([m.position for _, m in msgs[itf.LEADER_COMMAND_TOPIC]])  # noqa: E731
    n = 15  # the approach: the first commands are the same plan, the states are not
    assert np.allclose(leader(clean_msgs)[:3], leader(noisy_msgs)[:3], atol=1e-6)
    assert np.abs(state(clean_msgs)[:n, :6] - state(noisy_msgs)[:n, :6]).max() > 0.01


def test_collect_with_the_relabelling_expert_completes_subtasks_in_its_own_style(tmp_path):
    """`--expert relabel` drives from the measured state at every step (DAgger's labeller), so the bags
    hold demonstrations in the style of the labels DAgger adds later; they differ from the scripted
    expert's on the same scene."""
    from reconvla_core.sim.collect import collect
    from reconvla_core.sim.env import SimConfig

    config = SimConfig(image_width=48, image_height=32)
    with pytest.raises(ValueError, match="--expert"):
        collect(tmp_path / "bad", 1, config=config, progress=False, expert="teleop")
    scripted = collect(tmp_path / "scripted", 2, seed=3, config=config, progress=False)
    relabel = collect(tmp_path / "relabel", 2, seed=3, config=config, progress=False, expert="relabel")
    assert relabel["expert"] == "relabel" and scripted["expert"] == "scripted"
    assert relabel["successful"] == relabel["episodes"] == 2
    _, scripted_msgs = _read(tmp_path / "scripted" / "episode_000000")
    _, relabel_msgs = _read(tmp_path / "relabel" / "episode_000000")
    assert scripted_msgs[itf.INSTRUCTION_TOPIC][0][1].data == relabel_msgs[itf.INSTRUCTION_TOPIC][0][1].data
    leader = lambda msgs: np.array([m.position for _, m in msgs[itf.LEADER_COMMAND_TOPIC]])  # noqa: E731
    n = min(len(leader(scripted_msgs)), len(leader(relabel_msgs)))
    assert np.abs(leader(scripted_msgs)[:n, :6] - leader(relabel_msgs)[:n, :6]).max() > 0.01


def test_noise_with_a_duration_perturbs_only_the_subtask_start_and_the_relabelling_expert_recovers(tmp_path):
    from reconvla_core.sim.collect import ExecutionNoise, collect
    from reconvla_core.sim.env import SimConfig

    config = SimConfig(image_width=48, image_height=32)
    with pytest.raises(ValueError, match="duration"):
        ExecutionNoise(std_rad=0.05, duration_s=0.0)
    with pytest.raises(ValueError, match="--noise-duration"):  # a drifting offset never lets it grasp
        collect(tmp_path / "bad", 1, config=config, progress=False, expert="relabel",
                noise=ExecutionNoise(std_rad=0.05))
    noise = ExecutionNoise(std_rad=0.05, duration_s=2.0)
    process = noise.process(config.control_dt, np.random.default_rng(0))
    command = np.full(7, 0.07)  # gripper open throughout: only the duration ends the offset
    executed = np.array([process.perturb(command) for _ in range(40)])
    steps = int(round(2.0 / config.control_dt))
    assert np.abs(executed[1:steps, :6] - command[:6]).max() > 0.005
    np.testing.assert_array_equal(executed[steps:], np.tile(command, (40 - steps, 1)))
    collect(tmp_path / "clean", 2, seed=3, config=config, progress=False, expert="relabel")
    noisy = collect(tmp_path / "noisy", 2, seed=3, config=config, progress=False, expert="relabel", noise=noise)
    assert noisy["successful"] == noisy["episodes"] == 2 and noisy["execution_noise_duration_s"] == 2.0
    _, clean_msgs = _read(tmp_path / "clean" / "episode_000000")
    _, noisy_msgs = _read(tmp_path / "noisy" / "episode_000000")
    state = lambda msgs: np.array([m.position for _, m in msgs[itf.FOLLOWER_STATE_TOPIC]])  # noqa: E731
    assert np.abs(state(clean_msgs)[:steps, :6] - state(noisy_msgs)[:steps, :6]).max() > 0.01


def test_grasp_offset_is_the_scripted_experts_only(tmp_path):
    from reconvla_core.sim.collect import collect

    with pytest.raises(ValueError, match="grasp-offset needs the scripted expert"):
        collect(tmp_path / "bags", 1, expert="relabel", grasp_offset=0.01, progress=False)
