"""`reconvla dagger` end to end at the smallest size: roll out, relabel, record, build, finetune, evaluate, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from reconvla_core.cli.main import main

SIZE = "64x48"
TINY_TRAIN = [  # small, fast CPU settings (as the training tests use)
    "train.global_batch_size=4", "train.per_device_batch_size=2", "logging.progress_bar=false",
    "eval.every_steps=0", "eval.at_end=false", "checkpoint.every_steps=0", "logging.tensorboard=false",
    "logging.loss_curve=false", "train.cpu=true",
]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Expert demonstrations -> dataset -> a tiny-sim checkpoint after 2 steps (the pipeline a user runs)."""
    from reconvla_core.train import load_train_config, train

    root = tmp_path_factory.mktemp("dagger_init")
    assert main(["sim", "collect", "--episodes", "3", "--out", str(root / "bags"), "--image-size", SIZE]) == 0
    assert main(["dataset", "build", "--bags", str(root / "bags"), "--out", str(root / "dataset"),
                 "--gaze", "sim"]) == 0
    config = load_train_config("tiny-sim", [*TINY_TRAIN, "data.val_fraction=0"], data=[str(root / "dataset")],
                               output_dir=root / "train", max_steps=2)
    return Path(train(config)["checkpoint"])


def test_one_round_end_to_end_and_resume(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from reconvla_core.data.bag_reader import read_episode
    from reconvla_core.sim.tasks import make_eval_chains

    out = tmp_path / "dagger"
    args = ["dagger", "--init", str(tiny_checkpoint), "--rounds", "1", "--episodes", "2", "--out", str(out),
            "--beta", "0.5", "--finetune-steps", "2", "--eval-chains", "1", "--image-size", SIZE, "--json",
            *[f"--override={o}" for o in TINY_TRAIN]]
    capsys.readouterr()
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = summary["rounds"]
    assert [row["round"] for row in rows] == [0, 1]
    row = rows[1]
    assert row["episodes"] == 2 and row["frames"] > 0
    assert row["avg_len"] == pytest.approx(np.mean(row["success_by_position"]) * 5)
    assert all(0.0 <= r["gaze_on_target"] <= 1.0 for r in rows)  # tiny-sim has a gaze keypoint
    assert all(r["approach_start_on_target"] for r in rows)  # every chain begins with an approach
    assert all(0.0 <= share <= 1.0 for r in rows for share in r["approach_start_on_target"].values())
    assert len(row["success_by_position"]) == 5 and row["eval_chains"] == 1
    assert Path(summary["plot"]).is_file()
    assert (out / "dagger.json").is_file()

    # The bags: the teleop topics, the policy's rollout in collection scenes, the expert's labels.
    eval_seeds = {chain.seed for chain in make_eval_chains(100)}
    bags = sorted((out / "round_01" / "bags").iterdir())
    assert len(bags) == 2
    frames = 0
    for bag in bags:
        episode = read_episode(bag)
        frames += len(episode.state)
        assert episode.info["operator"] == "sim-dagger" and episode.info["dagger_round"] == 1
        assert episode.info["scene_seed"] not in eval_seeds
        assert 0 <= episode.info["expert_frames"] <= episode.info["frames"]
        # The frames the policy drove are marked: their labels are relabels, not what the arm did.
        assert int(episode.relabelled.sum()) == episode.info["frames"] - episode.info["expert_frames"]
        assert np.all(np.isfinite(episode.action))
    assert frames == row["frames"]
    assert row["dataset_episodes"] == 2 and row["dataset_frames"] == row["frames"]  # failed subtasks kept
    from reconvla_core.data.dataset import VLADataset

    source = VLADataset([out / "round_01" / "dataset"], split="all").sources[0]
    assert int(source.relabelled.sum()) == row["frames"] - row["expert_frames"]
    assert Path(row["checkpoint"]).is_dir() and row["train_steps"] == 2

    # Without --resume an existing run is refused; with it, a half-done round goes on from where it stopped.
    assert main(args) == 2
    shutil.copytree(tiny_checkpoint, tmp_path / "other")
    other = [*args, "--resume"]
    other[other.index("--init") + 1] = str(tmp_path / "other")  # resuming a run with another start: refused
    capsys.readouterr()
    assert main(other) == 2
    assert "is a DAgger run from --init" in capsys.readouterr().err
    (out / "round_01" / "train.json").unlink()
    (out / "round_01" / "eval.json").unlink()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out)["rounds"]
    assert resumed[1]["frames"] == row["frames"] and resumed[1]["train_steps"] == 2
    assert resumed[1]["avg_len"] == row["avg_len"]


def test_round_share_sets_the_mixture(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The finetune mixture: every dataset alike by default; with round_share the rounds' datasets share
    that fraction of the samples and the demonstrations the rest, as the training sampler reads it."""
    from reconvla_core.sim.dagger import DaggerConfig, mixture
    from reconvla_core.train.config_loading import parse_data_arg

    base = tiny_checkpoint.parent.parent / "dataset"
    rounds = [tmp_path / "round_01" / "dataset", tmp_path / "round_02" / "dataset"]

    def weights(config: DaggerConfig) -> dict[str, float]:
        return {parse_data_arg(item)["path"]: parse_data_arg(item)["weight"] for item in mixture(config, rounds)}

    alike = weights(DaggerConfig(init=tiny_checkpoint, out=tmp_path / "a", base_data=[base]))
    assert alike == {str(base): 1.0, str(rounds[0]): 1.0, str(rounds[1]): 1.0}
    shared = weights(DaggerConfig(init=tiny_checkpoint, out=tmp_path / "b", base_data=[base], round_share=0.4))
    assert shared[str(base)] == pytest.approx(0.6)
    assert shared[str(rounds[0])] == pytest.approx(0.2) and shared[str(rounds[1])] == pytest.approx(0.2)
    only = weights(DaggerConfig(init=tiny_checkpoint, out=tmp_path / "c", round_share=1.0))
    assert set(only) == {str(r) for r in rounds}

    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="--round-share"):
            DaggerConfig(init=tiny_checkpoint, out=tmp_path / "d", base_data=[base], round_share=bad)
    with pytest.raises(ValueError, match="needs --data"):
        DaggerConfig(init=tiny_checkpoint, out=tmp_path / "e", round_share=0.5)


def test_gaze_round_teaches_the_keypoint_alone_then_refits_the_head(tiny_checkpoint: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """``--learn gaze``: the round's rollouts teach the gaze keypoint (fit-gaze on rollouts + demonstrations),
    the head is refitted on the demonstrations, and nothing else of the checkpoint changes."""
    from safetensors.torch import load_file

    base = tiny_checkpoint.parent.parent / "dataset"
    out = tmp_path / "gaze_dagger"
    args = ["dagger", "--init", str(tiny_checkpoint), "--rounds", "1", "--episodes", "2", "--out", str(out),
            "--learn", "gaze", "--data", str(base), "--round-share", "0.5", "--finetune-steps", "3",
            "--head-steps", "5", "--eval-chains", "1", "--image-size", SIZE, "--json"]
    capsys.readouterr()
    assert main(args) == 0
    row = json.loads(capsys.readouterr().out)["rounds"][1]
    assert row["checkpoint"] == str(out / "round_01" / "head")
    assert row["train_steps"] == 3 and row["head_steps"] == 5
    assert row["keypoint0_error_after"]["frames"] > 0
    assert (out / "round_01" / "gaze" / "config.json").is_file()

    before = load_file(str(tiny_checkpoint / "model.safetensors"))
    after = load_file(str(out / "round_01" / "head" / "model.safetensors"))
    changed = {name for name in before.keys() | after.keys()  # the head's MLP may have switched kind
               if name not in before or name not in after or not torch.equal(before[name], after[name])}
    assert changed, "the round learnt nothing"
    assert all(name.startswith(("keypoints.", "action_head.mlp.", "action_head.geometry_"))
               for name in changed), sorted(changed)
    assert not any(name.startswith("keypoints.embed.") for name in changed)
    meta = json.loads((out / "round_01" / "head" / "metadata.json").read_text())
    assert meta["fit_head"]["datasets"] == [str(base)]  # the head learns actions from the demonstrations alone
    assert meta["fit_gaze"]["from"] == str(tiny_checkpoint) and meta["training"]  # the whole lineage kept


def test_gaze_mode_refuses_what_it_cannot_run(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from reconvla_core.sim.dagger import DaggerConfig

    base = tiny_checkpoint.parent.parent / "dataset"
    with pytest.raises(ValueError, match="needs --data"):
        DaggerConfig(init=tiny_checkpoint, out=tmp_path / "a", learn="gaze")
    with pytest.raises(ValueError, match="--override"):
        DaggerConfig(init=tiny_checkpoint, out=tmp_path / "b", learn="gaze", base_data=[base],
                     train_overrides=["optim.lr=1e-4"])
    with pytest.raises(ValueError, match="--learn"):
        DaggerConfig(init=tiny_checkpoint, out=tmp_path / "c", learn="everything", base_data=[base])


def test_branches_label_the_policys_states_with_the_experts_whole_chunk(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """--branch: at a policy chunk's start the expert drives K steps in a copy of the twin that is then
    put back. The bag holds those steps as expert frames; the policy's own rollout is unchanged."""
    from reconvla_core.data.bag_reader import read_episode
    from reconvla_core.policy import CheckpointPolicy
    from reconvla_core.sim.dagger import DaggerConfig, build_round_dataset, rollout

    def roll(branch: float, name: str):
        config = DaggerConfig(init=tiny_checkpoint, out=tmp_path / name, episodes=1, branch=branch,
                              image_size=(64, 48), progress=False)
        stats = rollout(CheckpointPolicy(tiny_checkpoint), config, 1, tmp_path / name / "bags")
        (bag,) = sorted((tmp_path / name / "bags").iterdir())
        return stats, read_episode(bag)

    plain_stats, plain = roll(0.0, "plain")
    stats, branched = roll(1.0, "branched")
    assert plain_stats["branch_frames"] == 0 and plain.relabelled.all()
    assert stats["branch_frames"] > 0 and branched.info["dagger_branch"] == 1.0
    assert branched.info["branch_frames"] == stats["branch_frames"]
    flags = branched.relabelled.astype(bool)
    assert int((~flags).sum()) == stats["branch_frames"]  # beta 0: only the branches are expert frames
    # Runs of expert frames: one branch each, at most a chunk long, each followed by a policy-driven frame.
    starts = [i for i in range(len(flags)) if not flags[i] and (i == 0 or flags[i - 1])]
    ends = [i for i in range(len(flags)) if not flags[i] and (i + 1 == len(flags) or flags[i + 1])]
    chunk = max(e - s + 1 for s, e in zip(starts, ends))
    assert 1 < chunk <= 8 and all(e + 1 == len(flags) or flags[e + 1] for e in ends)
    # The policy's path with the branches taken out (a branch's first frame is the state it started
    # from) is the path of the rollout without branches: the twin was put back exactly.
    path = [i for i in range(len(flags)) if flags[i] or i in starts]
    assert np.allclose(branched.state[path], plain.state, atol=1e-9)
    # A branch starts with the label the plain rollout gives the same state.
    assert np.allclose(branched.action[starts[0]], plain.action[0], atol=1e-9)
    # The frames sit one period apart: the dataset keeps each once (no hole filled with a copy).
    built = build_round_dataset(tmp_path / "branched" / "bags", tmp_path / "branched" / "dataset")
    assert built["dataset_frames"] == len(flags)
