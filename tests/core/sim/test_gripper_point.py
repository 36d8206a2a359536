"""Gripper points: where the tool point appears in the base image, as the twin renders it, stored by
`dataset build` as `observation.gripper_point` and read back as a training sample's label."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reconvla_core.cli.main import main
from reconvla_core.sim import camera as cam


def test_gripper_points_are_the_rendered_tcp_in_the_base_image():
    from reconvla_core.sim.env import PiperCellEnv, SimConfig
    from reconvla_core.sim.robot import JOINT_LOWER, JOINT_UPPER

    rng = np.random.default_rng(0)
    with PiperCellEnv(SimConfig(image_width=64, image_height=48)) as env:
        env.reset(seed=0)
        states, expected = [], []
        for _ in range(20):
            q = rng.uniform(0.5 * np.asarray(JOINT_LOWER), 0.5 * np.asarray(JOINT_UPPER))
            env.arm.reset(q, 0.05)
            tcp, _ = env.tcp_pose()  # PyBullet's link pose, the camera the twin renders with
            expected.append(cam.project(tcp[None], env.base_view, env.base_proj)[0])
            states.append(np.concatenate([q, [0.05]]))
    points = cam.gripper_points(np.array(states), 64, 48)
    expected = np.array(expected)
    inside = np.all((expected >= 0) & (expected <= 1), axis=1)
    assert inside.sum() >= 5 and (~inside).sum() >= 1  # both cases are exercised
    np.testing.assert_allclose(points[inside, :2], expected[inside], atol=1e-5)
    np.testing.assert_array_equal(points[:, 2], inside.astype(float))
    assert np.all((points[:, :2] >= 0) & (points[:, :2] <= 1))  # an outside point is clipped to the border
    with pytest.raises(ValueError, match="joint angles"):
        cam.gripper_points(np.array([[0.0, np.nan, 0, 0, 0, 0, 0]]), 64, 48)


def test_build_stores_gripper_points_that_training_samples_carry(tmp_path: Path):
    import pyarrow.parquet as pq

    from reconvla_core.data import DatasetSource, VLADataset
    from reconvla_core.data.augment import crop_point

    bags = tmp_path / "bags"
    assert main(["sim", "collect", "--episodes", "2", "--out", str(bags), "--image-size", "64x48"]) == 0
    assert main(["dataset", "build", "--bags", str(bags), "--out", str(tmp_path / "ds")]) == 0  # --gaze sim: auto
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["features"]["observation.gripper_point"] == {"dtype": "float32", "shape": [3],
                                                             "names": ["x", "y", "valid"]}
    table = pq.read_table(sorted((tmp_path / "ds/data").glob("*/*.parquet"))[0])
    hf = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["observation.gripper_point"]["_type"] == "Sequence"  # what HF datasets / LeRobot read
    state = np.array(table.column("observation.state").to_pylist())
    stored = np.array(table.column("observation.gripper_point").to_pylist())
    np.testing.assert_allclose(stored, cam.gripper_points(state, 64, 48), atol=1e-6)
    assert stored[:, 2].all()  # the expert works in view of the base camera

    sample = VLADataset([DatasetSource(tmp_path / "ds")], chunk_size=5, val_fraction=0.0)[3]
    rows = (np.array(table.column("episode_index").to_pylist()) == sample["episode_index"]) \
        & (np.array(table.column("frame_index").to_pylist()) == sample["frame_index"])
    assert sample["gripper_valid"] is True
    np.testing.assert_allclose(sample["gripper_point"], stored[rows][0, :2], atol=1e-6)

    assert main(["dataset", "build", "--bags", str(bags), "--out", str(tmp_path / "plain"),
                 "--gripper-points", "none"]) == 0
    assert "observation.gripper_point" not in json.loads((tmp_path / "plain/meta/info.json").read_text())["features"]
    plain = VLADataset([DatasetSource(tmp_path / "plain")], chunk_size=5, val_fraction=0.0)[3]
    assert plain["gripper_valid"] is False  # no label: no gripper loss for this sample

    # A random crop moves the point with the image, and a point cropped away loses its label.
    point, inside = crop_point(np.array([0.5, 0.5]), (0.25, 0.25, 0.75, 0.75))
    assert inside and np.allclose(point, [0.5, 0.5])
    point, inside = crop_point(np.array([0.1, 0.5]), (0.25, 0.0, 1.0, 1.0))
    assert not inside and point[0] == 0.0
