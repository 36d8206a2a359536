"""`reconvla demo`: the user journey (record, dataset, train, deploy, evaluate) in the simulation twin.

record (ROS graph: sim_robot as the cell, the scripted expert as the leader arm, teleop_recorder
writing bags) -> dataset (LeRobot v3 with simulator gaze boxes) -> train (tiny ReconVLA, gaze
reconstruction) -> deploy (ROS graph closed loop: camera_ingest -> policy -> arm_command ->
sim_robot) -> evaluate (fixed chains through the plain env API, the trained policy and the random
baseline) -> report (runs/demo-<time>/report.md + report.json + plots + attention overlays).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconvla_core.demo.report import markdown_table, plot_success_by_position, write_json

logger = logging.getLogger(__name__)

@dataclasses.dataclass
class DemoConfig:
    """Sizes of each stage. ``quick`` is a smoke run (minutes); the default fits ~20 minutes on 2 cores."""

    out_dir: Path
    quick: bool = False
    pretrained: Path | None = None  # an existing checkpoint: skip record / dataset / train
    init_from: Path | None = None  # finetune this checkpoint on the recorded data (default: the shipped one)
    from_scratch: bool = False  # train from random weights instead of finetuning a checkpoint
    seed: int = 0
    ros_episodes: int = 40  # demonstrations recorded through the ROS graph (real time)
    sim_episodes: int = 150  # extra demonstrations from `sim collect` (same bags, no ROS), run alongside
    image_size: tuple[int, int] = (160, 120)
    train_steps: int | None = None  # None: 600 finetuning a checkpoint, 1,500 from random weights (batch 16)
    eval_chains: int = 20
    deploy_seconds: float = 20.0
    overrides: list[str] = dataclasses.field(default_factory=list)  # train key=value overrides

    @classmethod
    def for_mode(cls, out_dir: Path, quick: bool, **changes: Any) -> DemoConfig:
        config = cls(out_dir=out_dir, quick=quick)
        if quick:
            config = dataclasses.replace(config, ros_episodes=3, sim_episodes=0, train_steps=20, eval_chains=3,
                                         deploy_seconds=8.0)
        config = dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
        if config.from_scratch and (config.init_from is not None or config.pretrained is not None):
            raise ValueError("--from-scratch trains from random weights: it excludes --init and --pretrained")
        if not config.from_scratch and config.init_from is None and config.pretrained is None:
            from reconvla_core.model.pretrained import shipped_checkpoint

            config = dataclasses.replace(config, init_from=shipped_checkpoint())
        if config.train_steps is None:
            config = dataclasses.replace(config, train_steps=600 if config.init_from is not None else 1500)
        return config


# Collection-run seeds of the demo's two recorders (offsets from DemoConfig.seed): each records in
# scenes of its own, apart from each other and from every evaluation set.
DIRECT_COLLECT_SEED_OFFSET = 1000
ROS_RECORD_SEED_OFFSET = 2000


def ros_record_scene(seed: int) -> int:
    """First scene seed of the demo's ROS recording (sim_robot moves to the next one on each reset)."""
    from reconvla_core.sim.collect import collection_scene

    return collection_scene(0, seed + ROS_RECORD_SEED_OFFSET)


def default_out_dir(root: Path = Path("runs")) -> Path:
    return root / time.strftime("demo-%Y%m%d-%H%M%S")


class StageTimer:
    """Wall time per stage, logged as each stage starts and ends."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.index = 0
        self.seconds: dict[str, float] = {}

    def run(self, name: str, function: Callable[[], Any]) -> Any:
        self.index += 1
        logger.info("[%d/%d] %s ...", self.index, self.total, name)
        start = time.monotonic()
        result = function()
        self.seconds[name] = round(time.monotonic() - start, 1)
        logger.info("[%d/%d] %s done in %.0f s", self.index, self.total, name, self.seconds[name])
        return result


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run every stage; returns report.json's content (also written to config.out_dir)."""
    from reconvla_ros import graph  # the ROS side of the journey (rclpy is imported here, not before)

    out = config.out_dir
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; pass another --out")
    for flag, checkpoint in (("--pretrained", config.pretrained), ("--init", config.init_from)):
        if checkpoint is not None and not (checkpoint / "config.json").is_file():
            raise FileNotFoundError(f"{flag} {checkpoint} is not a checkpoint directory (no config.json); "
                                    "pass the final/ directory written by `reconvla train`")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    timer = StageTimer(total=2 if config.pretrained is not None else 5)
    report: dict[str, Any] = {"quick": config.quick, "pretrained": config.pretrained is not None, "seed": config.seed,
                              "config": {k: (str(v) if isinstance(v, Path) else v)
                                         for k, v in dataclasses.asdict(config).items()}}

    if config.pretrained is not None:
        checkpoint = config.pretrained
        report["train"] = {"checkpoint": str(checkpoint), "steps": _checkpoint_steps(checkpoint), "shipped": True}
    else:
        report["record"] = timer.run("record demonstrations through the ROS graph",
                                     lambda: _record(config, graph))
        report["dataset"] = timer.run("build the LeRobot v3 dataset (simulator gaze boxes)",
                                      lambda: _build_dataset(config))
        what = "finetune the shipped ReconVLA" if config.init_from == _shipped() else \
            "finetune the ReconVLA checkpoint" if config.init_from else "train the tiny ReconVLA from random weights"
        report["train"] = timer.run(f"{what} (gaze reconstruction)", lambda: _train(config))
        checkpoint = Path(report["train"]["checkpoint"])

    report["deploy"] = timer.run("deploy closed loop through the ROS graph", lambda: graph.deploy_closed_loop(
        checkpoint, config.deploy_seconds, seed=config.seed + 7, image_size=config.image_size,
        out_dir=out / "attention", log_dir=out / "logs" / "deploy"))
    report["eval"] = timer.run("evaluate on the fixed chains (deployed, checkpoint before finetuning, random)",
                               lambda: _evaluate(config, checkpoint))
    report["stage_seconds"] = timer.seconds
    report["minutes"] = round((time.monotonic() - started) / 60.0, 2)
    _write_report(config, report)
    logger.info("report written to %s", out / "report.md")
    return report


def _record(config: DemoConfig, graph: Any) -> dict[str, Any]:
    from tqdm import tqdm

    bags = config.out_dir / "bags"
    result: dict[str, Any] = {}
    if config.sim_episodes:  # the plain-Python collector fills the second core while ROS records in real time
        from concurrent.futures import ThreadPoolExecutor

        from reconvla_core.sim import SimConfig
        from reconvla_core.sim.collect import collect

        width, height = config.image_size
        pool = ThreadPoolExecutor(max_workers=1)
        direct = pool.submit(collect, bags / "sim_collect", config.sim_episodes,
                             seed=config.seed + DIRECT_COLLECT_SEED_OFFSET,
                             config=SimConfig(image_width=width, image_height=height), progress=False)
    successful = 0

    def on_episode(count: int, ok: bool) -> None:
        nonlocal successful
        successful += int(ok)
        bar.update(1)
        bar.set_postfix(successful=successful)

    bar = tqdm(total=config.ros_episodes, desc="record (ROS teleop)", unit="episode")
    # sim_robot moves to the next scene seed on each reset: start in collection scenes (disjoint from the
    # fixed evaluation chains, which use scene seeds 0..99) so the policy is never scored on a scene it saw.
    ros = graph.record_demonstrations(
        bags / "ros", config.ros_episodes, seed=ros_record_scene(config.seed), image_size=config.image_size,
        log_dir=config.out_dir / "logs" / "record", progress=on_episode)
    bar.close()
    result["ros"] = ros
    if config.sim_episodes:
        logger.info("waiting for the direct collector (%d episodes)", config.sim_episodes)
        result["sim_collect"] = {k: v for k, v in direct.result().items() if k != "bags"}  # re-raises its errors
        pool.shutdown()
    result["episodes"] = ros["episodes"] + int(result.get("sim_collect", {}).get("episodes", 0))
    result["successful"] = ros["successful"] + int(result.get("sim_collect", {}).get("successful", 0))
    return result


def _build_dataset(config: DemoConfig) -> dict[str, Any]:
    from reconvla_core.data.build import BuildConfig, build_dataset

    bags = [p for p in (config.out_dir / "bags").iterdir() if p.is_dir()]
    built = build_dataset(BuildConfig(bags=bags, out=config.out_dir / "dataset", gaze="sim", progress=True))
    return dataclasses.asdict(built) if dataclasses.is_dataclass(built) else dict(built)


def _train(config: DemoConfig) -> dict[str, Any]:
    from reconvla_core.train import load_train_config, train

    # Validate about ten times per run (the config's default cadence is for short runs).
    overrides = [f"train.max_steps={config.train_steps}", f"seed={config.seed}",
                 f"eval.every_steps={max(20, config.train_steps // 10)}"]
    if config.init_from is not None:
        overrides += [f"init_from={config.init_from}"]
    overrides += config.overrides
    recipe = "tiny-sim-finetune" if config.init_from is not None else "tiny-sim"
    train_config = load_train_config(recipe, overrides, data=[str(config.out_dir / "dataset")],
                                     output_dir=str(config.out_dir / "train"))
    result = train(train_config)
    for name in ("loss_curve.png", "loss_curves.png"):
        source = Path(result.get("loss_curve") or (config.out_dir / "train" / name))
        if source.is_file():
            shutil.copy(source, config.out_dir / "loss_curves.png")
            break
    return result


def _evaluate(config: DemoConfig, checkpoint: Path) -> dict[str, Any]:
    from reconvla_core.policy import CheckpointPolicy, RandomPolicy
    from reconvla_core.sim import SimConfig, evaluate_policy, make_eval_chains
    from reconvla_core.sim.evaluate import save_report

    width, height = config.image_size
    sim_config = SimConfig(image_width=width, image_height=height)
    chains = make_eval_chains(config.eval_chains, seed=0)  # the fixed evaluation set
    trained, trained_runs = evaluate_policy(CheckpointPolicy(checkpoint), chains, sim_config, record_chains=2)
    save_report(trained, trained_runs, config.out_dir / "eval" / "trained")
    result = {"trained": trained}
    if config.init_from is not None and config.pretrained is None:  # the checkpoint before finetuning, side by side
        before, before_runs = evaluate_policy(CheckpointPolicy(config.init_from), chains, sim_config)
        save_report(before, before_runs, config.out_dir / "eval" / "init")
        result["init"] = before
    random, random_runs = evaluate_policy(RandomPolicy(seed=config.seed), chains, sim_config)
    save_report(random, random_runs, config.out_dir / "eval" / "random")
    result["random"] = random
    return result


def _shipped() -> Path:
    from reconvla_core.model.pretrained import SHIPPED_CHECKPOINT

    return SHIPPED_CHECKPOINT


def _checkpoint_steps(checkpoint: Path) -> int | None:
    """Training steps recorded in a checkpoint's metadata.json (None when it has none)."""
    import json

    path = checkpoint / "metadata.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("training", {}).get("steps")


def _write_report(config: DemoConfig, report: dict[str, Any]) -> None:
    out = config.out_dir
    trained, random = report["eval"]["trained"], report["eval"]["random"]
    report.update({
        "avg_len": trained["avg_len"],
        "success_by_position": trained["success_by_position"],
        "per_task": trained.get("per_task"),
        "random_avg_len": random["avg_len"],
        "random_success_by_position": random["success_by_position"],
        "init_avg_len": report["eval"]["init"]["avg_len"] if "init" in report["eval"] else None,
        "train_steps": report["train"].get("steps"),
        "chains": trained["chains"],
    })
    curves = {"deployed ReconVLA (tiny)": trained["success_by_position"]}
    if "init" in report["eval"]:
        curves["checkpoint before finetuning"] = report["eval"]["init"]["success_by_position"]
    curves["random policy"] = random["success_by_position"]
    plot_success_by_position(curves,
                             out / "success_by_position.png",
                             f"{trained['chains']} fixed chains: avg len {trained['avg_len']:.2f} "
                             f"vs {random['avg_len']:.2f} random")
    write_json(out / "report.json", report)
    (out / "report.md").write_text(render_markdown(report))


def render_markdown(report: dict[str, Any]) -> str:
    smoke = " (smoke run: `--quick`, figures are not meaningful)" if report["quick"] else ""
    lines = [f"# ReconVLA-ROS demo{smoke}", "",
             f"Whole journey in the simulation twin in {report['minutes']:.1f} minutes.", ""]
    if "record" in report:
        rec = report["record"]
        lines += [f"- Recorded {rec['episodes']} expert episodes ({rec['successful']} successful) as rosbag2 (MCAP) "
                  "through the ROS graph: sim_robot (expert as the leader arm) + teleop_recorder."]
    if "dataset" in report:
        ds = report["dataset"]
        lines += [f"- Built a LeRobot v3.0 dataset: {ds.get('episodes')} episodes, {ds.get('frames')} frames, "
                  f"{ds.get('gaze_fallbacks')} gaze fallbacks, {ds.get('dropped_frames')} dropped frames."]
    train = report["train"]
    init_from = (train.get("init") or {}).get("init_from")
    lines += [f"- {'Finetuned' if init_from else 'Trained'} the tiny ReconVLA for {train.get('steps')} steps"
              + (f" from `{init_from}`" if init_from else " from random weights" if not train.get("shipped") else "")
              + (f" (final loss {train['final_loss']:.3f}: action {train['final_action_loss']:.3f}, "
                 f"reconstruction {train['final_recon_loss']:.3f})" if train.get("final_loss") is not None else "")
              + (" (given with --pretrained)" if train.get("shipped") else "") + "."]
    dep = report["deploy"]
    lines += [f"- Deployed it closed loop through ROS for {dep['seconds']} s: {dep['chunks']} action chunks, "
              f"{dep['commands']} arm commands, arm moved {dep['arm_motion_rad']} rad, "
              f"{dep['subtasks_completed']} subtasks completed ('{dep['instruction']}').", "",
              "## Fixed-chain evaluation", "",
              markdown_table(["policy", "avg len", "1", "2", "3", "4", "5"], [
                  [("finetuned" if init_from else "trained") + " (deployed)", report["avg_len"],
                   *report["success_by_position"]],
                  *([["checkpoint before finetuning", report["init_avg_len"],
                      *report["eval"]["init"]["success_by_position"]]] if "init" in report["eval"] else []),
                  ["random", report["random_avg_len"], *report["random_success_by_position"]]]),
              "![success by position](success_by_position.png)", ""]
    if (Path(report["config"]["out_dir"]) / "loss_curves.png").is_file():
        lines += ["## Training", "", "![loss curves](loss_curves.png)", ""]
    if dep["attention_overlays"]:
        lines += ["## Attention (the action head's queries or tokens -> image tokens), from the policy node", ""]
        lines += [f"![attention](attention/{Path(p).name})" for p in dep["attention_overlays"]]
        lines += [""]
    lines += ["## Stage times (s)", "", markdown_table(["stage", "seconds"], list(report["stage_seconds"].items()))]
    return "\n".join(lines)
