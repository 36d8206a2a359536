"""`reconvla study privileged`: the privileged-perception calibration trains and evaluates end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def twin_dataset(tmp_path_factory):
    from reconvla_core.cli.main import main

    root = tmp_path_factory.mktemp("privileged")
    assert main(["sim", "collect", "--episodes", "4", "--seed", "9000", "--image-size", "64x48",
                 "--out", str(root / "bags")]) == 0
    assert main(["dataset", "build", "--bags", str(root / "bags"), "--out", str(root / "ds")]) == 0
    return root / "ds"

def test_samples_are_relative_chunks_with_the_gaze_box_and_instruction(twin_dataset):
    from reconvla_core.demo.privileged import instruction_features, load_samples

    inputs, targets = load_samples([twin_dataset], chunk_size=5)
    assert len(inputs) == len(targets) > 20
    from reconvla_core.sim.scene import COLOURS

    assert targets.shape[1] == 5 * 7 and inputs.shape[1] == 7 + 4 + 3 + 2 * len(COLOURS)
    boxes = inputs[:, 7:11]
    assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[:, 2] > boxes[:, 0])
    # Joints are relative to the state: the first step of a chunk is a small move, never an absolute angle.
    assert np.abs(targets[:, :6]).max() < 0.5
    one_hot = instruction_features("stack the red block on the blue block", ["red", "green", "blue", "yellow"])
    assert one_hot.sum() == 3 and one_hot[2] == 1.0  # family stack, object red, destination blue

def test_inputs_narrow_the_box_to_its_centre_and_add_the_gripper_point(twin_dataset, capsys):
    from reconvla_core.cli.main import main
    from reconvla_core.demo.privileged import load_samples
    from reconvla_core.sim.camera import gripper_points

    boxed, _ = load_samples([twin_dataset], chunk_size=5)
    inputs, _ = load_samples([twin_dataset], chunk_size=5, inputs="centre+gripper")
    assert inputs.shape[1] == boxed.shape[1] - 4 + 2 + 4
    centre = 0.5 * (boxed[:, 7:9] + boxed[:, 9:11])
    np.testing.assert_allclose(inputs[:, 7:9], centre, atol=1e-6)
    np.testing.assert_allclose(inputs[:, 9:11], gripper_points(inputs[:, :7], 160, 120)[:, :2], atol=1e-6)
    np.testing.assert_allclose(inputs[:, 11:13], centre - inputs[:, 9:11], atol=1e-6)
    np.testing.assert_array_equal(inputs[:, 13:], boxed[:, 11:])  # the instruction one-hots
    sized, _ = load_samples([twin_dataset], chunk_size=5, inputs="centre+size")
    np.testing.assert_allclose(sized[:, 7:9], centre, atol=1e-6)
    np.testing.assert_allclose(sized[:, 9:11], boxed[:, 9:11] - boxed[:, 7:9], atol=1e-6)  # width, height
    np.testing.assert_array_equal(sized[:, 11:], boxed[:, 11:])
    assert main(["study", "privileged", "--data", str(twin_dataset), "--steps", "200", "--chains", "1",
                 "--inputs", "centre+gripper", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["inputs"] == "centre+gripper" and result["chains"] == 1


def test_study_trains_and_scores_on_the_fixed_chains(twin_dataset, capsys):
    from reconvla_core.cli.main import main

    assert main(["study", "privileged", "--data", str(twin_dataset), "--steps", "300", "--chains", "1",
                 "--gaze-noise", "0,0.1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["chains"] == 1 and 0.0 <= result["avg_len"] <= 5.0
    levels = result["by_gaze_noise"]
    assert [level["gaze_noise"] for level in levels] == [0.0, 0.1]
    assert levels[0]["avg_len"] == result["avg_len"] and levels[1]["mean_gaze_error"] == pytest.approx(0.1253, abs=1e-4)
    for bad in ("x", "-0.1", "nan"):
        assert main(["study", "privileged", "--data", str(twin_dataset), "--gaze-noise", bad]) != 0
        assert "--gaze-noise" in capsys.readouterr().err
    assert result["loss_curve"][-1] < result["loss_curve"][0] or len(result["loss_curve"]) == 1
    assert result["samples"] > 20

def test_study_refuses_a_directory_that_is_not_a_dataset(tmp_path, capsys):
    from reconvla_core.cli.main import main

    assert main(["study", "privileged", "--data", str(tmp_path)]) != 0
    assert "not a dataset" in capsys.readouterr().err


def test_gaze_noise_moves_the_box_the_policy_sees_and_only_then():
    from reconvla_core.demo.privileged import PrivilegedMLP, PrivilegedPolicy

    class Env:
        def gaze_box(self):
            return np.array([0.4, 0.4, 0.6, 0.6, 1.0])

    seen = []

    class Model(PrivilegedMLP):
        def chunk(self, features, state):
            seen.append(features[7:11].copy())
            return np.zeros((5, 7))

    model = Model(None, 0, 1, 0, 1, 5)
    obs = {"state": np.zeros(7), "instruction": "pick up the red block"}
    PrivilegedPolicy(model, Env()).infer(obs)
    np.testing.assert_allclose(seen[-1], [0.4, 0.4, 0.6, 0.6])
    noisy = PrivilegedPolicy(model, Env(), gaze_noise=0.05, seed=1)
    shifts = []
    for _ in range(200):
        noisy.infer(obs)
        shifts.append(seen[-1] - [0.4, 0.4, 0.6, 0.6])
    shifts = np.asarray(shifts)
    np.testing.assert_allclose(shifts[:, :2], shifts[:, 2:], atol=1e-6)  # the box moves, its size stays
    assert 0.04 < shifts[:, :2].std() < 0.06


def test_head_input_scaling_maps_boxes_and_state_like_the_reconvla_head():
    from reconvla_core.demo.privileged import input_scaling

    rng = np.random.default_rng(0)
    inputs = np.concatenate([rng.normal(0.0, 0.5, (200, 7)), rng.uniform(0.2, 0.8, (200, 4)),
                             np.zeros((200, 3))], axis=1).astype(np.float32)
    shift, scale = input_scaling(inputs, "head")
    scaled = (inputs - shift) / scale
    np.testing.assert_allclose(scaled[:, 7:11], 2 * inputs[:, 7:11] - 1, atol=1e-6)
    assert np.quantile(scaled[:, :7], 0.01, axis=0) == pytest.approx(-1.0, abs=1e-5)
    shift, scale = input_scaling(inputs, "standard")
    assert np.allclose(((inputs - shift) / scale)[:, :11].std(0), 1.0, atol=1e-3)
    with pytest.raises(ValueError, match="scaling"):
        input_scaling(inputs, "minmax")
