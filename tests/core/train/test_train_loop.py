"""The training loop on the real tiny ReconVLA and a dataset built from simulated bags."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from reconvla_core.train import ConfigError, train

pytestmark = pytest.mark.unit


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(checkpoint / "model.safetensors"))
    if (checkpoint / "reconstruction.safetensors").is_file():
        tensors.update(load_file(str(checkpoint / "reconstruction.safetensors")))
    return tensors


def test_tiny_run_lowers_both_losses_and_writes_artefacts(pretrained: dict[str, Any]) -> None:
    out = Path(pretrained["output_dir"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in steps] == list(range(1, 25))
    for key in ("action_loss", "recon_loss"):
        first = sum(r[key] for r in steps[:4]) / 4
        last = sum(r[key] for r in steps[-4:]) / 4
        assert last < 0.9 * first, f"{key} did not go down: {first:.3f} -> {last:.3f}"
    assert {"lr_llm", "lr_projector", "lr_denoiser", "samples_per_s", "grounding_loss"} <= set(steps[-1])
    assert "action_accuracy" not in steps[-1]  # the parallel head regresses: no token accuracy
    assert steps[-1]["lr_llm"] < steps[3]["lr_llm"]  # cosine decay after the warmup
    val = [r for r in records if r["kind"] == "val"]
    assert val and val[-1]["action_loss"] >= 0.0 and val[-1]["action_l1_joints_rad"] >= 0.0

    assert set(pretrained) >= {"steps", "final_loss", "final_action_loss", "final_recon_loss", "samples_per_s",
                               "checkpoint"}
    assert pretrained["steps"] == 24 and pretrained["samples_per_s"] > 0
    assert pretrained["final_loss"] == pytest.approx(steps[-1]["loss"])
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000020"]  # keep_last 1

    from reconvla_core.model import ReconVLA

    final = Path(pretrained["checkpoint"])
    assert (final / "reconstruction.safetensors").is_file()  # kept for the finetune stage
    policy = ReconVLA.from_pretrained(final)  # inference: no reconstruction weights
    assert policy.reconstruction is None and policy.norm_stats is not None
    training = json.loads((final / "metadata.json").read_text())["training"]
    assert training["steps"] == 24 and training["stage"] == "pretrain"


def test_interrupted_run_resumes_identically(make_config: Any, tmp_path: Path) -> None:
    """SIGTERM at step 3 -> checkpoint -> --resume: same weights as a run never interrupted."""
    settings = {"train.max_steps": 5, "optim.lr": 1e-3}
    straight = train(make_config(tmp_path / "straight", **settings))

    def stop_at_3(step: int, metrics: dict[str, float]) -> None:
        if step == 3:
            signal.raise_signal(signal.SIGTERM)

    first = train(make_config(tmp_path / "resumed", **settings), step_callback=stop_at_3)
    assert first["interrupted"] and first["steps"] == 3 and first["stop_signal"] == "SIGTERM"
    assert not (tmp_path / "resumed" / "final").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        train(make_config(tmp_path / "resumed", **settings))
    resumed = train(make_config(tmp_path / "resumed", **settings), resume=True)
    assert resumed["steps"] == 5 and not resumed["interrupted"]
    assert resumed["final_loss"] == straight["final_loss"]
    a, b = _weights(Path(straight["checkpoint"])), _weights(Path(resumed["checkpoint"]))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_lora_trains_adapters_projector_and_denoiser_only(make_config: Any, tmp_path: Path) -> None:
    from reconvla_core.model import ReconVLA

    config = make_config(tmp_path / "lora", **{"train.max_steps": 2, "lora.enabled": "true",
                                                         "lora.r": 4, "optim.lr": 1e-2})
    before = _initial_weights(config)
    result = train(config)
    final = Path(result["checkpoint"])
    assert (final / "lora_adapter" / "adapter_config.json").is_file()
    after = _weights(final)
    assert after.keys() == before.keys()  # merged: plain LLM weights, no adapter keys
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for name in before:
        if name.startswith("llm.") and any(f".{t}.weight" in name for t in targets):
            assert name in changed, f"{name}: the merged adapter should change it"
        elif name.startswith(("projector.", "projector_norm.", "reconstruction.denoiser.", "vision.", "action_head.",
                              "vision_film.", "keypoints.", "gaze_colour.")):
            continue  # trained fully (the tiny-sim vision tower too: train_vision); checked below as groups
        else:
            assert name not in changed, f"{name} changed but is frozen under LoRA"
    assert any(n.startswith("projector.") for n in changed) and any(n.startswith("projector_norm.") for n in changed)
    assert any(n.startswith("reconstruction.denoiser.") for n in changed)
    assert config.model.resolve().train_vision and any(n.startswith("vision.") for n in changed)
    # New modules outside the LLM train fully.
    for module in ("action_head.", "vision_film.", "keypoints.", "gaze_colour."):
        assert any(n.startswith(module) for n in changed), module
    assert ReconVLA.from_pretrained(final).reconstruction is None


@pytest.mark.parametrize("train_vision", [True, False])
def test_vision_tower_trains_only_when_the_config_says_so(make_config: Any, tmp_path: Path,
                                                          train_vision: bool) -> None:
    config = make_config(tmp_path / "run", **{"train.max_steps": 2, "optim.lr": 1e-2,
                                              "model.train_vision": str(train_vision).lower()})
    before = _initial_weights(config)
    after = _weights(Path(train(config)["checkpoint"]))
    vision = [name for name in before if name.startswith("vision.")]
    changed = [name for name in vision if not torch.equal(before[name], after[name])]
    assert vision
    if train_vision:
        assert len(changed) > len(vision) // 2, f"only {len(changed)} of {len(vision)} vision tensors trained"
    else:
        assert changed == []
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("projector."))


def _initial_weights(config: Any) -> dict[str, torch.Tensor]:
    """The weights train() starts from (same seed, same construction)."""
    from accelerate.utils import set_seed

    from reconvla_core.train.data import build_data
    from reconvla_core.train.model_setup import build_model

    set_seed(config.seed)
    model, _ = build_model(config, build_data(config, need_val=False).stats)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_finetune_starts_from_the_pretrained_denoiser(pretrained: dict[str, Any], make_config: Any,
                                                      tmp_path: Path) -> None:
    from reconvla_core.train.data import build_data
    from reconvla_core.train.model_setup import build_model

    init = Path(pretrained["checkpoint"])
    config = make_config(tmp_path / "finetune", **{"stage": "finetune", "init_from": str(init),
                                                             "train.max_steps": 2})
    saved = load_file(str(init / "reconstruction.safetensors"))
    model, info = build_model(config, build_data(config, need_val=False).stats)
    assert info["denoiser_carried_over"] is True and info["projector_carried_over"] is True
    denoiser = {f"reconstruction.denoiser.{k}": v for k, v in model.reconstruction.denoiser.state_dict().items()}
    assert denoiser and all(torch.equal(saved[k], v) for k, v in denoiser.items())
    fresh = _initial_weights(make_config(tmp_path / "unused"))
    assert any(not torch.equal(fresh[k], v) for k, v in denoiser.items()), "pretraining changed the denoiser"

    result = train(config)
    assert result["stage"] == "finetune" and result["steps"] == 2
    assert result["init"]["denoiser_carried_over"] is True and result["init"]["init_from"] == str(init)
    lineage = json.loads((Path(result["checkpoint"]) / "metadata.json").read_text())["init_lineage"]
    assert lineage["training"] == json.loads((init / "metadata.json").read_text())["training"]  # how init was made


def test_finetune_applies_finetune_options_and_keeps_the_architecture(pretrained: dict[str, Any], make_config: Any,
                                                                      tmp_path: Path, caplog) -> None:
    from reconvla_core.train.data import build_data
    from reconvla_core.train.model_setup import build_model

    config = make_config(tmp_path / "ground", **{"stage": "finetune", "init_from": pretrained["checkpoint"],
                                                 "train.max_steps": 2, "model.gaze_keypoint_weight": 1.5,
                                                 "model.action_embedding_init": "random", "eval.at_end": "true",
                                                 "eval.max_samples": 4})
    with caplog.at_level("WARNING"):
        model, info = build_model(config, build_data(config, need_val=False).stats)
    assert info["finetune_options"] == {"gaze_keypoint_weight": 1.5}
    assert model.config.gaze_keypoint_weight == 1.5 and model.keypoints is not None
    assert "action_embedding_init='random' is ignored" in caplog.text  # architecture stays the checkpoint's
    result = train(config)
    assert result["val"]["grounding_loss"] >= 0.0  # the keypoint loss trains and validation reports it


def test_finetune_options_compare_nested_fields_with_the_checkpoint(caplog) -> None:
    """Only the fields the config sets count; FINETUNE_OPTIONS apply, the others are ignored loudly,
    nested sections field by field (an equal nested value is not reported)."""
    from types import SimpleNamespace

    from reconvla_core.model import ReconVLAConfig
    from reconvla_core.train.model_setup import apply_finetune_options

    model = SimpleNamespace(config=ReconVLAConfig.from_preset("tiny", recon_weight=0.5))
    overrides = {"recon_weight": 1.0, "train_vision": False, "vision": {"image_size": 112, "feature_layer": -1},
                 "delta_action_dims": (0, 1)}
    with caplog.at_level("WARNING"):
        applied = apply_finetune_options(model, overrides)
    assert applied == {"recon_weight": 1.0} and model.config.recon_weight == 1.0
    assert "model.vision.feature_layer=-1 is ignored: the init checkpoint has -2" in caplog.text
    assert "model.delta_action_dims=(0, 1) is ignored: the init checkpoint has None" in caplog.text
    assert "image_size" not in caplog.text and "train_vision" not in caplog.text  # equal to the checkpoint's
    assert model.config.vision.feature_layer == -2 and model.config.delta_action_dims is None


def test_finetune_rejects_a_mismatched_checkpoint(pretrained: dict[str, Any], make_config: Any,
                                                  tmp_path: Path) -> None:
    config = make_config(tmp_path / "bad", **{"stage": "finetune", "init_from": pretrained["checkpoint"],
                                                        "model.recon_target": "none"})
    with pytest.raises(ConfigError, match="recon_target is 'none' but the init_from checkpoint"):
        train(config)


def test_bad_config_fails_before_any_work(make_config: Any, tmp_path: Path) -> None:
    config = make_config(tmp_path / "x", **{"train.global_batch_size": 6, "train.per_device_batch_size": 4})
    with pytest.raises(ConfigError, match="global_batch_size 6 is not divisible"):
        train(config)
    assert not (tmp_path / "x").exists()  # nothing was created


def test_paper_knobs_on_tiny_bf16_checkpointing_and_closed_loop_eval(make_config: Any, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The paper recipe's switches (bf16 autocast, gradient checkpointing) plus the sim closed-loop check."""
    config = make_config(tmp_path / "knobs", **{"train.max_steps": 2, "train.mixed_precision": "bf16",
                                                "train.gradient_checkpointing": "true", "eval.at_end": "true",
                                                "eval.max_samples": 2, "eval.sim_episodes": 1,
                                                "eval.sim_max_steps": 5})
    with caplog.at_level("INFO", logger="reconvla_core.train"):
        result = train(config)
    assert "gradient checkpointing on (1 module(s))" in caplog.text
    assert "mixed precision bf16" in caplog.text
    assert result["steps"] == 2 and 0 < result["final_recon_loss"] < 2 and result["final_action_loss"] > 0
    assert result["val"]["sim_avg_len"] >= 0.0 and "action_l1_gripper_m" in result["val"]


def test_export_turns_a_step_checkpoint_into_an_inference_checkpoint(pretrained: dict[str, Any],
                                                                     tmp_path: Path, capsys) -> None:
    from reconvla_core.cli.main import main
    from reconvla_core.model import ReconVLA

    run = Path(pretrained["output_dir"])
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "step"), "--json"]) == 0
    exported = ReconVLA.from_pretrained(tmp_path / "step", load_reconstruction=True)
    saved = load_file(str(run / "checkpoints" / "step-0000020" / "model.safetensors"))
    state = exported.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    final = ReconVLA.from_pretrained(pretrained["checkpoint"])
    assert exported.norm_stats == final.norm_stats
    assert json.loads((tmp_path / "step" / "metadata.json").read_text())["training"]["steps"] == 20
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--step", "7", "--out", str(tmp_path / "none")]) != 0
    assert "step 7" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path), "--out", str(tmp_path / "none")]) != 0
    assert "train_config.yaml" in capsys.readouterr().err and not (tmp_path / "none").exists()
