"""``reconvla eval probe``: which joints does a policy predict correctly while the expert drives?

Closed-loop success is all-or-nothing; this probe says *why* a policy fails. The scripted expert
controls the arm from the start of each chain (so every policy sees the same states), and at
each step the policy's chunk is compared with the expert's next K commands. Per joint: how
often the expert moves it over the chunk (|a_{t+K-1} - s_t| above ``moving_rad``), the
correlation between predicted and true motion on those frames, and their mean sizes.

Reading it: a joint whose motion only the image can tell (the base yaw towards the named block)
with correlation ~0 means the policy has not grounded the instruction; a joint with high
correlation follows the task's phases (descend, lift). A model that answers with a gaze box
first (``answer_box``) is also scored on that box against the simulator's: mean IoU and the
centre error in image widths/heights.

A model with spatial keypoints reports the gaze point its head acts on; the probe then also says
whether the head steers by it (``gaze``): keypoint 0's distance from the true gaze centre, the
predicted base-yaw motion with the *true* centre given in its place (perception made perfect), and
how much that motion changes when the given centre moves ``gaze_shift`` left vs right. A head that
ignores its gaze input answers the same whatever it is given (response ~0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from reconvla_core.policy import ExpertPolicy, Policy
from reconvla_core.sim.env import PiperCellEnv, SimConfig
from reconvla_core.sim.tasks import Chain

JOINT_NAMES: tuple[str, ...] = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")


def probe_policy(policy: Policy, chains: Sequence[Chain], config: SimConfig | None = None, *,
                 steps_per_chain: int = 14, moving_rad: float = 0.05, gaze_shift: float = 0.15,
                 env: PiperCellEnv | None = None) -> dict[str, Any]:
    """Per-joint agreement of ``policy``'s chunks with the expert's commands (see the module doc)."""
    if steps_per_chain < 2:
        raise ValueError(f"steps_per_chain must be >= 2, got {steps_per_chain}")
    if isinstance(policy, ExpertPolicy):
        raise ValueError("the expert drives the probe; probe a checkpoint (or random as a baseline)")
    own_env = env is None
    env = env or PiperCellEnv(config or SimConfig())
    expert = ExpertPolicy(env)
    predicted: list[np.ndarray] = []
    true: list[np.ndarray] = []
    box_scores: list[tuple[float, float]] = []  # (IoU, centre error) of the policy's gaze box, if it gives one
    gaze_rows: list[tuple[float, float]] = []  # (keypoint-0 error, right - left base yaw)
    oracle_yaw: list[np.ndarray] = []  # chunks predicted with the true gaze point
    horizon = None
    try:
        for chain in chains:
            obs = env.reset(chain=chain)
            expert.reset()
            policy.reset()
            states, chunks, commands, oracle_chunks = [], [], [], []
            for _ in range(steps_per_chain):
                command = expert.infer(obs).actions[0]
                output = policy.infer(obs)
                if output.box is not None:  # where the model looked (answer_box models), base-view coordinates
                    box_scores.append(box_agreement(output.box, env.gaze_box()))
                if output.gaze_point is not None:
                    oracle_chunks.append(gaze_response(policy, obs, output.gaze_point, env.gaze_box(),
                                                       gaze_shift, gaze_rows))
                states.append(np.asarray(obs["state"], dtype=np.float64))
                chunks.append(output.actions)
                commands.append(command)
                obs, _ = env.step(command)
            horizon = len(chunks[0])
            for t in range(len(states) - horizon + 1):
                last = horizon - 1
                predicted.append(chunks[t][last, :6] - states[t][:6])
                true.append(commands[t + last][:6] - states[t][:6])
                if oracle_chunks:
                    oracle_yaw.append(oracle_chunks[t][last, :6] - states[t][:6])
    finally:
        if own_env:
            env.close()
    if not true:
        raise ValueError(f"steps_per_chain ({steps_per_chain}) is shorter than the policy's chunk ({horizon})")
    pred, target = np.array(predicted), np.array(true)
    joints = {}
    for j, name in enumerate(JOINT_NAMES):
        moving = np.abs(target[:, j]) > moving_rad
        p, t = pred[moving, j], target[moving, j]
        corr = float(np.corrcoef(p, t)[0, 1]) if moving.sum() > 2 and p.std() > 1e-9 and t.std() > 1e-9 else 0.0
        joints[name] = {"moving_frames": int(moving.sum()), "correlation": round(corr, 3),
                        "mean_abs_predicted_rad": round(float(np.abs(p).mean()), 4) if p.size else 0.0,
                        "mean_abs_true_rad": round(float(np.abs(t).mean()), 4) if t.size else 0.0}
    result = {"policy": policy.name, "chains": len(chains), "frames": int(len(target)), "horizon": horizon,
              "steps_per_chain": steps_per_chain, "moving_rad": moving_rad, "joints": joints}
    if box_scores:
        scores = np.array(box_scores)
        result["gaze_box"] = {"frames": len(scores), "mean_iou": round(float(scores[:, 0].mean()), 3),
                              "mean_centre_error": round(float(scores[:, 1].mean()), 4)}
    if gaze_rows:
        rows = np.array(gaze_rows)
        moving = np.abs(target[:, 0]) > moving_rad
        with_truth = np.array(oracle_yaw)[moving, 0]
        corr = (float(np.corrcoef(with_truth, target[moving, 0])[0, 1])
                if moving.sum() > 2 and with_truth.std() > 1e-9 else 0.0)
        result["gaze"] = {"frames": len(rows), "shift": gaze_shift,
                          "keypoint0_error": round(float(rows[:, 0].mean()), 4),
                          "base_yaw_response_rad": round(float(rows[:, 1].mean()), 4),
                          "base_yaw_with_true_gaze": {"correlation": round(corr, 3),
                                                      "mean_abs_predicted_rad": round(float(np.abs(with_truth).mean()), 4)
                                                      if with_truth.size else 0.0}}
    return result


def gaze_response(policy: Policy, obs: dict[str, Any], own_point: np.ndarray, true_box: np.ndarray, shift: float,
                  rows: list[tuple[float, float]]) -> np.ndarray:
    """Predict again with the true gaze centre, and with it moved ``shift`` left and right; append
    (keypoint-0 error, right - left base-yaw motion) to ``rows`` and
    return the chunk predicted with the truth. Points are base-view coordinates, as the images."""
    box = np.asarray(true_box, dtype=np.float64)
    centre = 0.5 * np.array([box[0] + box[2], box[1] + box[3]])
    state = float(np.asarray(obs["state"])[0])

    def yaw_with(point: np.ndarray) -> tuple[float, np.ndarray]:
        chunk = policy.infer({**obs, "gaze_point": np.clip(point, 0.0, 1.0)}).actions
        return float(chunk[-1, 0]) - state, chunk

    _, truth_chunk = yaw_with(centre)
    left, _ = yaw_with(centre - [shift, 0.0])
    right, _ = yaw_with(centre + [shift, 0.0])
    rows.append((float(np.hypot(*(np.asarray(own_point) - centre))), right - left))
    return truth_chunk


def box_agreement(predicted: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(IoU, centre distance) of two normalised xyxy boxes; the distance is in image widths/heights."""
    p, t = np.asarray(predicted, dtype=np.float64), np.asarray(true, dtype=np.float64)
    inter_w = max(0.0, min(p[2], t[2]) - max(p[0], t[0]))
    inter_h = max(0.0, min(p[3], t[3]) - max(p[1], t[1]))
    inter = inter_w * inter_h
    union = max(p[2] - p[0], 0.0) * max(p[3] - p[1], 0.0) + (t[2] - t[0]) * (t[3] - t[1]) - inter
    centre = float(np.hypot((p[0] + p[2] - t[0] - t[2]) / 2, (p[1] + p[3] - t[1] - t[3]) / 2))
    return (inter / union if union > 0 else 0.0), centre
