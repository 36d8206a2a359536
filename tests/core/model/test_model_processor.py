"""The processor: stitching, gaze target, prompt layout, labels, collation, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import INSTRUCTION
from reconvla_core.model.processing_reconvla import IGNORE_INDEX, resize


@pytest.fixture(scope="module")
def processor(tiny_model):
    return tiny_model.processor


def test_stitch_puts_base_on_top_with_the_14_27_split(processor):
    base = np.full((48, 64, 3), 200, np.uint8)
    wrist = np.full((30, 40, 3), 10, np.uint8)
    frame = processor.stitch(base, wrist)
    size = processor.config.vision.image_size
    top = round(size * 14 / 27)
    assert frame.shape == (size, size, 3) and frame.dtype == np.uint8
    assert np.all(frame[:top] == 200) and np.all(frame[top:] == 10)


def test_gaze_image_crops_the_box(processor):
    base = np.zeros((100, 100, 3), np.uint8)
    base[50:, 50:] = 255  # bottom-right quadrant white
    wrist = np.zeros((50, 50, 3), np.uint8)
    size = processor.config.vae.image_size
    gaze = processor.gaze_image(base, wrist, np.array([0.5, 0.5, 1.0, 1.0]), size)
    top = round(size * 14 / 27)
    assert gaze.shape == (size, size, 3)
    assert gaze[:top].min() == 255 and gaze[top:].max() == 0
    full = processor.gaze_image(base, wrist, None, size)
    assert full[:top].mean() == pytest.approx(255 / 4, rel=0.1)


def test_prompt_layout_and_labels(processor, observation):
    sample = processor(**observation)
    cfg = processor.config
    ids = sample["input_ids"]
    labels = sample["labels"]
    n_action = cfg.action_tokens_per_chunk
    assert sample["image_mask"].sum() == cfg.num_image_tokens
    assert (ids[sample["image_mask"]] == processor.tokenizer.convert_tokens_to_ids("<image>")).all()
    labelled = labels != IGNORE_INDEX
    assert labelled.sum() == n_action + 1  # action tokens + end-of-sequence, nothing else
    assert labelled[-n_action - 1:].all()
    assert labels[-1] == processor.tokenizer.eos_token_id
    action_ids = ids[-n_action - 1:-1]
    first = cfg.first_action_token_id
    assert ((action_ids >= first) & (action_ids < first + 256)).all()
    text = processor.tokenizer.decode(ids[~sample["image_mask"]][: -n_action - 1 - cfg.state_dim - 8].tolist())
    assert text.count(INSTRUCTION) == 2 and cfg.system_prompt in text
    # system line and instruction come before the image tokens, the instruction again after them
    first_image = int(sample["image_mask"].nonzero()[0])
    before = processor.tokenizer.decode(ids[:first_image].tolist())
    assert cfg.system_prompt in before and INSTRUCTION in before
    assert sample["pixel_values"].shape == (3, 112, 112)
    assert sample["recon_pixel_values"].shape == (3, 64, 64)
    assert -1.0 <= float(sample["recon_pixel_values"].min()) and float(sample["recon_pixel_values"].max()) <= 1.0


def test_state_tokens_sit_after_the_second_instruction(processor, observation):
    sample = processor(**{**observation, "actions": None})
    n_state = processor.config.state_dim
    tail = processor.tokenizer.decode(sample["input_ids"][-n_state - 30:].tolist())
    assert "State: " in tail
    assert "labels" not in sample and "recon_pixel_values" not in sample


def test_action_is_pad_masks_labels(processor, observation):
    sample = processor(**observation, action_is_pad=np.array([False, False, False, True, True]))
    assert (sample["labels"] != IGNORE_INDEX).sum() == 3 * 7 + 1


def test_inference_and_training_share_the_prompt(processor, observation):
    train = processor(**observation)
    infer = processor(**{**observation, "actions": None, "gaze_box": None})
    n = infer["input_ids"].shape[0]
    assert torch.equal(train["input_ids"][:n], infer["input_ids"])
    assert torch.equal(train["pixel_values"], infer["pixel_values"])
    stitched = processor.stitch(observation["base_image"], observation["wrist_image"])
    prestitched = processor(stitched_image=stitched, instruction=INSTRUCTION, state=observation["state"])
    assert torch.equal(prestitched["input_ids"], infer["input_ids"])
    assert torch.equal(prestitched["pixel_values"], infer["pixel_values"])


def test_collate_right_pads(processor, observation):
    short = processor(**observation)
    long = processor(**{**observation, "instruction": INSTRUCTION + " and then stop"})
    batch = processor.collate([short, long])
    length = long["input_ids"].shape[0]
    assert batch["input_ids"].shape == (2, length)
    pad = length - short["input_ids"].shape[0]
    assert batch["attention_mask"][0, -pad:].sum() == 0 and batch["attention_mask"][1].all()
    assert (batch["labels"][0, -pad:] == IGNORE_INDEX).all()
    assert batch["image_mask"].sum() == 2 * processor.config.num_image_tokens
    assert batch["pixel_values"].shape == (2, 3, 112, 112)


def test_decode_actions_round_trip(processor, observation):
    sample = processor(**observation)
    ids = sample["input_ids"][-36:-1].numpy()
    decoded = processor.decode_actions(ids)
    stats = processor.norm_stats["action"]
    half_bin = (np.array(stats["q99"]) - np.array(stats["q01"])) / 256
    clipped = np.clip(observation["actions"], stats["q01"], stats["q99"])
    assert decoded.shape == (5, 7)
    assert np.all(np.abs(decoded - clipped) <= half_bin + 1e-9)


@pytest.mark.parametrize("change, message", [
    ({"base_image": np.zeros((10, 10), np.uint8)}, "base_image must have shape HxWx3"),
    ({"wrist_image": np.zeros((10, 10, 3), np.float32)}, "wrist_image must be uint8"),
    ({"base_image": [[1, 2, 3]]}, "numpy array"),
    ({"state": np.full(7, np.nan)}, "state contains NaN"),
    ({"state": np.zeros(6)}, "state must have shape"),
    ({"actions": np.zeros((5, 6))}, "actions must have shape"),
    ({"actions": np.full((5, 7), np.inf)}, "actions contains NaN or inf"),
    ({"instruction": "  "}, "instruction must be a non-empty string"),
    ({"gaze_box": np.array([0.5, 0.5, 0.2, 0.9])}, "gaze_box"),
    ({"gaze_box": np.array([0.1, 0.2, 0.3])}, "gaze_box must have shape"),
])
def test_bad_inputs_raise_clear_errors(processor, observation, change, message):
    with pytest.raises(ValueError, match=message):
        processor(**{**observation, **change})


def test_missing_stats_raise(tiny_model, observation):
    from reconvla_core.model.processing_reconvla import ReconVLAProcessor

    bare = ReconVLAProcessor(tiny_model.config, tiny_model.tokenizer)
    with pytest.raises(ValueError, match="set_norm_stats"):
        bare(**observation)


def test_resize_keeps_uint8():
    out = resize(np.zeros((7, 9, 3), np.uint8), 5, 4)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8


def test_per_call_norm_stats_override(processor, observation):
    from reconvla_core.model.action_tokenizer import stats_from_bounds

    wide = stats_from_bounds(np.full(7, -10.0), np.full(7, 10.0))
    own = processor(**observation)
    other = processor(**observation, norm_stats={"action": wide, "observation.state": wide})
    assert not torch.equal(own["input_ids"], other["input_ids"])  # different bins for state and actions
    assert processor(**observation)["input_ids"].equal(own["input_ids"])  # the bound stats are unchanged


def test_processor_pickles_for_dataloader_workers(processor, observation):
    import pickle

    clone = pickle.loads(pickle.dumps(processor))
    a, b = processor(**observation), clone(**observation)
    assert all(torch.equal(a[k], b[k]) for k in a)
