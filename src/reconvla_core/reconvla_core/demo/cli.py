"""`reconvla demo`, `reconvla study recon` and `reconvla study privileged`."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


SHIPPED = Path("<shipped>")  # --pretrained given without a path


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="the whole journey in the simulation twin: record, dataset, train, deploy, evaluate, report")
    demo.add_argument("--quick", action="store_true", help="smoke run (~5 minutes; figures not meaningful)")
    demo.add_argument("--pretrained", type=Path, nargs="?", const=SHIPPED, default=None, metavar="CHECKPOINT",
                      help="skip record/dataset/train: deploy and evaluate this checkpoint (e.g. a `reconvla train` "
                           "output's final/ directory; no path: the shipped checkpoint)")
    demo.add_argument("--init", type=Path, default=None, metavar="CHECKPOINT",
                      help="finetune this checkpoint on the recorded demonstrations (default: the shipped one)")
    demo.add_argument("--from-scratch", action="store_true",
                      help="train from random weights instead of finetuning the shipped checkpoint")
    demo.add_argument("--out", type=Path, default=None, help="run directory (default runs/demo-<time>)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--episodes", type=int, default=None, help="episodes recorded through the ROS graph")
    demo.add_argument("--sim-episodes", type=int, default=None,
                      help="extra episodes from `sim collect` recorded alongside (no ROS)")
    demo.add_argument("--train-steps", type=int, default=None)
    demo.add_argument("--chains", type=int, default=None, help="fixed evaluation chains")
    demo.add_argument("--deploy-seconds", type=float, default=None, help="closed-loop ROS deployment time")
    demo.add_argument("--json", action="store_true", help="print report.json on stdout")
    demo.set_defaults(func=cmd_demo)

    study = subparsers.add_parser("study", help="research studies")
    study_sub = study.add_subparsers(dest="study", metavar="STUDY", required=True)
    recon = study_sub.add_parser("recon", help="the reconstruction ablation: recon_target none | full | gaze")
    recon.add_argument("--seeds", type=int, default=3, help="training seeds per variant")
    recon.add_argument("--data", type=Path, nargs="+", default=None, metavar="DIR",
                       help="datasets from `reconvla dataset build`, drawn alike (default: collect and build one)")
    recon.add_argument("--init-from", type=Path, default=None, metavar="CHECKPOINT",
                       help="finetune each variant from this checkpoint (tiny-sim-finetune, as the demo does) "
                            "instead of training from random weights; variants: none (recon_weight 0) and the "
                            "checkpoint's own recon_target")
    recon.add_argument("--override", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="training config override for every run, repeatable (e.g. data.num_workers=1)")
    recon.add_argument("--episodes", type=int, default=60, help="expert episodes to collect when --data is absent")
    recon.add_argument("--train-steps", type=int, default=300)
    recon.add_argument("--chains", type=int, default=20, help="fixed evaluation chains per trained model")
    recon.add_argument("--variants", default=None,
                       help="comma-separated (default none,full,gaze; with --init-from: none and the checkpoint's own)")
    recon.add_argument("--out", type=Path, default=None, help="run directory (default runs/study-recon-<time>)")
    recon.add_argument("--json", action="store_true")
    recon.set_defaults(func=cmd_study_recon)
    from reconvla_core.demo.privileged import INPUT_SCALINGS, INPUTS  # numpy only: cheap at parse time

    privileged = study_sub.add_parser(
        "privileged", help="calibration: an MLP on the twin's ground-truth gaze box + state + instruction, "
                           "trained on the same datasets and scored on the same fixed chains")
    privileged.add_argument("--data", type=Path, nargs="+", required=True,
                            help="datasets from `reconvla dataset build` of twin recordings")
    privileged.add_argument("--steps", type=int, default=30_000, help="optimiser steps")
    privileged.add_argument("--batch-size", type=int, default=256,
                            help="samples per step (16 and a ReconVLA run's steps: the same samples seen)")
    privileged.add_argument("--chains", type=int, default=20, help="fixed evaluation chains")
    privileged.add_argument("--input-scaling", choices=INPUT_SCALINGS, default="standard",
                            help="standard: unit-variance inputs; head: scaled as an unstandardised ReconVLA "
                                 "head input (state q01/q99 -> [-1, 1], box 2b - 1)")
    privileged.add_argument("--gaze-noise", default="0",
                            help="comma-separated per-axis std of Gaussian noise on the gaze box's position "
                                 "(fraction of the image), one evaluation each: how precise must perception be?")
    privileged.add_argument("--inputs", choices=INPUTS, default="box",
                            help="what the MLP gets besides the state and the instruction: the gaze box, its centre, or "
                                 "its centre and size (w, h); with +gripper also the gripper's point in the base image "
                                 "(default box)")
    privileged.add_argument("--seed", type=int, default=0)
    privileged.add_argument("--json", action="store_true")
    privileged.set_defaults(func=cmd_study_privileged)


def cmd_demo(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import CLIError, emit_result
    from reconvla_core.demo.pipeline import DemoConfig, default_out_dir, run_demo

    if args.init is not None and args.pretrained is not None:
        raise CLIError("--init (finetune on fresh demonstrations) and --pretrained (skip training) exclude each other")
    if args.from_scratch and (args.init is not None or args.pretrained is not None):
        raise CLIError("--from-scratch trains from random weights: it excludes --init and --pretrained")
    pretrained = args.pretrained
    if pretrained is SHIPPED:
        from reconvla_core.model.pretrained import shipped_checkpoint

        pretrained = shipped_checkpoint()
    config = DemoConfig.for_mode(args.out or default_out_dir(), args.quick, pretrained=pretrained,
                                 init_from=args.init, from_scratch=args.from_scratch or None,
                                 seed=args.seed, ros_episodes=args.episodes, sim_episodes=args.sim_episodes,
                                 train_steps=args.train_steps, eval_chains=args.chains,
                                 deploy_seconds=args.deploy_seconds)
    report = run_demo(config)
    out = config.out_dir
    summary = (
        f"\nReconVLA-ROS demo {'(smoke run, --quick) ' if config.quick else ''}finished in {report['minutes']:.1f} min\n"
        f"  deployed policy: avg len {report['avg_len']:.2f} / 5, success by position "
        f"{[round(v, 2) for v in report['success_by_position']]}\n"
        + (f"  checkpoint before finetuning: avg len {report['init_avg_len']:.2f} / 5\n"
           if report.get("init_avg_len") is not None else "") +
        f"  random policy:   avg len {report['random_avg_len']:.2f} / 5\n"
        f"  report: {out / 'report.md'} (JSON: {out / 'report.json'}; plots and attention overlays beside it)\n"
        f"  view it: open {out / 'report.md'} in any markdown viewer, or `cat {out / 'report.md'}`\n")
    sys.stderr.write(summary)
    if args.json:
        emit_result(report, True)
    return 0


def cmd_study_recon(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import emit_result
    from reconvla_core.demo.study import StudyConfig, run_recon_study

    config = StudyConfig.from_args(args)
    result = run_recon_study(config)
    emit_result(result, args.json)
    return 0


def cmd_study_privileged(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import CLIError, emit_result
    from reconvla_core.demo.privileged import run_privileged_study

    if args.steps < 1 or args.chains < 1 or args.batch_size < 1:
        raise CLIError("--steps, --batch-size and --chains must be >= 1")
    for path in args.data:
        if not (path / "meta" / "info.json").is_file():
            raise CLIError(f"{path} is not a dataset (no meta/info.json); build one with `reconvla dataset build`")
    try:
        noise = [float(value) for value in args.gaze_noise.split(",")]
    except ValueError:
        raise CLIError(f"--gaze-noise takes comma-separated numbers, got {args.gaze_noise!r}") from None
    if not noise or any(not math.isfinite(value) or value < 0 for value in noise):
        raise CLIError(f"--gaze-noise levels must be finite and >= 0, got {args.gaze_noise!r}")
    result = run_privileged_study(args.data, steps=args.steps, chains=args.chains, seed=args.seed,
                                  batch_size=args.batch_size, scaling=args.input_scaling, gaze_noise=noise,
                                  inputs=args.inputs)
    sys.stderr.write(f"privileged MLP ({args.inputs}): avg len {result['avg_len']:.2f} / 5 on {result['chains']} fixed chains "
                     f"({result['samples']} samples, {result['steps']} steps, {result['train_s']} s)\n")
    for level in result["by_gaze_noise"][1:]:
        sys.stderr.write(f"  gaze noise {level['gaze_noise']} (mean error {level['mean_gaze_error']}): "
                         f"avg len {level['avg_len']:.2f}\n")
    emit_result(result, args.json)
    return 0
