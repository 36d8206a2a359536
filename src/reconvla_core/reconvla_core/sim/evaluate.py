"""Closed-loop evaluation on CALVIN-style chains: metrics, a bar chart and rollout frames.

A chain counts the subtasks completed in a row (0..5); ``success_by_position[k]`` is the
fraction of chains that completed at least k+1 subtasks and ``avg_len`` the mean count
(CALVIN's "average length"). Each subtask has ``SimConfig.subtask_time_limit_s`` of sim
time. A policy chunk is executed step by step and dropped when the subtask changes.
Each chunk passes the deployment's limit check first (runtime/safety.py, the one arm_command
runs): a chunk with a target beyond a soft joint limit by more than the tolerance is refused whole
and the arm holds its last command for the chunk's length (``refused_chunks``, out of ``chunks``),
as on the robot; targets within the tolerance are clipped onto the soft limits. NaN/inf or a wrong
shape is an error. A ReconVLA policy keeps its own targets inside the soft limits and says how many
it clipped (``clipped_targets``; policy.py).

A policy that reports the gaze point its head acted on (models with spatial keypoints) is also scored
on it at every chunk: how far from the true gaze centre, and on which object (``gaze_points`` in
the metrics), split by phase: the approach (gaze on the block) and, for place and stack, the carry
(gaze on the destination). It tells "looked at the wrong object" from "acted badly on the right one".
A failing subtask runs to its time limit, so most chunks come from subtasks already lost; the gaze
where a subtask is decided is scored apart: the first ``APPROACH_START_CHUNKS`` chunks of each approach
(``start_of_approach``), and the chunks of completed and of failed subtasks (``by_outcome``).

The subtask that ends a chain is named by how it failed (``failures``: per family, counts of
``wrong_block``, ``not_grasped``, ``held_over_target``, ``released_off_target``, ...; sim/failures.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reconvla_core.policy import Policy
from reconvla_core.runtime.safety import SafetyFilter
from reconvla_core.sim.env import PiperCellEnv, SimConfig, validate_action
from reconvla_core.sim.failures import FAILURE_MODES, SubtaskWatch, classify, summarise_failures, summarise_in_hand
from reconvla_core.sim.tasks import CHAIN_LENGTH, TASK_FAMILIES, Chain

logger = logging.getLogger(__name__)


# A gaze point farther than this from every object's centre (|dx| + |dy|, a fraction of the base
# view) is on none of them: about two block widths at the cell's depth.
GAZE_ON_OBJECT = 0.1
GAZE_TARGETS = ("gaze", "other_named", "unnamed", "none")
APPROACH_START_CHUNKS = 3  # the chunks that set off towards an object (1.5 s at 10 Hz, 5-step chunks)


@dataclasses.dataclass(frozen=True)
class GazeSample:
    """Where a chunk's gaze point was: ``phase`` "approach" (the gaze belongs on the block) or "carry"
    (on its destination); ``error`` |dx| + |dy| from the true gaze centre (base view); ``on`` the
    nearest object: the gaze object, the other one the instruction names, another, or none;
    ``subtask`` its place in the chain; ``index`` the chunk's place in its subtask's phase (0: the
    first); ``completed`` whether that subtask was completed (known when the chain ends)."""

    family: str
    phase: str
    error: float
    on: str
    subtask: int = 0
    index: int = 0
    completed: bool | None = None


@dataclasses.dataclass
class ChainResult:
    seed: int
    completed: int
    families: list[str]
    steps: int
    frames: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)
    gaze: list[GazeSample] = dataclasses.field(default_factory=list, repr=False)
    failure: str | None = None  # how the subtask that ended the chain failed (sim/failures.py); None: all done
    chunks: int = 0  # chunks the policy produced
    refused_chunks: int = 0  # of those, refused by the deployment's limit check (the arm held)
    clipped_targets: int = 0  # values the policy itself clipped onto the soft limits (ModelPolicy)
    holds: list[tuple[str, float, bool]] = dataclasses.field(default_factory=list)  # place/stack: in-hand offset, succeeded


def gaze_sample(env: PiperCellEnv, point: np.ndarray) -> GazeSample:
    """Score a gaze point ((x, y), normalised base view) against the twin's objects now."""
    gaze, block, destination = env.gaze_object, env.target_object, env.destination_object
    point = np.asarray(point, np.float64)[:2]
    distance = {name: float(np.abs(point - env.gaze_centre(name)).sum()) for name in env.bodies if name != "table"}
    nearest = min(distance, key=distance.__getitem__)
    if distance[nearest] > GAZE_ON_OBJECT:
        on = "none"
    elif nearest == gaze:
        on = "gaze"
    else:
        on = "other_named" if nearest in (block, destination) else "unnamed"
    phase = "approach" if gaze == block else "carry"
    return GazeSample(env.current_task.family, phase, distance[gaze], on, subtask=env.subtask_index)


def draw_box(image: np.ndarray, box: Sequence[float], colour: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """Copy of ``image`` with a 1-pixel rectangle at the normalised xyxy ``box``."""
    out = image.copy()
    h, w = out.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in (box[0] * (w - 1), box[1] * (h - 1), box[2] * (w - 1), box[3] * (h - 1)))
    out[y1 : y2 + 1, [x1, x2]] = colour
    out[[y1, y2], x1 : x2 + 1] = colour
    return out


def run_chain(
    env: PiperCellEnv, policy: Policy, chain: Chain, record: bool = False, frame_every: int = 2
) -> ChainResult:
    """Run one chain until it completes or a subtask runs out of time."""
    policy.reset()
    render = policy.needs_images or record
    obs = env.reset(chain=chain) if render else _reset_without_images(env, chain)
    queue: list[np.ndarray] = []
    frames: list[np.ndarray] = []
    gaze: list[GazeSample] = []
    chunks_in_phase: dict[tuple[int, str], int] = {}
    watch = SubtaskWatch(env)
    holds: list[tuple[str, float | None, bool]] = []  # (family, in-hand offset at the lift, succeeded)
    steps = chunks = refused = clipped = 0
    while True:
        if not queue:
            chunk = policy.infer(obs)
            chunks += 1
            clipped += chunk.clipped_targets
            queue, accepted = deployable(chunk.actions, env.last_command)
            refused += int(not accepted)
            if chunk.gaze_point is not None:
                sample = gaze_sample(env, chunk.gaze_point)
                key = (sample.subtask, sample.phase)
                gaze.append(dataclasses.replace(sample, index=chunks_in_phase.get(key, 0)))
                chunks_in_phase[key] = chunks_in_phase.get(key, 0) + 1
        action = queue.pop(0)
        obs, info = env.step(action, render=render)
        steps += 1
        if record and steps % frame_every == 0:
            frames.append(np.concatenate([draw_box(obs["base_image"], info["gaze_box"]), obs["wrist_image"]], axis=1))
        if not info["subtask_success"]:
            watch.update()
        else:
            holds.append((watch.family, watch.in_hand_offset, True))
            if not info["done"]:
                queue = []  # new instruction: a chunk planned for the old one no longer applies
                watch = SubtaskWatch(env)
        if info["done"]:
            break
    completed = int(info["completed"])
    gaze = [dataclasses.replace(g, completed=g.subtask < completed) for g in gaze]
    failure = classify(watch.trace()) if info["timeout"] else None
    if info["timeout"]:
        holds.append((watch.family, watch.in_hand_offset, False))
    holds = [(family, offset, ok) for family, offset, ok in holds if offset is not None and family != "pick"]
    return ChainResult(chain.seed, completed, [t.family for t in chain.tasks], steps, frames, gaze, failure,
                       chunks, refused, clipped, holds)


_DEPLOYMENT_LIMITS = SafetyFilter()


def deployable(actions: np.ndarray, last_command: np.ndarray) -> tuple[list[np.ndarray], bool]:
    """What the robot executes of a (K, 7) chunk: the targets clipped onto the soft limits, or, when
    one lies beyond them by more than the tolerance, the last command held K times (refused)."""
    actions = np.stack([validate_action(action, clip=True) for action in actions])  # shape, NaN: ValueError
    if _DEPLOYMENT_LIMITS.limit_violation(actions) is not None:
        return [np.asarray(last_command, dtype=np.float64)] * len(actions), False
    config = _DEPLOYMENT_LIMITS.config
    return list(np.clip(actions, config.soft_lower, config.soft_upper)), True


def _reset_without_images(env: PiperCellEnv, chain: Chain) -> dict[str, Any]:
    env.reset(chain=chain)
    return env.observe(render=False)


def summarise(results: Sequence[ChainResult], length: int = CHAIN_LENGTH) -> dict[str, Any]:
    """CALVIN metrics: avg_len, success_by_position (1..length in a row), per-family success rate."""
    completed = np.array([r.completed for r in results], dtype=np.float64)
    by_position = [float(np.mean(completed >= k)) for k in range(1, length + 1)]
    attempts = {family: 0 for family in TASK_FAMILIES}
    successes = {family: 0 for family in TASK_FAMILIES}
    for result in results:
        for position, family in enumerate(result.families):
            if position > result.completed:
                break
            attempts[family] += 1  # reached this subtask
            successes[family] += int(position < result.completed)
    per_task = {f: (successes[f] / attempts[f] if attempts[f] else None) for f in TASK_FAMILIES}
    metrics = {
        "avg_len": float(completed.mean()) if len(completed) else 0.0,
        "success_by_position": by_position,
        "per_task": per_task,
        "per_task_attempts": attempts,
        "chains": len(results),
        "chunks": int(sum(r.chunks for r in results)),
        "refused_chunks": int(sum(r.refused_chunks for r in results)),
        "clipped_targets": int(sum(r.clipped_targets for r in results)),
    }
    failures = [(r.families[r.completed], r.failure) for r in results if r.failure is not None]
    if failures:
        metrics["failures"] = summarise_failures(failures)
    holds = [hold for result in results for hold in result.holds]
    if holds:
        metrics["in_hand_offset"] = summarise_in_hand(holds)
    samples = [sample for result in results for sample in result.gaze]
    if samples:
        metrics["gaze_points"] = summarise_gaze(samples)
    return metrics


def summarise_gaze(samples: Sequence[GazeSample]) -> dict[str, Any]:
    """Gaze-point error (mean, median) and the share of chunks on each kind of object, overall, per
    phase ("approach-place", "carry-stack", ...), at the start of each approach (per family) and by
    the outcome of the chunk's subtask."""

    def stats(group: Sequence[GazeSample]) -> dict[str, Any]:
        errors = np.array([s.error for s in group])
        return {"chunks": len(group), "mean_error": round(float(errors.mean()), 4),
                "median_error": round(float(np.median(errors)), 4),
                "on": {kind: round(sum(s.on == kind for s in group) / len(group), 3) for kind in GAZE_TARGETS}}

    phases: dict[str, list[GazeSample]] = {}
    for sample in samples:
        phases.setdefault(f"{sample.phase}-{sample.family}", []).append(sample)
    starts: dict[str, list[GazeSample]] = {}
    for sample in samples:
        if sample.phase == "approach" and sample.index < APPROACH_START_CHUNKS:
            starts.setdefault(sample.family, []).append(sample)
    outcomes = {"completed": [s for s in samples if s.completed], "failed": [s for s in samples if s.completed is False]}
    return {**stats(samples), "by_phase": {name: stats(group) for name, group in sorted(phases.items())},
            "start_of_approach": {family: stats(group) for family, group in sorted(starts.items())},
            "by_outcome": {name: stats(group) for name, group in outcomes.items() if group}}


def evaluate_policy(
    policy: Policy,
    chains: Sequence[Chain],
    config: SimConfig | None = None,
    record_chains: int = 0,
    progress: bool = True,
    env: PiperCellEnv | None = None,
) -> tuple[dict[str, Any], list[ChainResult]]:
    """Evaluate ``policy`` on ``chains``; returns (metrics, per-chain results).

    ``record_chains``: keep rollout frames (base with the gaze box | wrist) of the first N chains.
    ``env``: reuse an env (ExpertPolicy is bound to one); otherwise one is made and closed."""
    from tqdm import tqdm

    own_env = env is None
    if env is None:
        config = dataclasses.replace(config or SimConfig(), clip_actions=True)
        env = PiperCellEnv(config)
    results: list[ChainResult] = []
    start = time.perf_counter()
    steps = 0
    try:
        bar = tqdm(chains, desc=f"eval {policy.name}", unit="chain", disable=not progress, leave=False)
        for index, chain in enumerate(bar):
            result = run_chain(env, policy, chain, record=index < record_chains)
            results.append(result)
            steps += result.steps
            bar.set_postfix(avg_len=f"{np.mean([r.completed for r in results]):.2f}")
        bar.close()
    finally:
        if own_env:
            env.close()
    elapsed = time.perf_counter() - start
    metrics = summarise(results)
    metrics.update(
        {
            "policy": policy.name,
            "steps": steps,
            "steps_per_s": round(steps / elapsed, 2) if elapsed > 0 else 0.0,
            "elapsed_s": round(elapsed, 2),
            "seeds": [r.seed for r in results],
            "completed": [r.completed for r in results],
        }
    )
    return metrics, results


def save_report(metrics: dict[str, Any], results: Sequence[ChainResult], out_dir: str | Path) -> dict[str, str]:
    """Write eval.json, a bar chart (eval_sim.png) and rollout GIFs + first-frame PNGs into ``out_dir``."""
    import imageio.v2 as imageio
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    failures = metrics.get("failures") or {}
    fig, axes = plt.subplots(1, 3 if failures else 2, figsize=(13.5 if failures else 9, 3.6))
    ax1, ax2 = axes[0], axes[1]
    positions = np.arange(1, len(metrics["success_by_position"]) + 1)
    ax1.bar(positions, metrics["success_by_position"], color="#3b75af")
    for x, y in zip(positions, metrics["success_by_position"]):
        ax1.text(x, y + 0.02, f"{y:.2f}", ha="center", fontsize=8)
    ax1.set(xlabel="subtasks completed in a row", ylabel="success rate", ylim=(0, 1.1), xticks=positions)
    ax1.set_title(f"{metrics['policy']}: avg len {metrics['avg_len']:.2f} ({metrics['chains']} chains)")
    families = [f for f, v in metrics["per_task"].items() if v is not None]
    ax2.bar(families, [metrics["per_task"][f] for f in families], color="#e07b39")
    ax2.set(ylabel="success rate", ylim=(0, 1.1), title="per task family")
    if failures:  # how the chains' last subtasks failed, one stacked bar per family
        names = sorted(failures)
        left = np.zeros(len(names))
        colours = plt.get_cmap("tab20")  # one colour per mode (more than ten)
        for index, mode in enumerate(FAILURE_MODES):
            counts = np.array([failures[f].get(mode, 0) for f in names], dtype=float)
            if counts.any():
                axes[2].barh(names, counts, left=left, color=colours(index), label=mode)
                left += counts
        axes[2].set(xlabel="failed subtasks", title="how they failed")
        axes[2].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    chart = out / "eval_sim.png"
    fig.savefig(chart, dpi=100)
    plt.close(fig)
    files["chart"] = str(chart)
    rollouts = []
    for index, result in enumerate(r for r in results if r.frames):
        gif = out / f"rollout_{index:02d}.gif"
        imageio.mimsave(gif, result.frames, duration=0.2, loop=0)
        png = out / f"rollout_{index:02d}_first.png"
        imageio.imwrite(png, result.frames[0])
        rollouts += [str(gif), str(png)]
    files["rollouts"] = rollouts  # type: ignore[assignment]
    report = dict(metrics, files=files)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    files["json"] = str(out / "eval.json")
    return files
