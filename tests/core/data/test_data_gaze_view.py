"""Gaze backends (boxes file, Grounding DINO with a tiny random model) and `dataset view`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_synthetic import image_at, make_tiny_grounding_dino

from reconvla_core.cli.main import main as cli_main
from reconvla_core.data.build import BuildConfig, build_dataset
from reconvla_core.data.dataset import VLADataset
from reconvla_core.data.gaze import GroundingDinoGaze, sanitise_boxes, target_phrase
from reconvla_core.data.view import draw_gaze, read_episode_frames

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("instruction", "phrase"),
    [
        ("pick up the red block and place it in the box", "the red block"),
        ("Push the blue cube to the left.", "the blue cube"),
        ("stack the green cup on the plate", "the green cup"),
        ("red block", "red block"),
    ],
)
def test_target_phrase(instruction, phrase):
    assert target_phrase(instruction) == phrase


def test_sanitise_boxes_falls_back_to_whole_image():
    boxes = np.array([[0.6, 0.2, 0.1, 0.9, 1], [0.1, 0.1, 0.1, 0.5, 1], [0.2, 0.2, 0.4, 0.4, 0], [-1, 0, 2, 0.5, 1]])
    out = sanitise_boxes(boxes)
    np.testing.assert_allclose(out, [[0.1, 0.2, 0.6, 0.9, 1], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 1, 0.5, 1]])


def test_boxes_file_backend(tmp_path, make_bag):
    make_bag("whole_episode", gaze=False, seconds=0.4)
    make_bag("per_frame", gaze=False, seconds=0.4)
    make_bag("not_in_file", gaze=False, seconds=0.4)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"whole_episode": [0.1, 0.2, 0.3, 0.4],
                                 "per_frame": [[0.5, 0.5, 0.6, 0.6], None, [0.0, 0.0, 0.2, 0.2]]}))
    report = build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds", gaze="boxes",
                                       gaze_boxes_file=boxes))
    # per_frame: frames 1 (null) and 3, 4 (past the list) fall back; not_in_file: all 5 frames
    assert (report.frames, report.gaze_fallbacks) == (15, 3 + 5)
    ds = VLADataset([tmp_path / "ds"], val_fraction=0.0)
    # bags sort by name: not_in_file (frames 0-4), per_frame (5-9), whole_episode (10-14)
    assert not any(ds[i]["gaze_valid"] for i in range(5))
    np.testing.assert_allclose(ds[5]["gaze_box"], [0.5, 0.5, 0.6, 0.6], atol=1e-6)
    assert [ds[i]["gaze_valid"] for i in range(5, 10)] == [True, False, True, False, False]
    np.testing.assert_allclose(ds[12]["gaze_box"], [0.1, 0.2, 0.3, 0.4], atol=1e-6)


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory):
    return make_tiny_grounding_dino(tmp_path_factory.mktemp("gdino") / "tiny-grounding-dino")


def test_grounding_dino_backend_runs_batched_and_counts_fallbacks(tmp_path, make_bag, tiny_dino):
    import torch
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    make_bag("ep", gaze=False, seconds=0.9, height=48, width=64)
    backend = GroundingDinoGaze(tiny_dino, box_threshold=0.0, text_threshold=0.0, batch_size=4)
    images = [image_at(0, i, 48, 64) for i in range(5)]
    boxes = backend.detect(images, "the red block")
    assert boxes.shape == (5, 5) and np.all(boxes[:, 4] == 1) and np.all((boxes[:, :4] >= 0) & (boxes[:, :4] <= 1))
    # Same numbers as calling the transformers model directly for one image.
    processor = AutoProcessor.from_pretrained(tiny_dino, local_files_only=True)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(tiny_dino, local_files_only=True).eval()
    inputs = processor(images=[images[2]], text=["the red block."], return_tensors="pt")
    with torch.inference_mode():
        outputs = model(**inputs)
    result = processor.post_process_grounded_object_detection(outputs, inputs["input_ids"], threshold=0.0,
                                                              text_threshold=0.0, target_sizes=[(48, 64)])[0]
    best = result["boxes"][int(torch.argmax(result["scores"]))].numpy() / np.array([64, 48, 64, 48])
    np.testing.assert_allclose(boxes[2, :4], np.clip(best, 0, 1), atol=1e-4)

    detected = build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds", gaze="grounding-dino",
                                         gaze_model_dir=tiny_dino, gaze_box_threshold=0.0))
    assert (detected.frames, detected.gaze_fallbacks) == (10, 0)
    nothing = build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds2", gaze="grounding-dino",
                                        gaze_model_dir=tiny_dino, gaze_box_threshold=1.01))
    assert nothing.gaze_fallbacks == 10  # no detection anywhere: whole image, counted
    sample = VLADataset([tmp_path / "ds2"], val_fraction=0.0)[4]
    np.testing.assert_array_equal(sample["gaze_box"], [0, 0, 1, 1])
    assert sample["gaze_valid"] is False


def test_view_writes_png_and_gif_with_the_box(tmp_path, make_bag, capsys):
    make_bag("ep", seconds=0.5, height=48, width=64, gaze_invalid_frames=(2,))
    build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds"))
    from PIL import Image

    for name in ("sheet.png", "anim.gif"):
        rc = cli_main(["dataset", "view", str(tmp_path / "ds"), "--episode", "0", "--out", str(tmp_path / name),
                       "--json"])
        result = json.loads(capsys.readouterr().out)
        assert rc == 0 and result["frames"] == 6 and result["gaze_fallbacks"] == 1
    with Image.open(tmp_path / "anim.gif") as gif:
        assert gif.n_frames == 6 and gif.size == (128, 48)
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == (6 * 128, 48)
    frames = read_episode_frames(tmp_path / "ds", 0)
    drawn = draw_gaze(frames["base"][0], frames["gaze"][0])
    x1 = int(round(frames["gaze"][0][0] * 63))
    y1 = int(round(frames["gaze"][0][1] * 47))
    assert tuple(drawn[y1, x1]) == (0, 255, 0)
    assert cli_main(["dataset", "view", str(tmp_path / "ds"), "--episode", "3", "--out", str(tmp_path / "x.png")]) == 2
