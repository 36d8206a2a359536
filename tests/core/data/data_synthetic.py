"""Synthetic episodes with known values, written as real rosbag2 bags by EpisodeBagWriter (test helpers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reconvla_core import interfaces as itf
from reconvla_core.data.bag_writer import EpisodeBagWriter

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC


def state_at(t: float, episode: int = 0) -> np.ndarray:
    """Follower state at time t (s): a known smooth function, distinct per episode."""
    return np.array([0.1 * t + episode, 0.2 * t, -0.3 * t, 0.05, -0.05, 0.4 * t, 0.01 * t], dtype=np.float64)


def action_at(t: float, episode: int = 0) -> np.ndarray:
    return state_at(t, episode) + np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.001])


def image_at(camera: int, frame: int, height: int, width: int) -> np.ndarray:
    """A deterministic image per camera and camera-frame number."""
    rng = np.random.default_rng(1000 * camera + frame)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def smooth_image_at(camera: int, frame: int, height: int, width: int) -> np.ndarray:
    """A camera-like image (gradients and a block) that JPEG compresses well."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y + 10 * camera) * 127 // (width + height)], -1)
    left = (4 * frame) % max(1, width // 2)
    image[height // 4 : height // 2, left : left + width // 4] = (200, 30 + 50 * camera, 40)
    return image.astype(np.uint8)


def gaze_at(frame: int) -> np.ndarray:
    return np.array([0.1 + 0.01 * frame, 0.2, 0.5 + 0.01 * frame, 0.6], dtype=np.float32)


@dataclass
class BagSpec:
    seconds: float = 2.0
    camera_hz: float = 10.0
    joint_hz: float = 10.0
    height: int = 24
    width: int = 32
    episode: int = 0
    success: bool = True
    instruction: str = "pick up the red block and place it in the box"
    operator: str = "tester"
    gaze: bool = True
    gaze_invalid_frames: tuple[int, ...] = ()
    skip_wrist_frames: tuple[int, ...] = ()  # camera frames missing from the wrist stream
    storage: str = "mcap"
    write_leader: bool = True
    smooth_images: bool = False  # camera-like content instead of noise (for lossy-codec tests)
    hold_leader_frames: tuple[int, ...] = ()  # joint-message indices where the leader repeats its last command
    # None: no intervention topic; else the joint-message indices at which the flag is true (written
    # with every joint message, as arm_command publishes it every control period)
    intervention_frames: tuple[int, ...] | None = None
    # None: no relabelled topic; else the joint-message indices whose leader command is a relabel
    relabelled_frames: tuple[int, ...] | None = None


def write_bag(path: Path, spec: BagSpec) -> Path:
    with EpisodeBagWriter(path, storage=spec.storage) as bag:
        bag.write_string(itf.INSTRUCTION_TOPIC, T0, spec.instruction)
        n_cam = int(round(spec.seconds * spec.camera_hz)) + 1
        n_joint = int(round(spec.seconds * spec.joint_hz)) + 1
        events: list[tuple[int, int, str, int]] = []
        for i in range(n_joint):
            events.append((T0 + round(i * SEC / spec.joint_hz), 0, "joint", i))
        for i in range(n_cam):
            events.append((T0 + round(i * SEC / spec.camera_hz), 1, "camera", i))
        for stamp, _, kind, i in sorted(events):
            t = (stamp - T0) / SEC
            if kind == "joint":
                bag.write_joint_state(itf.FOLLOWER_STATE_TOPIC, stamp, state_at(t, spec.episode))
                if spec.write_leader:
                    if i not in spec.hold_leader_frames:
                        command = action_at(t, spec.episode)
                    bag.write_joint_state(itf.LEADER_COMMAND_TOPIC, stamp, command)
                for topic, flagged in ((itf.INTERVENTION_TOPIC, spec.intervention_frames),
                                       (itf.RELABELLED_TOPIC, spec.relabelled_frames)):
                    if flagged is not None:
                        bag.write_flag(topic, stamp, i in flagged)
            else:
                render = smooth_image_at if spec.smooth_images else image_at
                bag.write_image(itf.BASE_IMAGE_TOPIC, stamp, render(0, i, spec.height, spec.width))
                if i not in spec.skip_wrist_frames:
                    bag.write_image(itf.WRIST_IMAGE_TOPIC, stamp, render(1, i, spec.height, spec.width))
                if spec.gaze:
                    bag.write_gaze_box(stamp, gaze_at(i), valid=i not in spec.gaze_invalid_frames)
        bag.finish({"success": spec.success, "operator": spec.operator, "instruction": spec.instruction})
    return path




def make_tiny_grounding_dino(directory: Path) -> Path:
    """A randomly initialised Grounding DINO (Swin + BERT, ~150k parameters) saved with its processor."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )

    try:
        from transformers import (
            GroundingDinoImageProcessorPil as ImageProcessor,  # no torchvision needed
        )
    except ImportError:
        from transformers import GroundingDinoImageProcessor as ImageProcessor
    import torch

    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "the", "red", "block", "blue", "cube", "box"]
    vocab = directory / "vocab_src.txt"
    vocab.write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(vocab))
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=2, out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64)
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
        num_queries=10, num_feature_levels=3, max_text_len=32, fusion_ffn_dim=32, use_timm_backbone=False,
    )
    model = GroundingDinoForObjectDetection(config)
    processor = GroundingDinoProcessor(image_processor=ImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
                                       tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    vocab.unlink()
    return directory
