"""CLI: ``reconvla sim collect|frames``, ``reconvla eval sim|probe|recovery`` and ``reconvla dagger``. PyBullet/torch load inside the commands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconvla_core.policy import Policy
    from reconvla_core.sim.env import PiperCellEnv, SimConfig

logger = logging.getLogger(__name__)

DEFAULT_EVAL_OUT = "runs/eval_sim"


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must look like 320x240, got {text!r}") from None
    return width, height


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_sim_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=_size, default=(320, 240), metavar="WxH",
                        help="camera resolution for both cameras (default 320x240; 640x480 works, slower)")
    parser.add_argument("--control-hz", type=float, default=10.0, help="control rate (default 10 Hz)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="S",
                        help="sim seconds allowed per subtask (default: SimConfig's)")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def _config(args: argparse.Namespace) -> SimConfig:
    from reconvla_core.sim.env import SimConfig

    kwargs = {"image_width": args.image_size[0], "image_height": args.image_size[1], "control_hz": args.control_hz}
    if args.time_limit is not None:
        kwargs["subtask_time_limit_s"] = args.time_limit
    return SimConfig(**kwargs)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sim collect``, ``sim frames``, ``eval sim|probe|recovery`` and ``dagger``."""
    sim = subparsers.add_parser("sim", help="simulation twin: collect demonstrations")
    sim_sub = sim.add_subparsers(dest="sim_command", metavar="SIM_COMMAND")
    collect = sim_sub.add_parser(
        "collect",
        help="scripted-expert episodes -> one MCAP rosbag2 directory per episode (one subtask each)",
    )
    collect.add_argument("--episodes", type=_positive, required=True, help="number of episodes (subtasks)")
    collect.add_argument("--out", type=Path, required=True, help="output directory (new or empty)")
    collect.add_argument("--seed", type=int, default=0, help="collection seed (scenes disjoint from eval)")
    collect.add_argument("--noise-rad", type=float, default=0.0, metavar="STD",
                         help="DART-style execution noise: the arm runs the expert's command plus a drifting joint "
                              "offset of this std (rad) on each subtask's approach, until the expert closes the gripper; the "
                              "bags record the expert's command (default 0: none; 0.03-0.05 teaches a policy to recover from small misses)")
    collect.add_argument("--noise-duration", type=float, default=None, metavar="S",
                         help="end the execution noise this many seconds after each subtask's start (default: at the "
                              "expert's first close; needed with --expert relabel)")
    collect.add_argument("--grasp-offset", type=float, default=0.0, metavar="M",
                         help="scripted expert: grasp each block up to this far (m, at most 0.015) off its centre along "
                              "the fingers' width, so the block sits off-centre in the hand and the carry's correction "
                              "over the destination makes up for it (default 0)")
    collect.add_argument("--expert", choices=("scripted", "relabel"), default="scripted",
                         help="scripted: replays a plan made at each subtask's start (default); relabel: acts from the "
                              "measured state at every step, as DAgger's labeller does (demonstrations in the style of "
                              "DAgger's labels)")
    _add_sim_options(collect)
    collect.set_defaults(func=cmd_collect)
    frames = sim_sub.add_parser("frames", help="save a collected episode's frames as a GIF or a PNG contact sheet")
    frames.add_argument("bag", type=Path, help="episode bag directory (from sim collect or the recorder)")
    frames.add_argument("--out", type=Path, required=True, help="output .gif or .png")
    frames.add_argument("--every", type=_positive, default=2, help="keep every N-th frame (default 2)")
    frames.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    frames.set_defaults(func=cmd_frames)
    sim.set_defaults(func=lambda args: _help(sim))

    evaluate = subparsers.add_parser("eval", help="closed-loop evaluation")
    eval_sub = evaluate.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND")
    sim_eval = eval_sub.add_parser("sim", help="CALVIN-style chains of 5 subtasks in the twin")
    sim_eval.add_argument("--policy", required=True,
                          help="expert | random | CHECKPOINT_DIR (a ReconVLA checkpoint directory)")
    sim_eval.add_argument("--chains", type=_positive, default=100, help="chains from the fixed set (default 100)")
    sim_eval.add_argument("--seed", type=int, default=0, help="evaluation-set seed (default 0: the fixed set)")
    sim_eval.add_argument("--out", type=Path, default=None,
                          help=f"report directory (default {DEFAULT_EVAL_OUT}/<policy>-s<seed>-n<chains>)")
    sim_eval.add_argument("--record", type=int, default=2, metavar="N", help="rollout GIFs of the first N chains")
    sim_eval.add_argument("--gaze", choices=("model", "oracle"), default="model",
                          help="where keypoint 0 comes from: the model's own estimate (default), or the twin's true "
                               "gaze centre (oracle perception: is the failure in looking or in acting?)")
    sim_eval.add_argument("--device", default="cpu", help="checkpoint policy device (default cpu)")
    sim_eval.add_argument("--dtype", default="float32", help="checkpoint policy dtype: float32 | bfloat16 | float16")
    _add_sim_options(sim_eval)
    sim_eval.set_defaults(func=cmd_eval_sim)
    probe = eval_sub.add_parser(
        "probe", help="per-joint agreement with the expert while the expert drives (why a policy fails)")
    probe.add_argument("--policy", required=True, help="expert | random | CHECKPOINT_DIR")
    probe.add_argument("--chains", type=_positive, default=6, help="chains from the set (default 6)")
    probe.add_argument("--seed", type=int, default=0, help="evaluation-set seed (default 0: the fixed set)")
    probe.add_argument("--steps", type=_positive, default=14, help="expert steps per chain (default 14: the approach)")
    probe.add_argument("--device", default="cpu")
    _add_sim_options(probe)
    probe.set_defaults(func=cmd_eval_probe)
    recovery = eval_sub.add_parser(
        "recovery", help="relabelling expert (DAgger labels): subtasks completed from states knocked off the path")
    recovery.add_argument("--chains", type=_positive, default=40, help="collection chains (default 40, ~170 subtasks)")
    recovery.add_argument("--seed", type=int, default=0, help="collection seed (default 0; scenes disjoint from eval)")
    recovery.add_argument("--max-joint-offset", type=float, default=0.15, metavar="RAD",
                          help="joint perturbation: uniform in +-RAD on every joint (default 0.15)")
    _add_sim_options(recovery)
    recovery.set_defaults(func=cmd_eval_recovery)
    evaluate.set_defaults(func=lambda args: _help(evaluate))

    dagger = subparsers.add_parser(
        "dagger", help="DAgger in the twin: roll the policy out, relabel with the expert, finetune, evaluate")
    dagger.add_argument("--init", type=Path, required=True, help="checkpoint directory to start from")
    dagger.add_argument("--rounds", type=_positive, required=True, help="DAgger rounds")
    dagger.add_argument("--episodes", type=_positive, required=True, help="subtask episodes rolled out per round")
    dagger.add_argument("--out", type=Path, required=True, help="run directory (new or empty; with --resume: that run)")
    dagger.add_argument("--beta", type=float, default=0.0,
                        help="probability that the expert drives a chunk instead of the policy (default 0)")
    dagger.add_argument("--branch", type=float, default=0.0,
                        help="probability that a policy chunk's start state also gets the expert's whole chunk, driven "
                        "from a saved copy of the twin and undone (default 0)")
    dagger.add_argument("--seed", type=int, default=0, help="collection seed (scenes disjoint from eval and sim collect)")
    dagger.add_argument("--finetune-steps", type=_positive, default=300, help="finetune steps per round (default 300)")
    dagger.add_argument("--eval-chains", type=_positive, default=100, help="fixed evaluation chains (default 100)")
    dagger.add_argument("--eval-seed", type=int, default=0, help="evaluation-set seed (default 0: the fixed set)")
    dagger.add_argument("--data", type=Path, nargs="*", default=[], metavar="DIR",
                        help="datasets every round also trains on (the original demonstrations)")
    dagger.add_argument("--round-share", type=float, default=None, metavar="S",
                        help="share of finetune samples drawn from the rounds' own datasets together (0 < S <= 1; "
                             "default: every dataset, base or round, is drawn alike)")
    dagger.add_argument("--learn", choices=("finetune", "gaze"), default="finetune",
                        help="what each round trains: finetune = the whole policy on the aggregate (default); gaze = "
                        "fit-gaze of the gaze keypoint on the aggregate (the rollouts' true gaze boxes), then "
                        "fit-head on the --data demonstrations (--finetune-steps: fit-gaze's steps)")
    dagger.add_argument("--head-steps", type=_positive, default=20_000,
                        help="--learn gaze: fit-head's steps per round (default 20000)")
    dagger.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    dagger.add_argument("--image-size", type=_size, default=(320, 240), metavar="WxH",
                        help="camera resolution (default 320x240, as sim collect)")
    dagger.add_argument("--device", default="cpu", help="policy device for rollouts and evaluation (default cpu)")
    dagger.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    dagger.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="finetune config override, repeatable (e.g. --override optim.lr=1e-4)")
    dagger.set_defaults(func=cmd_dagger)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def cmd_collect(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import emit_result
    from reconvla_core.sim.collect import ExecutionNoise, collect

    # collect() treats a zero std as no noise; the dataclass refuses a bad one with a clear error.
    result = collect(args.out, args.episodes, seed=args.seed, config=_config(args), progress=True,
                     noise=ExecutionNoise(std_rad=args.noise_rad, duration_s=args.noise_duration),
                     expert=args.expert, grasp_offset=args.grasp_offset)
    emit_result(result, args.json)
    return 0


def cmd_frames(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import emit_result
    from reconvla_core.sim.collect import save_episode_frames

    path = save_episode_frames(args.bag, args.out, every=args.every)
    emit_result({"out": str(path)}, args.json)
    return 0


def make_policy(spec: str, env: PiperCellEnv, device: str = "cpu", dtype: str = "float32") -> Policy:
    """``expert`` | ``random`` | a checkpoint directory -> a Policy (the expert is bound to ``env``)."""
    from reconvla_core.policy import CheckpointPolicy, ExpertPolicy, RandomPolicy

    if spec == "expert":
        return ExpertPolicy(env)
    if spec == "random":
        return RandomPolicy(seed=0)
    path = Path(spec)
    if not path.is_dir():
        raise ValueError(f"--policy must be 'expert', 'random' or a checkpoint directory; {spec!r} is none of them")
    return CheckpointPolicy(path, device=device, dtype=dtype)


def cmd_eval_sim(args: argparse.Namespace) -> int:
    import dataclasses

    from reconvla_core.cli.main import emit_result
    from reconvla_core.policy import TrueGazePolicy
    from reconvla_core.sim.env import PiperCellEnv
    from reconvla_core.sim.evaluate import evaluate_policy, save_report
    from reconvla_core.sim.tasks import make_eval_chains

    config = dataclasses.replace(_config(args), clip_actions=True)
    chains = make_eval_chains(args.chains, seed=args.seed)
    env = PiperCellEnv(config)
    try:
        policy = make_policy(args.policy, env, args.device, args.dtype)
        if args.gaze == "oracle":
            policy = TrueGazePolicy(policy, env)
        metrics, results = evaluate_policy(policy, chains, config, record_chains=args.record, env=env)
    finally:
        env.close()
    label = Path(args.policy).name if args.policy not in ("expert", "random") else args.policy
    label += "-true-gaze" if args.gaze == "oracle" else ""
    out = args.out or Path(DEFAULT_EVAL_OUT) / f"{label}-s{args.seed}-n{args.chains}"
    metrics["gaze"] = args.gaze
    metrics["seed"] = args.seed
    metrics["image_size"] = list(args.image_size)
    metrics["subtask_time_limit_s"] = config.subtask_time_limit_s
    files = save_report(metrics, results, out)
    metrics["files"] = files
    logger.info("eval sim %s: avg_len %.3f over %d chains -> %s", policy.name, metrics["avg_len"], len(chains), out)
    emit_result(metrics, args.json)
    return 0


def cmd_dagger(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import emit_result
    from reconvla_core.sim.dagger import DaggerConfig, run_dagger

    config = DaggerConfig(
        init=args.init, out=args.out, rounds=args.rounds, episodes=args.episodes, beta=args.beta, branch=args.branch,
        seed=args.seed,
        finetune_steps=args.finetune_steps, eval_chains=args.eval_chains, eval_seed=args.eval_seed,
        base_data=args.data, round_share=args.round_share, train_overrides=list(args.overrides),
        learn=args.learn, head_steps=args.head_steps, image_size=args.image_size, device=args.device, resume=args.resume,
    )
    summary = run_dagger(config)
    if args.json:
        emit_result(summary, True)
    else:
        for row in summary["rounds"]:
            sys.stdout.write(f"round {row['round']}: episodes {row['episodes']}, frames {row['frames']}, "
                             f"avg_len {row['avg_len']:.3f}, success_by_position "
                             f"{[round(v, 2) for v in row['success_by_position']]}\n")
        sys.stdout.write(f"plot: {summary['plot']}\n")
    return 0


def cmd_eval_recovery(args: argparse.Namespace) -> int:
    import time

    from reconvla_core.cli.main import emit_result
    from reconvla_core.sim.collect import collection_chain
    from reconvla_core.sim.env import PiperCellEnv
    from reconvla_core.sim.relabel import perturbed_recovery

    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if not 0.0 <= args.max_joint_offset <= 0.5:
        raise ValueError(f"--max-joint-offset must be in 0..0.5 rad, got {args.max_joint_offset}")
    started = time.perf_counter()
    with PiperCellEnv(_config(args)) as env:
        report = perturbed_recovery(env, [collection_chain(i, args.seed) for i in range(args.chains)],
                                    seed=args.seed, max_joint_offset=args.max_joint_offset)
    result = report.to_dict()
    result.update({"chains": args.chains, "seed": args.seed, "max_joint_offset_rad": args.max_joint_offset,
                   "elapsed_s": round(time.perf_counter() - started, 1)})
    logger.info("relabelling expert recovered %d of %d perturbed subtasks (%.1f %%)", report.recovered,
                report.attempts, 100 * report.rate)
    emit_result(result, args.json)
    return 0


def cmd_eval_probe(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import CLIError, emit_result
    from reconvla_core.sim.env import PiperCellEnv
    from reconvla_core.sim.probe import probe_policy
    from reconvla_core.sim.tasks import make_eval_chains

    config = _config(args)
    env = PiperCellEnv(config)
    try:
        policy = make_policy(args.policy, env, args.device)
        result = probe_policy(policy, make_eval_chains(args.chains, seed=args.seed), env=env,
                              steps_per_chain=args.steps)
    except ValueError as error:
        raise CLIError(str(error)) from error
    finally:
        env.close()
    result["seed"] = args.seed
    for name, joint in result["joints"].items():
        logger.info("%s: %d moving frames, correlation %.2f, |predicted| %.3f rad vs |expert| %.3f rad", name,
                    joint["moving_frames"], joint["correlation"], joint["mean_abs_predicted_rad"],
                    joint["mean_abs_true_rad"])
    gaze = result.get("gaze")
    if gaze:
        logger.info("gaze: keypoint 0 is %.3f image widths from the true centre; with the true centre given, "
                    "|predicted base yaw| %.3f rad (correlation %.2f); moving it %.2f right vs left changes the "
                    "base yaw by %+.3f rad", gaze["keypoint0_error"],
                    gaze["base_yaw_with_true_gaze"]["mean_abs_predicted_rad"],
                    gaze["base_yaw_with_true_gaze"]["correlation"], 2 * gaze["shift"], gaze["base_yaw_response_rad"])
    emit_result(result, args.json)
    return 0
