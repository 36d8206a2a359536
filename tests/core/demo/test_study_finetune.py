"""`reconvla study recon --init-from`: the reconstruction ablation on the finetune recipe, end to end at the
smallest size (collect -> dataset -> a 2-step checkpoint -> each variant finetuned and scored)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from reconvla_core.cli.main import main

SIZE = "64x48"
TINY_TRAIN = ["train.global_batch_size=4", "train.per_device_batch_size=2", "logging.progress_bar=false",
              "eval.every_steps=0", "eval.at_end=false", "checkpoint.every_steps=0", "logging.tensorboard=false",
              "logging.loss_curve=false", "train.cpu=true", "data.val_fraction=0"]


@pytest.fixture(scope="module")
def init_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from reconvla_core.train import load_train_config, train

    root = tmp_path_factory.mktemp("study_init")
    assert main(["sim", "collect", "--episodes", "3", "--out", str(root / "bags"), "--image-size", SIZE]) == 0
    assert main(["dataset", "build", "--bags", str(root / "bags"), "--out", str(root / "dataset"),
                 "--gaze", "sim"]) == 0
    config = load_train_config("tiny-sim", TINY_TRAIN, data=[str(root / "dataset")], output_dir=root / "train",
                               max_steps=2)
    return Path(train(config)["checkpoint"]), root / "dataset"


def test_each_variant_finetunes_the_checkpoint(init_and_data, tmp_path, capsys):
    init, dataset = init_and_data
    args = ["study", "recon", "--init-from", str(init), "--data", str(dataset), "--seeds", "1", "--train-steps", "2",
            "--chains", "1", "--out", str(tmp_path / "study"), "--json"]
    for override in TINY_TRAIN:
        args += ["--override", override]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["init_from"] == str(init) and list(result["variants"]) == ["none", "gaze"]
    runs = {run["variant"]: run for run in result["runs"]}
    assert set(runs) == {"none", "gaze"} and all(run["final_recon_loss"] is not None for run in runs.values())
    for variant, weight in (("none", 0.0), ("gaze", 1.0)):
        config = yaml.safe_load((tmp_path / "study" / "runs" / f"{variant}-seed0" / "train_config.yaml").read_text())
        assert config["init_from"] == str(init) and config["train"]["max_steps"] == 2
        assert config["model"]["recon_weight"] == weight  # none: the branch kept, its loss no longer trained
    assert "finetuned from" in (tmp_path / "study" / "study.md").read_text()


def test_a_finetune_cannot_compare_another_reconstruction_target(init_and_data, tmp_path, capsys):
    init, dataset = init_and_data
    code = main(["study", "recon", "--init-from", str(init), "--data", str(dataset), "--variants", "none,full",
                 "--out", str(tmp_path / "s"), "--json"])
    assert code == 2 and "can compare only gaze and none" in capsys.readouterr().err
    code = main(["study", "recon", "--init-from", str(init), "--out", str(tmp_path / "s"), "--json"])
    assert code == 2 and "give them with --data" in capsys.readouterr().err
