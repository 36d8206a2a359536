"""DAgger in the twin (Ross et al., 2011): the policy drives, the relabelling expert labels.

``run_dagger(DaggerConfig(...))`` runs ``rounds`` rounds; round r:

1. **roll out** the current checkpoint in collection scenes (``collection_chain``, never the
   evaluation scenes). At each chunk boundary, with probability ``beta`` the expert drives the
   next chunk instead of the policy (beta = 0: pure policy states, the DAgger of the paper's
   later rounds). With probability ``branch`` the state where a policy chunk starts also gets the
   expert's own chunk: the relabelling expert drives K steps from a saved copy of the twin
   (``env.branch()``), recorded as expert frames, and the twin is put back, so that state's label
   is a whole chunk of one motion, the expert's;
2. **record** every visited state as rosbag2 episodes on the teleop topics (one per subtask, the
   writer of ``reconvla sim collect``); the leader command is the *relabelling expert's* action
   at that state (``RelabelExpert.act``), whoever drove, and the relabelled topic marks the
   frames the policy drove. A subtask the policy did not finish is kept (``success=False``): its
   states are the ones DAgger is for. A sample's chunk is the labels of the frames that follow it,
   which continue its own label only while the arm executed them: training ends the chunk at the
   first relabelled frame after the sample's (``data/dataset.py``), else steps 1..K-1 of a
   policy-driven stretch would teach the policy's own motion;
3. **build** those bags into ``round_RR/dataset`` (``reconvla dataset build`` logic, unsuccessful
   episodes included); the round trains on the aggregate: every round's dataset so far plus any
   ``base_data`` (the original demonstrations). Each dataset is drawn as often as every other
   (the training mixture samples sources by weight, not size) unless ``round_share`` sets the
   share of samples the rounds' datasets get together;
4. **learn** from the aggregate, as ``learn`` says:

   - ``finetune``: the previous round's checkpoint finetuned with the ``tiny-sim-finetune`` recipe
     (``round_RR/train``; resumable);
   - ``gaze``: the rollouts teach the perception alone. The twin records the true gaze box at every
     state the policy visits, so ``reconvla fit-gaze`` teaches the previous round's conv gaze keypoint
     on the aggregate (``round_RR/gaze``), every other weight frozen, and ``reconvla fit-head`` then
     refits the action MLP to the moved keypoint on the ``base_data`` demonstrations alone
     (``round_RR/head``), half its samples on the trunk's own gaze. No action is learnt from the
     rollouts, so the expert's labels and their style do not matter here (docs/dagger.md);
5. **evaluate** on the fixed chains (``make_eval_chains``).

Layout of ``out``: ``dagger.json`` (config + one row per round, rewritten after each round),
``avg_len.png``, ``round_00/eval.json`` (the initial checkpoint), ``round_RR/{bags,dataset,train,
eval.json}`` (``learn="gaze"``: ``gaze`` and ``head`` in place of ``train``). A step whose output is
complete is not redone, so ``resume=True`` continues a run that stopped anywhere (a half-written bag
directory is rolled out again; training resumes from its last checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DAGGER_SEED_BASE = 700  # collection seed of round r is DAGGER_SEED_BASE + 100 * seed + r: scenes of its own
DEFAULT_CHUNK = 8  # steps an expert turn lasts before the policy has produced a chunk to size it by
LEARN_MODES = ("finetune", "gaze")
GAZE_HEAD_OWN_SHARE = 0.5  # fit-head's samples on the trunk's own keypoint (the shipped checkpoint's recipe)

logger = logging.getLogger(__name__)


@dataclass
class DaggerConfig:
    init: Path
    out: Path
    rounds: int = 3
    episodes: int = 40  # subtask episodes rolled out per round
    beta: float = 0.0  # probability that the expert drives a chunk
    branch: float = 0.0  # probability that a policy chunk's start state also gets the expert's own chunk (a branch)
    seed: int = 0
    finetune_steps: int = 300
    eval_chains: int = 100
    eval_seed: int = 0
    base_data: list[Path] = field(default_factory=list)
    train_overrides: list[str] = field(default_factory=list)
    round_share: float | None = None  # share of samples from the rounds' datasets; None: every dataset alike
    learn: str = "finetune"  # what a round trains: the whole policy, or the gaze keypoint then the head
    head_steps: int = 20_000  # learn="gaze": fit-head's steps (finetune_steps are fit-gaze's)
    image_size: tuple[int, int] = (320, 240)
    device: str = "cpu"
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.init, self.out = Path(self.init), Path(self.out)
        self.base_data = [Path(p) for p in self.base_data]
        if self.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {self.rounds}")
        if self.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {self.episodes}")
        if not (np.isfinite(self.beta) and 0.0 <= self.beta <= 1.0):
            raise ValueError(f"--beta must be in 0..1, got {self.beta}")
        if not (np.isfinite(self.branch) and 0.0 <= self.branch <= 1.0):
            raise ValueError(f"--branch must be in 0..1, got {self.branch}")
        if self.finetune_steps < 1:
            raise ValueError(f"--finetune-steps must be >= 1, got {self.finetune_steps}")
        if self.eval_chains < 1:
            raise ValueError(f"--eval-chains must be >= 1, got {self.eval_chains}")
        if self.round_share is not None:
            if not (np.isfinite(self.round_share) and 0.0 < self.round_share <= 1.0):
                raise ValueError(f"--round-share must be in (0, 1], got {self.round_share}")
            if self.round_share < 1.0 and not self.base_data:
                raise ValueError("--round-share below 1 needs --data (the datasets that get the rest)")
        if self.seed < 0 or self.eval_seed < 0:
            raise ValueError("seeds must be >= 0")
        if not (self.init / "config.json").is_file():
            raise FileNotFoundError(f"--init {self.init} is not a checkpoint directory (no config.json)")
        if self.learn not in LEARN_MODES:
            raise ValueError(f"--learn must be one of {LEARN_MODES}, got {self.learn!r}")
        if self.learn == "gaze":
            self._check_gaze_mode()
        for path in self.base_data:
            if not (path / "meta" / "info.json").is_file():
                raise FileNotFoundError(f"--data {path} is not a dataset (no meta/info.json)")

    def _check_gaze_mode(self) -> None:
        """Refuse before the first rollout what ``fit-gaze`` / ``fit-head`` would refuse after it."""
        if not self.base_data:
            raise ValueError("--learn gaze needs --data: the demonstrations the head is refitted on")
        if self.train_overrides:
            raise ValueError("--override sets the finetune recipe, which --learn gaze does not run")
        if self.head_steps < 1:
            raise ValueError(f"--head-steps must be >= 1, got {self.head_steps}")
        model = json.loads((self.init / "config.json").read_text(encoding="utf-8"))
        if model.get("keypoint_encoder") != "conv" or not model.get("gaze_keypoint_weight", 0) > 0:
            raise ValueError(f"--learn gaze teaches the conv gaze keypoint: {self.init} needs keypoint_encoder: "
                             "conv and gaze_keypoint_weight > 0")

    def sim_config(self) -> Any:
        from reconvla_core.sim.env import SimConfig

        # Rollouts pass the deployment's limit check (evaluate.deployable); clip_actions only
        # guards the expert's labels.
        return SimConfig(image_width=self.image_size[0], image_height=self.image_size[1], clip_actions=True)

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else [str(p) for p in v] if k == "base_data" else v)
                for k, v in dataclasses.asdict(self).items() if k not in ("progress",)}


def round_seed(config: DaggerConfig, round_index: int) -> int:
    return DAGGER_SEED_BASE + 100 * config.seed + round_index


def rollout(policy: Any, config: DaggerConfig, round_index: int, bags: Path,
            on_episode: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Step 1-2: roll ``policy`` out in round ``round_index``'s collection scenes, recording the
    relabelling expert's action at every visited state into ``bags/episode_XXXXXX``."""
    from reconvla_core.sim.collect import _EpisodeRecorder, collection_chain
    from reconvla_core.sim.env import PiperCellEnv
    from reconvla_core.sim.evaluate import deployable
    from reconvla_core.sim.relabel import RelabelExpert

    if bags.exists():
        shutil.rmtree(bags)  # an unfinished rollout is redone whole: its episodes came from one policy
    staging = bags.with_name(bags.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    sim_config = config.sim_config()
    rng = np.random.default_rng([config.seed, round_index, 15])
    seed = round_seed(config, round_index)
    period_ns = int(round(1e9 / sim_config.control_hz))
    episodes = frames = expert_frames = branch_frames = successful = 0
    chunk_len = DEFAULT_CHUNK
    started = time.perf_counter()
    env = PiperCellEnv(sim_config)
    relabel = RelabelExpert(env)
    try:
        chain_index = 0
        while episodes < config.episodes:
            chain = collection_chain(chain_index, seed)
            chain_index += 1
            obs = env.reset(chain=chain)
            policy.reset()
            clock_ns = time.time_ns()
            for position, task in enumerate(chain.tasks):
                if episodes >= config.episodes:
                    break
                recorder = _EpisodeRecorder(
                    staging / f"episode_{episodes:06d}", task, chain, position, clock_ns,
                    operator="sim-dagger", extra_info={"dagger_round": round_index, "dagger_beta": config.beta,
                                                      "dagger_branch": config.branch},
                )
                queue: list[np.ndarray | None] = []  # None: the expert drives this step
                success = False
                episode_expert = episode_branch = 0
                try:
                    while True:
                        branched = False
                        if not queue:
                            if rng.random() < config.beta:
                                queue = [None] * chunk_len
                            else:
                                # What the robot would execute: a chunk past the soft limits is refused (hold).
                                queue, _ = deployable(policy.infer(obs).actions, env.last_command)
                                chunk_len = len(queue)
                                # A one-step chunk is labelled whole by its relabel; two adjacent
                                # branches would run into each other's chunks in training.
                                if chunk_len > 1 and config.branch > 0 and rng.random() < config.branch:
                                    written, clock_ns = _record_branch(env, relabel, recorder, obs, chunk_len,
                                                                       clock_ns, period_ns)
                                    episode_branch += written
                                    branched = True
                        planned = queue.pop(0)
                        label = relabel.act()  # the expert's action at the state the arm is in
                        episode_expert += int(planned is None)
                        if not branched:  # a branch's first frame is this state, with the expert's whole chunk
                            velocity = np.concatenate([env.arm.state().velocities, [0.0]])
                            recorder.write(clock_ns, obs, velocity, label, env.gaze_box(),
                                           relabelled=planned is not None)
                            clock_ns += period_ns  # the bag's frames sit one period apart, branches included
                        obs, info = env.step(label if planned is None else planned)
                        if info["subtask_success"] or info["done"]:
                            success = bool(info["subtask_success"])
                            break
                finally:
                    recorder.extra_info["expert_frames"] = episode_expert
                    recorder.extra_info["branch_frames"] = episode_branch
                    recorder.finish(success, clock_ns, sim_config)
                episodes += 1
                frames += recorder.frames
                expert_frames += episode_expert
                branch_frames += episode_branch
                successful += int(success)
                logger.info("round %d: episode %d/%d %r %s in %d frames (%d driven by the expert)", round_index,
                            episodes, config.episodes, task.name, "done" if success else "timed out",
                            recorder.frames, episode_expert)
                if on_episode:
                    on_episode(episodes)
                if not success:
                    break  # a timed-out subtask ends its chain, as in collection and evaluation
    finally:
        env.close()
    staging.rename(bags)
    return {"episodes": episodes, "frames": frames, "expert_frames": expert_frames, "branch_frames": branch_frames,
            "successful_episodes": successful, "collection_seed": seed,
            "rollout_s": round(time.perf_counter() - started, 1)}


def _record_branch(env: Any, relabel: Any, recorder: Any, obs: dict[str, Any], steps: int, clock_ns: int,
                   period_ns: int) -> tuple[int, int]:
    """The relabelling expert drives ``steps`` steps from the state the policy reached, recorded as
    expert frames (a whole chunk in the expert's own motion), then the twin is put back
    (``env.branch()``); the next frame the policy drives is relabelled and ends these frames' chunks
    in training. Returns (frames written, the clock after them)."""
    written = 0
    with env.branch():
        for _ in range(steps):
            action = relabel.act()
            velocity = np.concatenate([env.arm.state().velocities, [0.0]])
            recorder.write(clock_ns, obs, velocity, action, env.gaze_box(), relabelled=False)
            written += 1
            clock_ns += period_ns
            obs, info = env.step(action)
            if info["subtask_success"] or info["done"]:
                break
    return written, clock_ns


def build_round_dataset(bags: Path, out: Path) -> dict[str, Any]:
    """Step 3: the round's bags -> a LeRobot dataset (failed subtasks included: their labels are the point)."""
    from reconvla_core.data.build import BuildConfig, build_dataset

    if out.exists():
        shutil.rmtree(out)  # the build only leaves a finished dataset, but a stale one must not count
    report = build_dataset(BuildConfig(bags=[bags], out=out, gaze="sim", include_unsuccessful=True))
    return {"dataset_episodes": report.episodes, "dataset_frames": report.frames}


def mixture(config: DaggerConfig, round_datasets: list[Path]) -> list[str]:
    """``--data`` arguments (``DIR:WEIGHT``) for a round's finetune: the base datasets and the rounds'
    so far. Without ``round_share`` each weighs 1; with it the rounds' datasets share ``round_share`` of
    the samples equally and the base datasets the rest."""
    if config.round_share is None:
        return [f"{p}:1.0" for p in [*config.base_data, *round_datasets]]
    rest = 1.0 - config.round_share
    entries = [f"{p}:{rest / len(config.base_data)}" for p in config.base_data] if rest > 0 else []
    return entries + [f"{p}:{config.round_share / len(round_datasets)}" for p in round_datasets]


def finetune(config: DaggerConfig, init_from: Path, datasets: list[str], out: Path) -> dict[str, Any]:
    """Step 4: ``tiny-sim-finetune`` from ``init_from`` on ``datasets`` (``DIR:WEIGHT``); resumes a run
    left half done."""
    from reconvla_core.train import load_train_config, train

    overrides = [f"init_from={init_from}", f"seed={config.seed}", *config.train_overrides]
    train_config = load_train_config("tiny-sim-finetune", overrides, data=datasets,
                                     output_dir=str(out), max_steps=config.finetune_steps)
    result = train(train_config, resume=config.resume and out.exists())
    if result.get("interrupted"):
        raise KeyboardInterrupt  # saved where it stopped: --resume continues this round's finetune
    return {"checkpoint": result["checkpoint"], "train_steps": result.get("steps"),
            "final_loss": result.get("final_loss")}


def learn_gaze(config: DaggerConfig, init_from: Path, datasets: list[str], folder: Path) -> dict[str, Any]:
    """Step 4 with ``learn="gaze"``: ``fit-gaze`` of ``init_from``'s keypoint on ``datasets`` (the
    rounds' own states with their true gaze boxes, and the demonstrations), then ``fit-head`` on the
    demonstrations. Each restarts if it was cut off (minutes each)."""
    from reconvla_core.train.fit_gaze import fit_gaze
    from reconvla_core.train.fit_head import fit_head

    gaze = _cached(folder / "gaze.json", lambda: fit_gaze(
        init_from, datasets, folder / "gaze", steps=config.finetune_steps, seed=config.seed, device=config.device,
        progress=config.progress))
    head = fit_head(Path(gaze["out"]), config.base_data, folder / "head", steps=config.head_steps,
                    own_gaze_share=GAZE_HEAD_OWN_SHARE, seed=config.seed, device=config.device,
                    progress=config.progress)
    return {"checkpoint": head["out"], "train_steps": config.finetune_steps,
            "keypoint0_error_before": gaze["keypoint0_error_before"],
            "keypoint0_error_after": gaze["keypoint0_error_after"], "head_steps": config.head_steps,
            "head_train_frames": head["train_frames"]}


def evaluate(config: DaggerConfig, checkpoint: Path) -> dict[str, Any]:
    """Step 5: ``checkpoint`` on the fixed evaluation chains."""
    from reconvla_core.policy import CheckpointPolicy
    from reconvla_core.sim.evaluate import evaluate_policy
    from reconvla_core.sim.tasks import make_eval_chains

    policy = CheckpointPolicy(checkpoint, device=config.device)
    metrics, _ = evaluate_policy(policy, make_eval_chains(config.eval_chains, seed=config.eval_seed),
                                 config.sim_config(), progress=config.progress)
    scored = {"avg_len": metrics["avg_len"], "success_by_position": metrics["success_by_position"],
              "per_task": metrics["per_task"], "eval_chains": metrics["chains"], "eval_s": metrics["elapsed_s"]}
    if "gaze_points" in metrics:  # whether a round taught the gaze, apart from the acting
        gaze = metrics["gaze_points"]
        scored["gaze_on_target"] = gaze["on"]["gaze"]
        # Where a subtask is decided: the first chunks of each approach, per family.
        scored["approach_start_on_target"] = {family: stats["on"]["gaze"]
                                              for family, stats in gaze["start_of_approach"].items()}
    return scored


def _cached(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A step's result from ``path`` when a previous run finished it, else computed and saved."""
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    result = compute()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return result


def run_dagger(config: DaggerConfig) -> dict[str, Any]:
    """All rounds; returns ``{"rounds": [row, ...], "plot", "out", "config"}`` (row 0: the initial checkpoint)."""
    from reconvla_core.policy import CheckpointPolicy

    out = config.out
    if out.exists() and any(out.iterdir()) and not config.resume:
        raise ValueError(f"{out} is not empty; pass --resume to continue that run or choose a new --out")
    previous = out / "dagger.json"
    if config.resume and previous.is_file():
        started_from = json.loads(previous.read_text(encoding="utf-8")).get("config", {}).get("init")
        if started_from is not None and Path(started_from).resolve() != config.init.resolve():
            raise ValueError(f"{out} is a DAgger run from --init {started_from}, not {config.init}; "
                             "resume it with that checkpoint or choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "round_00").mkdir(exist_ok=True)
    rows: list[dict[str, Any]] = []
    initial = _cached(out / "round_00" / "eval.json", lambda: evaluate(config, config.init))
    rows.append({"round": 0, "episodes": 0, "frames": 0, "expert_frames": 0, "checkpoint": str(config.init),
                 **initial})
    checkpoint = config.init
    round_datasets: list[Path] = []
    for r in range(1, config.rounds + 1):
        started = time.perf_counter()
        folder = out / f"round_{r:02d}"
        folder.mkdir(exist_ok=True)
        logger.info("DAgger round %d/%d: rolling out %s", r, config.rounds, checkpoint)

        def roll(r: int = r, folder: Path = folder, checkpoint: Path = checkpoint) -> dict[str, Any]:
            policy = CheckpointPolicy(checkpoint, device=config.device)
            return rollout(policy, config, r, folder / "bags")

        collected = _cached(folder / "rollout.json", roll)
        built = _cached(folder / "dataset.json", lambda: build_round_dataset(folder / "bags", folder / "dataset"))
        round_datasets.append(folder / "dataset")
        if config.learn == "gaze":
            trained = _cached(folder / "learn.json",
                              lambda: learn_gaze(config, checkpoint, mixture(config, round_datasets), folder))
        else:
            trained = _cached(folder / "train.json",
                              lambda: finetune(config, checkpoint, mixture(config, round_datasets), folder / "train"))
        checkpoint = Path(trained["checkpoint"])
        scored = _cached(folder / "eval.json", lambda: evaluate(config, checkpoint))
        row = {"round": r, **collected, **built, **trained, **scored,
               "avg_len_delta": round(scored["avg_len"] - initial["avg_len"], 4),
               "round_s": round(time.perf_counter() - started, 1)}
        rows.append(row)
        logger.info("DAgger round %d: %d episodes, %d frames, avg_len %.3f (initial %.3f)", r,
                    row["episodes"], row["frames"], row["avg_len"], initial["avg_len"])
        _write_summary(config, rows)
    return _write_summary(config, rows)


def _write_summary(config: DaggerConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    plot = plot_avg_len(rows, config.out / "avg_len.png")
    summary = {"rounds": rows, "plot": str(plot), "out": str(config.out), "config": config.to_dict()}
    (config.out / "dagger.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def plot_avg_len(rows: list[dict[str, Any]], path: Path) -> Path:
    """avg_len on the evaluation chains by round (round 0: the initial checkpoint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [row["round"] for row in rows]
    values = [row["avg_len"] for row in rows]
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    ax.plot(rounds, values, marker="o", color="#3b75af")
    for x, y in zip(rounds, values):
        ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    chains = rows[0].get("eval_chains", "?")
    ax.set(xlabel="DAgger round (0 = initial checkpoint)", ylabel=f"avg len ({chains} chains)",
           xticks=rounds, ylim=(0, max(1.0, max(values) * 1.25)))
    ax.set_title("DAgger in the twin")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
