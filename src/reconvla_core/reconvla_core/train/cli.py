"""`reconvla train`: one training stage from a shipped config name or a YAML file.

    reconvla train --config tiny-sim --data runs/sim_dataset --out runs/train_tiny --max-steps 40 --json
    reconvla train --config paper-finetune init_from=runs/pretrain/final --data datasets/piper
    accelerate launch --config_file $(reconvla train --accelerate-config ddp) \\
        -m reconvla_core.cli.main train --config paper-pretrain ...

Torch and accelerate load inside the command function (``reconvla --help`` stays fast).
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


class _IntermixedParser(argparse.ArgumentParser):
    """Lets key=value overrides come before, between and after the options
    (``train --data D lr=1e-3 --out O train.max_steps=5``): plain argparse takes one positional run only."""

    _parsing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        if self._parsing:  # parse_known_intermixed_args calls back into parse_known_args (Python < 3.13)
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


def register(subparsers: argparse._SubParsersAction) -> None:
    default_class = subparsers._parser_class
    subparsers._parser_class = _IntermixedParser
    try:
        parser = _add_train_parser(subparsers)
    finally:
        subparsers._parser_class = default_class
    parser.set_defaults(func=run_train)
    export = subparsers.add_parser(
        "export", help="a training run's step checkpoint -> an inference checkpoint directory (like its final/)")
    export.add_argument("--run", type=Path, required=True, help="the run's output directory (reconvla train --out)")
    export.add_argument("--step", type=int, default=None, help="the step to export (default: the newest)")
    export.add_argument("--out", type=Path, required=True, help="the checkpoint directory to write")
    export.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    export.set_defaults(func=run_export)
    _add_fit_head_parser(subparsers).set_defaults(func=run_fit_head)
    _add_fit_gaze_parser(subparsers).set_defaults(func=run_fit_gaze)


def _add_fit_gaze_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fit-gaze", help="finetune only the conv gaze keypoint of a checkpoint (then refit the head: fit-head)",
        description="Keypoint 0's L1 to the gaze-box centre trains the conv keypoint net alone (every other weight "
        "frozen), e.g. on demonstrations plus the policy's own states with their true gaze boxes (reconvla dagger "
        "--beta 0 rollouts); train/fit_gaze.py.")
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR[:WEIGHT]",
                        help="LeRobot v3 datasets with gaze boxes, drawn by mixing weight")
    parser.add_argument("--state-film", action="store_true",
                        help="switch keypoint_state on and fit only its FiLM layers (the gripper's opening tells "
                        "whether the gaze belongs on the block or its destination); the rest of the net stays")
    _add_fit_arguments(parser, steps=2_000, batch_size=32, lr=2e-4, schedule="warm-up then cosine")
    return parser


def _add_fit_arguments(parser: argparse.ArgumentParser, steps: int, batch_size: int, lr: float,
                       schedule: str) -> None:
    """What fit-gaze and fit-head share: the checkpoint in and out, the optimiser, the split, the device."""
    parser.add_argument("--policy", type=Path, required=True, help="checkpoint directory (a run's final/)")
    parser.add_argument("--out", type=Path, required=True, help="the checkpoint directory to write")
    parser.add_argument("--steps", type=int, default=steps, help=f"optimiser steps (default {steps:,})")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"batch (default {batch_size})")
    parser.add_argument("--lr", type=float, default=lr, help=f"peak learning rate, {schedule} (default {lr:g})")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="held-out episodes (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the fit (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run_fit_gaze(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import emit_result
    from reconvla_core.train.fit_gaze import fit_gaze

    emit_result(fit_gaze(args.policy, args.data, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         val_fraction=args.val_fraction, seed=args.seed, device=args.device,
                         state_film=args.state_film, progress=not args.json),
                args.json)
    return 0


def _add_fit_head_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fit-head", help="fit the parallel head's action MLP afresh on a checkpoint's frozen trunk",
        description="Each dataset frame goes through the checkpoint's trunk once (vision, keypoints, LLM, "
        "action queries: unchanged); a fresh action MLP is fitted to the action chunks on those outputs for "
        "many steps at a large batch; the checkpoint is saved with it (train/fit_head.py).")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="LeRobot v3 dataset directories")
    _add_fit_arguments(parser, steps=20_000, batch_size=256, lr=1e-3, schedule="cosine decay")
    parser.add_argument("--mlp", choices=("concat", "bottleneck"), default="bottleneck",
                        help="the fitted MLP (model.action_head_mlp; default bottleneck)")
    parser.add_argument("--own-gaze-share", type=float, default=0.0,
                        help="share of fitting samples that use the trunk's own gaze keypoint instead of the "
                        "gaze box's centre (default 0: the true gaze, as training's gaze teacher forcing)")
    parser.add_argument("--static-threshold", type=float, default=1e-3,
                        help="drop no-op frames as samples, as training does (default 1e-3)")
    return parser


def run_fit_head(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import emit_result
    from reconvla_core.train.fit_head import fit_head

    emit_result(fit_head(args.policy, args.data, args.out, steps=args.steps, batch_size=args.batch_size,
                         lr=args.lr, own_gaze_share=args.own_gaze_share, mlp=args.mlp,
                         val_fraction=args.val_fraction, split_seed=args.seed,
                         static_threshold=args.static_threshold, seed=args.seed, device=args.device,
                         progress=not args.json),
                args.json)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import emit_result
    from reconvla_core.train.model_setup import export_checkpoint

    emit_result(export_checkpoint(args.run, args.out, args.step), args.json)
    return 0


def _add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train ReconVLA (pretrain or finetune stage) on LeRobot v3 datasets",
        description="Train one stage. Configs: shipped names (tiny-sim, paper-pretrain, paper-finetune) or a YAML "
        "file; key=value overrides use dotted paths (optim.lr=1e-4, train.per_device_batch_size=8, "
        "model.action_head=parallel, model.vision.feature_layer=-1) or unique field names (lr=1e-4). "
        "Run under `accelerate launch` for several processes.",
    )
    parser.add_argument("--config", default="tiny-sim", help="shipped config name or YAML file (default tiny-sim)")
    parser.add_argument("--data", nargs="+", metavar="DIR[:WEIGHT[:FEATURES]]",
                        help="dataset directories (replace data.sources); WEIGHT = mixing weight, FEATURES = "
                        "column map of an external LeRobot v3 port (libero, bridge)")
    parser.add_argument("--out", type=Path, help="output directory (checkpoints, final/, logs)")
    parser.add_argument("--max-steps", type=int, help="optimiser steps (overrides the epochs of the config)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout at the end")
    parser.add_argument("--print-config", action="store_true", help="print the resolved, validated config and exit")
    parser.add_argument("--accelerate-config", metavar="NAME",
                        help="print the path of a shipped accelerate config (single_gpu, ddp, fsdp, "
                        "deepspeed_zero2, deepspeed_zero3) and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def run_train(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import emit_result
    from reconvla_core.train import accelerate_config, load_train_config, validate_config
    from reconvla_core.train.config import to_yaml

    if args.accelerate_config:
        sys.stdout.write(f"{accelerate_config(args.accelerate_config)}\n")
        return 0
    data, overrides = split_data_and_overrides(args.data, args.overrides)
    config = load_train_config(args.config, overrides, data=data, output_dir=args.out,
                               max_steps=args.max_steps)
    from reconvla_core.train.config import world_size

    validate_config(config, world_size())  # fail fast, before torch is imported
    if args.print_config:
        sys.stdout.write(to_yaml(config))
        return 0
    from reconvla_core.train.loop import train

    result = train(config, resume=args.resume)
    if _is_main_process():
        emit_result(result, args.json)
    if result.get("interrupted"):  # checkpointed cleanly; 128 + signal number tells scripts it is unfinished
        return 128 + int(getattr(signal.Signals, result.get("stop_signal") or "SIGTERM"))
    return 0


_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


def split_data_and_overrides(data: list[str] | None, overrides: list[str]) -> tuple[list[str] | None, list[str]]:
    """``--data a b key=value`` : argparse gives the overrides to --data; hand them back."""
    if not data:
        return data, list(overrides)
    dirs = [item for item in data if not _OVERRIDE.match(item)]
    moved = [item for item in data if _OVERRIDE.match(item)]
    return dirs or None, moved + list(overrides)


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
