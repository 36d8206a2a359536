"""`reconvla fit-head`: a fresh action MLP fitted on a trained checkpoint's frozen trunk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.unit


def test_trunk_outputs_hold_the_true_and_the_own_gaze_and_the_fit_lowers_the_l1(pretrained: dict[str, Any],
                                                                               tiny_dataset: Path) -> None:
    from reconvla_core.data import DatasetSource, VLADataset
    from reconvla_core.model import ReconVLA
    from reconvla_core.train.fit_head import collect_trunk_outputs, evaluate_head, fit_action_mlp

    model = ReconVLA.from_pretrained(pretrained["checkpoint"])
    model.requires_grad_(False)
    frames = VLADataset([DatasetSource(tiny_dataset)], chunk_size=model.config.chunk_size, val_fraction=0.0)
    outputs = collect_trunk_outputs(model, frames, batch_size=8, progress=False)
    n, k = len(frames), model.config.chunk_size
    assert outputs.hidden_true.shape == (n, k, model.config.llm.hidden_size)
    assert outputs.geometry_true.shape == (n, model.action_head.geometry_dim) and outputs.actions.shape == (n, k, 7)
    # Keypoint 0 is the gaze box's centre in the true version and the trunk's estimate in the other;
    # the state and the other keypoints are the same in both.
    state_dim = model.config.state_dim
    point = model.processor.gaze_point(np.asarray(frames[0]["gaze_box"], np.float64))
    np.testing.assert_allclose(outputs.geometry_true[0, state_dim:state_dim + 2].numpy(), point, atol=1e-6)
    assert not torch.equal(outputs.geometry_true[:, state_dim:state_dim + 2], outputs.geometry_own[:, state_dim:state_dim + 2])
    torch.testing.assert_close(outputs.geometry_true[:, :state_dim], outputs.geometry_own[:, :state_dim])
    torch.testing.assert_close(outputs.geometry_true[:, state_dim + 2:], outputs.geometry_own[:, state_dim + 2:])
    assert not torch.equal(outputs.hidden_true, outputs.hidden_own)  # the queries start from the keypoints
    # The trunk outputs are the hidden states the model's own head reads: its chunk from them is predict's.
    model.eval()
    raw = frames[0]
    with torch.no_grad():
        head_chunk = model.action_head(outputs.hidden_own[:1].float(), outputs.geometry_own[:1])[0]
    predicted = model.predict(raw["base_image"], raw["wrist_image"], raw["instruction"], raw["state"])
    np.testing.assert_allclose(model.processor.decode_continuous(head_chunk.numpy(), state=raw["state"]),
                               predicted.actions, atol=2e-3)

    model.switch_option("action_head_mlp", "bottleneck")
    model.action_head.mlp.requires_grad_(True)
    before = evaluate_head(model.action_head, outputs, own=False)
    curve = fit_action_mlp(model.action_head, outputs, outputs, steps=150, batch_size=32, lr=3e-3,
                           own_gaze_share=0.5, log_every=50)
    assert [point["step"] for point in curve] == [50, 100, 150]
    assert curve[-1]["val_l1_true_gaze"] < 0.7 * before
    with pytest.raises(ValueError, match="own_gaze_share"):
        fit_action_mlp(model.action_head, outputs, steps=1, own_gaze_share=1.5)


def test_fit_head_saves_the_checkpoint_with_only_the_action_mlp_changed(pretrained: dict[str, Any],
                                                                       tiny_dataset: Path, tmp_path: Path,
                                                                       capsys) -> None:
    from reconvla_core.cli.main import main
    from reconvla_core.model import ReconVLA

    source = Path(pretrained["checkpoint"])
    out = tmp_path / "fitted"
    assert main(["fit-head", "--policy", str(source), "--data", str(tiny_dataset), "--out", str(out),
                 "--steps", "40", "--batch-size", "16", "--val-fraction", "0.3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mlp"] == "bottleneck" and result["train_frames"] > 0 and result["val_frames"] > 0
    assert set(result["val_l1_before"]) == {"true_gaze", "own_gaze"} and result["curve"][-1]["step"] == 40

    fitted = ReconVLA.from_pretrained(out, load_reconstruction=True)
    original = ReconVLA.from_pretrained(source, load_reconstruction=True)
    assert fitted.config.action_head_mlp == "bottleneck" and original.config.action_head_mlp == "concat"
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["fit_head"]["from"] == str(source)
    assert metadata["training"] == json.loads((source / "metadata.json").read_text())["training"]  # the trunk's
    new, old = fitted.state_dict(), original.state_dict()
    changed = {name for name in new if name not in old or not torch.equal(new[name], old[name])}
    assert changed and all(name.startswith(("action_head.mlp.", "action_head.geometry_")) for name in changed)
    assert any(name.startswith("reconstruction.") for name in new)  # the branch travels for later finetunes
    assert fitted.norm_stats == original.norm_stats

    # Bad settings and a missing checkpoint are refused before any work.
    assert main(["fit-head", "--policy", str(source), "--data", str(tiny_dataset), "--out", str(tmp_path / "x"),
                 "--own-gaze-share", "2"]) != 0
    assert "own_gaze_share" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["fit-head", "--policy", str(tmp_path / "nope"), "--data", str(tiny_dataset),
                 "--out", str(tmp_path / "x")]) != 0
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_fit_gaze_trains_only_the_conv_keypoint_net_and_lowers_its_error(pretrained: dict[str, Any],
                                                                         tiny_dataset: Path, tmp_path: Path,
                                                                         capsys) -> None:
    from reconvla_core.cli.main import main
    from reconvla_core.model import ReconVLA

    source = Path(pretrained["checkpoint"])
    out = tmp_path / "gaze"
    assert main(["fit-gaze", "--policy", str(source), "--data", f"{tiny_dataset}:1.0", "--out", str(out),
                 "--steps", "60", "--batch-size", "8", "--lr", "2e-3", "--val-fraction", "0.3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    before, after = result["keypoint0_error_before"], result["keypoint0_error_after"]
    assert before["frames"] == after["frames"] > 0 and after["mean"] < before["mean"]
    assert result["curve"][-1]["step"] == 60 and "fit-head" in result["next"]
    fitted = ReconVLA.from_pretrained(out, load_reconstruction=True)
    original = ReconVLA.from_pretrained(source, load_reconstruction=True)
    new, old = fitted.state_dict(), original.state_dict()
    changed = {name for name in new if not torch.equal(new[name], old[name])}
    assert changed and all(name.startswith("keypoints.") and not name.startswith("keypoints.embed.")
                           for name in changed)
    assert json.loads((out / "metadata.json").read_text())["fit_gaze"]["steps"] == 60
    # A checkpoint without conv keypoints is refused, and so is a missing one.
    assert main(["fit-gaze", "--policy", str(tmp_path / "nope"), "--data", str(tiny_dataset),
                 "--out", str(tmp_path / "x")]) != 0
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_fit_gaze_state_film_switches_keypoint_state_on_and_trains_only_its_layers(pretrained: dict[str, Any],
                                                                                   tiny_dataset: Path,
                                                                                   tmp_path: Path, capsys) -> None:
    from reconvla_core.cli.main import main
    from reconvla_core.model import ReconVLA

    source = Path(pretrained["checkpoint"])
    out = tmp_path / "gaze_state"
    assert main(["fit-gaze", "--policy", str(source), "--data", f"{tiny_dataset}:1.0", "--out", str(out),
                 "--state-film", "--steps", "30", "--batch-size", "8", "--lr", "3e-3", "--val-fraction", "0.3",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["state_film"] and result["keypoint0_error_after"]["frames"] > 0
    fitted = ReconVLA.from_pretrained(out, load_reconstruction=True)
    original = ReconVLA.from_pretrained(source, load_reconstruction=True)
    assert fitted.config.keypoint_state and not original.config.keypoint_state
    new, old = fitted.state_dict(), original.state_dict()
    added = set(new) - set(old)
    assert added == {f"keypoints.{layer}.{p}" for layer in ("stem_state", "body_state") for p in ("weight", "bias")}
    assert all(torch.equal(new[name], old[name]) for name in old)  # nothing else moved
    assert any(new[name].abs().sum() > 0 for name in added)  # they left zero
    assert json.loads((out / "metadata.json").read_text())["fit_gaze"]["state_film"] is True

    # A second fit on the fitted checkpoint (its own rollouts, say) continues the layers and keeps the first on record.
    again = tmp_path / "gaze_state_again"
    assert main(["fit-gaze", "--policy", str(out), "--data", f"{tiny_dataset}:1.0", "--out", str(again),
                 "--state-film", "--steps", "10", "--batch-size", "8", "--lr", "3e-3", "--val-fraction", "0.3",
                 "--json"]) == 0
    capsys.readouterr()
    record = json.loads((again / "metadata.json").read_text())["fit_gaze"]
    assert record["from"] == str(out) and record["previous"]["from"] == str(source)
    refitted = ReconVLA.from_pretrained(again, load_reconstruction=True).state_dict()
    assert set(refitted) == set(new) and any(not torch.equal(refitted[name], new[name]) for name in added)


def test_overfit_warning_names_a_fit_that_went_past_its_best() -> None:
    from reconvla_core.train.fit_head import overfit_warning

    def curve(*values: float) -> list[dict[str, float]]:
        return [{"step": 1000 * (i + 1), "loss": 0.1, "val_l1_own_gaze": v} for i, v in enumerate(values)]

    assert overfit_warning(curve(0.074, 0.071, 0.073), {"own_gaze": 0.09}) is None  # a sound fit
    assert "overfits" in overfit_warning(curve(0.080, 0.086, 0.092), {"own_gaze": 0.063})
    assert "replaced head" in overfit_warning(curve(0.080, 0.079), {"own_gaze": 0.063})
    assert overfit_warning([{"step": 1, "loss": 0.1}], None) is None  # no held-out frames: nothing to say
