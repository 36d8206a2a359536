"""VLADataset through the model's processor: model-ready samples tokenised with the dataset's own stats."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.data.build import BuildConfig, build_dataset
from reconvla_core.data.dataset import DatasetSource, VLADataset
from reconvla_core.data.lerobot_v3 import load_stats

pytestmark = pytest.mark.unit
K = 5


@pytest.fixture(scope="module")
def tiny_model():
    from reconvla_core.model import ReconVLA, ReconVLAConfig

    return ReconVLA(ReconVLAConfig.from_preset("tiny", recon_target="gaze", chunk_size=K))


def _expected_tokens(actions, entry, processor):
    """Independent re-implementation of the documented binning: q01/q99 -> [-1, 1] -> 256 uniform bins."""
    low, high = np.asarray(entry["q01"]), np.asarray(entry["q99"])
    normalised = np.clip(2.0 * (actions - low) / np.maximum(high - low, 1e-8) - 1.0, -1.0, 1.0)
    n_bins = processor.action_tokenizer.n_bins
    bins = np.clip(np.floor((normalised + 1.0) * 0.5 * n_bins), 0, n_bins - 1).astype(np.int64)
    return bins + processor.action_tokenizer.first_token_id


def test_samples_are_model_ready_and_tokenised_with_dataset_stats(tmp_path, make_bag, tiny_model):
    import torch

    make_bag("ep0", seconds=1.5, episode=0, height=48, width=64)
    make_bag("ep1", seconds=1.5, episode=1, height=48, width=64, gaze_invalid_frames=(4,))
    build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds"))
    stats = load_stats(tmp_path / "ds")
    processor = tiny_model.processor
    ds = VLADataset([DatasetSource(tmp_path / "ds")], chunk_size=K, processor=processor, val_fraction=0.0)
    raw_ds = VLADataset([DatasetSource(tmp_path / "ds")], chunk_size=K, val_fraction=0.0)

    raw, sample = raw_ds[3], ds[3]
    assert {"pixel_values", "input_ids", "attention_mask", "image_mask", "labels", "recon_pixel_values"} <= set(sample)
    labels = sample["labels"].numpy()
    answer = labels[labels != -100]
    assert answer[-1] == processor.eos_token_id
    expected = _expected_tokens(raw["actions"].astype(np.float64), stats["action"], processor).reshape(-1)
    np.testing.assert_array_equal(answer[:-1], expected)
    decoded = processor.decode_actions(answer[:-1], norm_stats=stats)
    bin_width = (np.asarray(stats["action"]["q99"]) - np.asarray(stats["action"]["q01"])) / 256
    inside = (raw["actions"] >= stats["action"]["q01"]) & (raw["actions"] <= stats["action"]["q99"])
    assert np.all(np.abs(decoded - raw["actions"])[inside] <= (np.broadcast_to(bin_width, inside.shape)[inside] / 2
                                                                + 1e-6))
    # Other stats give other tokens: the dataset's stats are really the ones used.
    shifted = {key: {s: (np.asarray(v) + 0.5).tolist() if s != "count" else v for s, v in entry.items()}
               for key, entry in stats.items() if key in ("action", "observation.state")}
    other = processor(base_image=raw["base_image"], wrist_image=raw["wrist_image"], instruction=raw["instruction"],
                      state=raw["state"], actions=raw["actions"], gaze_box=raw["gaze_box"], norm_stats=shifted)
    assert not np.array_equal(other["labels"].numpy(), labels)
    # Images: the stitched frame and the gaze target are built from the recorded images and box.
    np.testing.assert_allclose(sample["pixel_values"].numpy(),
                               processor.pixel_values(processor.stitch(raw["base_image"], raw["wrist_image"])).numpy())
    target = processor.gaze_image(raw["base_image"], raw["wrist_image"], raw["gaze_box"], tiny_model.config.vae.image_size)
    np.testing.assert_allclose(sample["recon_pixel_values"].numpy(), processor.vae_pixels(target).numpy())
    # Padded chunk steps carry no loss at the episode end.
    end = ds[15]  # last frame of episode 0: 1 real step, K-1 padded
    assert int((end["labels"] != -100).sum()) == 7 + 1
    # A batch through the model gives finite losses.
    batch = processor.collate([ds[i] for i in (0, 3, 15, 20)])
    with torch.no_grad():
        out = tiny_model(batch)
    assert torch.isfinite(out.loss) and out.recon_loss is not None
