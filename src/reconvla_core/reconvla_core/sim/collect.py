"""``reconvla sim collect``: scripted-expert demonstrations -> one rosbag2 (MCAP) per episode.

One episode = one subtask (its instruction is constant), cut from CALVIN-style chains run
by the expert, so training scenes look like evaluation scenes: the first subtask starts
from the home pose in a fresh scene, later ones from the state the previous subtask left
(block held after a pick, blocks already in bowls or stacked). A failed subtask is written
with ``success=False`` and ends its chain. Collection scenes use seeds
``COLLECT_SEED_OFFSET + seed * 100003 + i``, disjoint from the evaluation set's.

Each bag holds, at the control rate and on the real robot's topics
(``reconvla_core.interfaces``): base and wrist images (rgb8), follower state
(``/joint_states_single``, position = 6 joints rad + gripper m, velocity = joint speeds),
the expert's leader command (``/master/joint_states``), the ground-truth gaze box, the
instruction (once, at the start) and the episode info at the end (task = instruction text,
``task_name``, ``task_family``, ``success``, ``operator="sim-expert"``, scene seed, ...).

``ExecutionNoise`` (``--noise-rad``) injects DART-style noise (Laskey et al., 2017): the arm
executes the expert's command plus a slowly varying joint offset while the recorded action stays
the expert's own command. A policy trained only on perfect demonstrations never sees itself a
little off target (and then hovers there); with noise the data holds those states, labelled with
the expert's way back.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reconvla_core import interfaces as itf
from reconvla_core.piper import GRIPPER_MAX
from reconvla_core.sim.env import PiperCellEnv, SimConfig
from reconvla_core.sim.expert import ScriptedExpert
from reconvla_core.sim.relabel import RelabelExpert
from reconvla_core.sim.tasks import Chain, Task, chain_for_scene

logger = logging.getLogger(__name__)

COLLECT_SEED_OFFSET = 10_000_000
# Who drives the demonstrations (``collect(expert=...)``, ``sim collect --expert``).
EXPERTS = {"scripted": ScriptedExpert, "relabel": RelabelExpert}
BASE_FRAME_ID = "camera_color_optical_frame"
WRIST_FRAME_ID = "wrist_camera_color_optical_frame"


@dataclass(frozen=True)
class ExecutionNoise:
    """A per-joint Ornstein-Uhlenbeck offset added to the executed command during a subtask's
    approach and descent to its block (until the expert first closes the gripper): where a
    policy's small errors leave it off target. From the close on (grasp, carry, release) the arm
    runs the expert's command as it is, so grasps and placements stay reliable. ``duration_s`` ends
    the offset earlier, that long after the subtask's start: the relabelling expert grasps only once
    the arm has settled where it commands, which a drifting offset never lets happen."""

    std_rad: float = 0.0  # stationary standard deviation of each joint's offset
    time_constant_s: float = 1.0  # correlation time: offsets drift, they do not jitter
    duration_s: float | None = None  # None: until the expert first closes the gripper

    def __post_init__(self) -> None:
        if not (np.isfinite(self.std_rad) and 0.0 <= self.std_rad <= 0.2):
            raise ValueError(f"execution noise std must be in 0..0.2 rad, got {self.std_rad}")
        if not (np.isfinite(self.time_constant_s) and self.time_constant_s > 0):
            raise ValueError(f"execution noise time constant must be > 0 s, got {self.time_constant_s}")
        if self.duration_s is not None and not (np.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError(f"execution noise duration must be > 0 s, got {self.duration_s}")

    def process(self, dt: float, rng: np.random.Generator) -> _NoiseProcess:
        return _NoiseProcess(self, dt, rng)


class _NoiseProcess:
    """The running offset of one subtask (starts at zero: the first frames are the expert's own)."""

    def __init__(self, noise: ExecutionNoise, dt: float, rng: np.random.Generator) -> None:
        self.decay = float(np.exp(-dt / noise.time_constant_s))
        self.scale = noise.std_rad * float(np.sqrt(1.0 - self.decay**2))
        self.rng = rng
        self.offset = np.zeros(6)
        self.closed = False
        self.steps_left = None if noise.duration_s is None else int(round(noise.duration_s / dt))

    def perturb(self, command: np.ndarray) -> np.ndarray:
        """The command the arm executes: ``command`` + the offset on the joints until the first close."""
        self.offset = self.decay * self.offset + self.scale * self.rng.standard_normal(6)
        self.closed = self.closed or command[6] < 0.5 * GRIPPER_MAX
        if self.steps_left is not None:  # duration_s: past it the noise ends as at a close
            self.closed = self.closed or self.steps_left <= 0
            self.steps_left -= 1
        if self.closed:
            return command
        executed = command.copy()
        executed[:6] += self.offset
        return executed


def collection_scene(index: int, seed: int) -> int:
    """Scene seed of chain ``index`` of a collection run: disjoint from the evaluation sets' seeds
    (``seed * 100003 + i``), so no demonstration is recorded in a scene a policy is scored on."""
    return COLLECT_SEED_OFFSET + int(seed) * 100003 + int(index)


def collection_chain(index: int, seed: int) -> Chain:
    """Chain ``index`` of a collection run: like the evaluation set, on disjoint scene seeds."""
    return chain_for_scene(collection_scene(index, seed))


class _EpisodeRecorder:
    """Writes the frames of one subtask episode into a bag."""

    def __init__(self, path: Path, task: Task, chain: Chain, position: int, start_ns: int,
                 noise_std_rad: float = 0.0, operator: str = "sim-expert",
                 extra_info: dict[str, Any] | None = None) -> None:
        from reconvla_core.data.bag_writer import EpisodeBagWriter

        self.path = path
        self.task = task
        self.chain = chain
        self.position = position
        self.start_ns = start_ns
        self.noise_std_rad = noise_std_rad
        self.operator = operator
        self.extra_info = dict(extra_info or {})  # more episode-info keys (e.g. a DAgger round), set before finish
        self.frames = 0
        self.writer = EpisodeBagWriter(path).open()
        self.writer.write_string(itf.INSTRUCTION_TOPIC, start_ns, task.instruction)

    def write(self, stamp_ns: int, obs: dict[str, Any], velocity: np.ndarray, action: np.ndarray, box: np.ndarray,
              relabelled: bool | None = None) -> None:
        """One frame; ``relabelled`` (DAgger): whether ``action`` is only the expert's label of a state
        the policy drove (written on the relabelled topic when given)."""
        w = self.writer
        w.write_image(itf.BASE_IMAGE_TOPIC, stamp_ns, obs["base_image"], frame_id=BASE_FRAME_ID)
        w.write_image(itf.WRIST_IMAGE_TOPIC, stamp_ns, obs["wrist_image"], frame_id=WRIST_FRAME_ID)
        w.write_joint_state(itf.FOLLOWER_STATE_TOPIC, stamp_ns, obs["state"], velocity=velocity)
        w.write_joint_state(itf.LEADER_COMMAND_TOPIC, stamp_ns, action)
        w.write_gaze_box(stamp_ns, box, valid=True)
        if relabelled is not None:
            w.write_flag(itf.RELABELLED_TOPIC, stamp_ns, relabelled)
        self.frames += 1

    def finish(self, success: bool, stop_ns: int, config: SimConfig) -> dict[str, Any]:
        return self.writer.finish(
            {
                "task": self.task.instruction,
                "instruction": self.task.instruction,
                "success": bool(success),
                "operator": self.operator,
                "task_name": self.task.name,
                "task_family": self.task.family,
                "scene_seed": self.chain.seed,
                "chain_position": self.position,
                "frames": self.frames,
                "control_hz": config.control_hz,
                "source": "reconvla_core.sim",
                "execution_noise_std_rad": self.noise_std_rad,
                **self.extra_info,
            }
        )


def collect(
    out_dir: str | Path,
    episodes: int,
    seed: int = 0,
    config: SimConfig | None = None,
    progress: bool = True,
    noise: ExecutionNoise | None = None,
    expert: str = "scripted",
    grasp_offset: float = 0.0,
) -> dict[str, Any]:
    """Collect ``episodes`` subtask episodes with an expert into ``out_dir/episode_XXXXXX``.

    ``expert``: ``scripted`` replays a plan made at each subtask's start; ``relabel`` acts from the
    measured state at every step (``RelabelExpert``, the DAgger labeller: demonstrations in the style
    of the labels DAgger adds later). ``noise``: execute the expert's commands with DART-style noise
    (the bags record the expert's). ``grasp_offset`` (m, scripted expert): grasp up to this far off
    the block's centre along the fingers' width, so demonstrations hold blocks off-centre and correct
    for it over the destination.
    Returns ``{"episodes", "successful", "frames", "steps_per_s", "out_dir", "bags"}``;
    ``steps_per_s`` counts control steps (physics + both cameras + bag writing) per wall second."""
    from tqdm import tqdm

    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    if expert not in EXPERTS:
        raise ValueError(f"--expert must be one of {', '.join(EXPERTS)}, got {expert!r}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output directory {out} exists and is not empty; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    config = config or SimConfig()
    if grasp_offset and expert != "scripted":
        raise ValueError("--grasp-offset needs the scripted expert (the relabelling one grasps where it stands)")
    if noise is not None and noise.std_rad == 0:
        noise = None
    if noise is not None and expert == "relabel" and noise.duration_s is None:
        raise ValueError("the relabelling expert grasps only once the arm settles where it commands, which a "
                         "drifting offset never lets happen: give the noise a duration (--noise-duration)")
    noise_std = noise.std_rad if noise else 0.0
    if noise:  # a noisy command may poke past a limit: clamp it, as the driver does
        config = dataclasses.replace(config, clip_actions=True)
    env = PiperCellEnv(config)
    driver = ScriptedExpert(env, grasp_offset=grasp_offset) if expert == "scripted" else EXPERTS[expert](env)
    period_ns = int(round(1e9 / config.control_hz))
    written: list[str] = []
    successful = frames = 0
    start = time.perf_counter()
    bar = tqdm(total=episodes, desc="collect", unit="ep", disable=not progress, leave=False)
    chain_index = 0
    try:
        while len(written) < episodes:
            chain = collection_chain(chain_index, seed)
            chain_index += 1
            obs = env.reset(chain=chain)
            clock_ns = time.time_ns()
            for position, task in enumerate(chain.tasks):
                if len(written) >= episodes:
                    break
                path = out / f"episode_{len(written):06d}"
                rng = np.random.default_rng([chain.seed, position, 11])  # the same offsets for the same subtask
                jitter = noise.process(config.control_dt, rng) if noise else None
                recorder = _EpisodeRecorder(path, task, chain, position, clock_ns, noise_std)
                success = False
                try:
                    while True:
                        action = driver.act()
                        velocity = np.concatenate([env.arm.state().velocities, [0.0]])
                        recorder.write(clock_ns, obs, velocity, action, env.gaze_box())
                        obs, info = env.step(jitter.perturb(action) if jitter else action)
                        clock_ns += period_ns
                        if info["subtask_success"] or info["done"]:
                            success = bool(info["subtask_success"])
                            break
                finally:
                    recorder.finish(success, clock_ns, config)
                written.append(str(path))
                frames += recorder.frames
                successful += int(success)
                bar.update(1)
                bar.set_postfix(ok=successful)
                if not success:
                    logger.info("subtask %r of scene %d failed; next chain", task.name, chain.seed)
                    break
    finally:
        bar.close()
        env.close()
    elapsed = time.perf_counter() - start
    return {
        "episodes": len(written),
        "successful": successful,
        "frames": frames,
        "steps_per_s": round(frames / elapsed, 2) if elapsed > 0 else 0.0,
        "out_dir": str(out),
        "image_size": [config.image_width, config.image_height],
        "execution_noise_std_rad": noise_std,
        "execution_noise_duration_s": noise.duration_s if noise else None,
        "grasp_offset_m": grasp_offset,
        "expert": expert,
    }


def save_episode_frames(bag_dir: str | Path, out_path: str | Path, every: int = 2, max_frames: int = 200) -> Path:
    """Write a collected episode's frames (base view with its gaze box | wrist view) as a GIF,
    or as one contact-sheet PNG when ``out_path`` ends in ``.png``. Returns the path written."""
    import imageio.v2 as imageio
    from rosbags.rosbag2 import Reader

    from reconvla_core.data.bag_writer import get_typestore
    from reconvla_core.sim.evaluate import draw_box

    bag = Path(bag_dir)
    if not bag.is_dir():
        raise FileNotFoundError(f"{bag} is not a rosbag2 directory")
    typestore = get_typestore()
    images: dict[str, list[np.ndarray]] = {itf.BASE_IMAGE_TOPIC: [], itf.WRIST_IMAGE_TOPIC: []}
    boxes: list[np.ndarray] = []
    with Reader(bag) as reader:
        for connection, _, raw in reader.messages():
            if connection.topic in images:
                msg = typestore.deserialize_cdr(raw, connection.msgtype)
                rgb = np.asarray(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)[:, : msg.width * 3]
                images[connection.topic].append(rgb.reshape(msg.height, msg.width, 3))
            elif connection.topic == itf.GAZE_BOX_TOPIC:
                boxes.append(np.asarray(typestore.deserialize_cdr(raw, connection.msgtype).data[:4]))
    count = min(len(images[itf.BASE_IMAGE_TOPIC]), len(images[itf.WRIST_IMAGE_TOPIC]))
    if count == 0:
        raise ValueError(f"{bag} has no camera frames on {itf.BASE_IMAGE_TOPIC} / {itf.WRIST_IMAGE_TOPIC}")
    frames = []
    for i in range(0, count, max(1, every))[:max_frames]:
        base = images[itf.BASE_IMAGE_TOPIC][i]
        if i < len(boxes):
            base = draw_box(base, boxes[i])
        frames.append(np.concatenate([base, images[itf.WRIST_IMAGE_TOPIC][i]], axis=1))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        columns = 4
        pad = (-len(frames)) % columns
        frames += [np.zeros_like(frames[0])] * pad
        rows = [np.concatenate(frames[r : r + columns], axis=1) for r in range(0, len(frames), columns)]
        imageio.imwrite(out, np.concatenate(rows, axis=0))
    else:
        imageio.mimsave(out, frames, duration=0.1 * every, loop=0)
    return out
