"""ReconVLA configuration: plain dataclasses, no torch import.

Two presets:
- ``paper``: the authors' model (Qwen2-7B + siglip-so400m-patch14-384, 27x27 = 729 image tokens,
  projector 1152 -> 3584, FLUX-VAE geometry 16 channels at 432 px packed 2x2 -> 27x27x64, DiT depth 3,
  width 1024, 16 heads).
- ``tiny``: the same architecture shrunk so a CPU trains it in seconds (112 px / patch 14 -> 8x8 grid,
  a 64 px VAE with 4x downsampling -> 16x16 latents packed 2x2 onto the 8x8 grid).

Every size the model uses is derived from these fields; a bad value raises ``ValueError`` naming it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECON_TARGETS: tuple[str, ...] = ("none", "full", "gaze")
NORM_MODES: tuple[str, ...] = ("q01_q99", "min_max", "mean_std")
DIM_MODES: tuple[str, ...] = ("normalize", "identity", "binary")
ACTION_MODES: tuple[str, ...] = ("absolute", "delta")
ACTION_EMBEDDING_INITS: tuple[str, ...] = ("random", "sinusoidal")
ACTION_HEADS: tuple[str, ...] = ("tokens", "parallel")
ACTION_HEAD_MLPS: tuple[str, ...] = ("concat", "bottleneck")
KEYPOINT_ENCODERS: tuple[str, ...] = ("vision", "conv")
CONFIG_FORMAT_VERSION = 1
# Options a finetune stage may set on top of its init checkpoint's config: they change the losses,
# the training inputs or the answer format, never the layout of the checkpoint's weights.
FINETUNE_OPTIONS: tuple[str, ...] = ("recon_weight", "num_noise_draws", "answer_box", "gaze_keypoint_weight",
                                     "gaze_heatmap_weight", "gaze_teacher_forcing")
# Options a finetune may switch although they change the weights' layout: the module they select is
# rebuilt with fresh weights (ReconVLA.switch_option), everything else carried over.
SWITCHABLE_OPTIONS: tuple[str, ...] = ("keypoint_encoder", "keypoint_state", "gaze_colour_weight", "action_head_mlp")
# Training-only research options that the study found not to help (docs/study_recon.md); configs
# saved with them still load (the options are dropped: inference never used them).
REMOVED_TRAINING_OPTIONS: tuple[str, ...] = ("action_input_dropout", "grounding_box_weight")
# Research options that the study found not to help although inference ran them when on
# (docs/study_recon.md): a config saved with one off still loads (the option is dropped); one with it
# on describes a model this code no longer builds, and loading it fails (removed_model_options).
REMOVED_MODEL_OPTIONS: tuple[str, ...] = ("gripper_point_weight",)
BOX_TOKENS = 4  # x0, y0, x1, y1
GAZE_HEATMAP_SIGMA = 0.03  # std of gaze_heatmap_weight's target, a fraction of the image: about a block


@dataclass
class VisionConfig:
    """SigLIP vision tower (frozen unless ``ReconVLAConfig.train_vision``). ``feature_layer`` indexes the hidden states (-2 = penultimate)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    image_size: int = 384
    patch_size: int = 14
    feature_layer: int = -2
    layer_norm_eps: float = 1e-6
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_image_tokens(self) -> int:
        return self.grid_size**2

    @property
    def num_layers_kept(self) -> int:
        """Encoder layers actually run: the ones up to the selected feature layer."""
        return self.num_hidden_layers + 1 + self.feature_layer if self.feature_layer < 0 else self.feature_layer

    def validate(self) -> None:
        _positive(self, "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "image_size", "patch_size")
        if self.image_size < self.patch_size:  # SigLIP's conv drops any remainder (384 / 14 -> 27)
            raise ValueError(f"vision.image_size ({self.image_size}) is below vision.patch_size ({self.patch_size})")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("vision.hidden_size must be divisible by vision.num_attention_heads")
        if not 1 <= self.num_layers_kept <= self.num_hidden_layers:
            raise ValueError(f"vision.feature_layer ({self.feature_layer}) selects no encoder layer of "
                             f"{self.num_hidden_layers}")


@dataclass
class LLMConfig:
    """Qwen2 decoder. ``vocab_size`` is the model's embedding rows (may exceed the tokenizer's size)."""

    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    vocab_size: int = 152064
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False

    def validate(self) -> None:
        _positive(self, "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size", "max_position_embeddings")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("llm.hidden_size must be divisible by llm.num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("llm.num_attention_heads must be divisible by llm.num_key_value_heads")


@dataclass
class VAEConfig:
    """Frozen diffusers AutoencoderKL; latents are (z - shift_factor) * scaling_factor."""

    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.3611
    shift_factor: float | None = 0.1159
    image_size: int = 432
    use_quant_conv: bool = False
    use_post_quant_conv: bool = False

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample

    def validate(self) -> None:
        _positive(self, "latent_channels", "layers_per_block", "norm_num_groups", "image_size")
        if not self.block_out_channels:
            raise ValueError("vae.block_out_channels must not be empty")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError("vae.block_out_channels must all be divisible by vae.norm_num_groups")
        if self.image_size % self.downsample:
            raise ValueError(f"vae.image_size ({self.image_size}) must be a multiple of the VAE "
                             f"downsampling factor ({self.downsample})")


@dataclass
class DenoiserConfig:
    """DiT denoiser with per-token adaLN-Zero conditioning."""

    depth: int = 3
    width: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    timestep_freq_dim: int = 256

    def validate(self) -> None:
        _positive(self, "depth", "width", "num_heads", "timestep_freq_dim")
        if self.width % self.num_heads:
            raise ValueError("denoiser.width must be divisible by denoiser.num_heads")
        if self.timestep_freq_dim % 2:
            raise ValueError("denoiser.timestep_freq_dim must be even")


_NESTED: dict[str, type] = {"vision": VisionConfig, "llm": LLMConfig, "vae": VAEConfig, "denoiser": DenoiserConfig}


@dataclass
class ReconVLAConfig:
    """Configuration of a ReconVLA model: its parts, the action encoding, the answer format and the
    reconstruction branch. Build one with ``ReconVLAConfig.from_preset("tiny" | "paper", **overrides)``
    (nested configs as dicts); every size the model uses is derived from these fields, and a bad value
    raises ``ValueError`` naming it. Checkpoints keep it as config.json; a training config sets its
    fields under ``model:``.

    Args:
        preset (`str`, defaults to `"paper"`):
            The preset the config was built from (``paper`` | ``tiny``); a record, the fields decide.
        vision (`VisionConfig`):
            The SigLIP vision tower (frozen unless ``train_vision``).
        llm (`LLMConfig`):
            The Qwen2 decoder.
        vae (`VAEConfig`):
            The frozen AutoencoderKL whose latents the reconstruction branch denoises.
        denoiser (`DenoiserConfig`):
            The DiT denoiser of the reconstruction branch.

        action_dim (`int`, defaults to `7`):
            Dimensions of one action (PiPer: 6 joints + the gripper opening).
        state_dim (`int`, defaults to `7`):
            Dimensions of the robot state in the prompt.
        chunk_size (`int`, defaults to `5`):
            Actions per chunk K: one answer covers the next K control steps.
        n_bins (`int`, defaults to `256`):
            Bins per normalised dimension of the action and state tokens.
        norm_mode (`str`, defaults to `"q01_q99"`):
            How the dataset stats map values onto [-1, 1]: ``q01_q99``, ``min_max`` or ``mean_std``.
        action_dim_modes, state_dim_modes (`tuple[str, ...]`, *optional*):
            Per dimension: ``normalize`` (stats -> [-1, 1]), ``identity`` (already in [-1, 1]) or
            ``binary`` (thresholded at the middle of the stats range; decodes to the range's ends).
            None: ``normalize`` for every dimension.
        action_mode (`str`, defaults to `"absolute"`):
            ``absolute``: the chunk encodes the targets a_{t+k} as they are. ``delta``: for the dims in
            ``delta_action_dims`` it encodes a_{t+k} - s_t (relative to the observed state, normalised
            with the ``action_delta`` stats); the other dims stay absolute. Decoding adds the state
            back, so ``predict_action`` / ``decode_actions`` return absolute robot-unit actions in both
            modes. Checkpoints saved before this field existed load as ``absolute``.
        delta_action_dims (`tuple[int, ...]`, *optional*):
            The dims made relative in delta mode; each must also index the state. None: every dim but
            the last (PiPer: the 6 joints; the gripper opening stays absolute).
        action_token_offset (`int`, *optional*):
            First token id of the action bins. None: the last ``n_bins`` ids of the LLM vocabulary.
        action_head (`str`, defaults to `"tokens"`):
            How the answer is produced. ``tokens``: the paper's (OpenVLA's) K x D discrete action
            tokens, decoded one at a time and trained with cross-entropy. ``parallel`` (OpenVLA-OFT): K
            learned action queries follow the prompt, attend to all of it and bidirectionally to each
            other, and one forward pass yields the whole chunk; an MLP maps their hidden states to
            normalised continuous actions, trained with L1. Checkpoints saved before this field existed
            load as ``tokens``.

        system_prompt (`str`, defaults to a one-line operator/policy prompt):
            The system turn of the prompt.
        stitch_top_fraction (`float`, defaults to `14 / 27`):
            Share of the model-input image height given to the base view (on top; the wrist view
            below). The same at training and at inference.

        recon_target (`str`, defaults to `"gaze"`):
            What the reconstruction branch rebuilds from the image positions' hidden states (the
            paper's ablation switch): ``none`` (no branch), ``full`` (the stitched input image) or
            ``gaze`` (the gaze-box crop of the base view above the wrist view).
        recon_weight (`float`, defaults to `1.0`):
            Weight of the reconstruction loss beside the action loss.
        num_noise_draws (`int`, defaults to `4`):
            Noise / timestep draws per sample of the reconstruction loss.
        num_train_timesteps (`int`, defaults to `1000`):
            Timesteps of the DDPM noise schedule.
        beta_schedule (`str`, defaults to `"squaredcos_cap_v2"`):
            The diffusers beta schedule (cosine).
        gaze_sample_steps (`int`, defaults to `10`):
            Denoising steps when a gaze image is sampled for visualisation.

        attention_layers (`tuple[int, ...]`, *optional*):
            Inference: the LLM layers averaged for the attention map. None: all layers.

        llm_path, vision_path, llava_path, vae_path, tokenizer_path (`str`, *optional*):
            Local weight directories (never downloaded) that ``ReconVLA.from_backbones`` loads: a Qwen2
            and a SigLIP directory, or a LLaVA-style one; a diffusers VAE; the tokenizer (default:
            the LLM's or LLaVA's). Checkpoints record them as provenance.

    Experimental / training-from-scratch options:
        Research options for small models trained from random weights on little data (the ``tiny``
        preset of the ``tiny-sim`` recipe). Each defaults to off, which is the paper's model;
        docs/study_recon.md records what each did. ``FINETUNE_OPTIONS`` among them may change on a
        finetune, the others are fixed by the checkpoint.

        train_vision (`bool`, defaults to `False`):
            Train the vision tower as well. The paper freezes its pretrained SigLIP; a tower built
            from random weights would stay a fixed random feature map.
        projector_input_norm (`bool`, defaults to `False`):
            LayerNorm on the vision features before the projector (as InternVL's projector does). The
            raw output of a tower trained from scratch is large (std ~6 in the tiny model) and would
            swamp the text embeddings; a pretrained LLaVA projector is trained without it.
        action_embedding_init (`str`, defaults to `"random"`):
            How a randomly initialised LLM starts its action-bin rows (input embeddings and LM-head
            rows; the state tokens use them too): ``random`` (the library's init) or ``sinusoidal``
            (features of the bin value, so neighbouring bins start alike and magnitudes are known from
            the first step). Pretrained LLM weights (``from_backbones``, our checkpoints) are never
            touched.
        answer_box (`bool`, defaults to `False`):
            Token head only. "Where" before "how" (an ECoT-style grounded answer): the answer starts
            with the gaze box as 4 bin tokens (x0, y0, x1, y1 of the base view, [0, 1] mapped onto the
            action bins), then the action chunk. Training teaches the box from the dataset's gaze
            boxes; at inference the model decodes its own box first and the action tokens attend to it.
        vision_film (`bool`, defaults to `False`):
            FiLM of every vision-tower block by an instruction embedding (OpenVLA-OFT+; here the LLM's
            encoding of the instruction alone), so the image features depend on which object the
            instruction names. Starts as the identity.
        spatial_keypoints (`int`, defaults to `0`):
            Parallel head only: a spatial-softmax read-out of the vision features (Levine et al. 2016,
            robomimic). Each of this many keypoints is the expected (x, y) of a softmax over the
            image-token grid, added into the action queries' inputs, so the head gets coordinates, not
            only features. 0: off.
        keypoint_encoder (`str`, defaults to `"vision"`):
            Where the spatial keypoints are read from. ``vision``: the vision tower's token grid (fine
            for a pretrained tower's 27x27 grid). ``conv``: a small convolutional net of their own on
            the model-input image, at a quarter of its resolution (40x40 for 160 px), FiLM-conditioned
            by the instruction encoding, finer than the tiny tower's 8x8 grid of 20 px patches
            (docs/study_recon.md, "How precise must perception be?"). A finetune may switch it (the
            new encoder starts from random weights).
        keypoint_state (`bool`, defaults to `False`):
            Conv keypoints only: their FiLM also reads the normalised robot state, so whether the
            fingers hold the block (the gripper's opening) can decide where the gaze belongs (the
            block, or its destination) instead of the image alone. Switched on in a finetune, the
            state's FiLM layers start at zero: the keypoints start as they were.
        gaze_keypoint_weight (`float`, defaults to `0.0`):
            Weight of the "where" supervision of keypoint 0: L1 to the centre of the dataset's gaze box
            (the target object before the grasp, the destination after it) in the model-input frame,
            logged as ``grounding_loss``. Needs ``spatial_keypoints`` >= 1. 0: off.
        gaze_heatmap_weight (`float`, defaults to `0.0`):
            Weight of a second "where" loss on keypoint 0: the KL divergence from a Gaussian at the
            gaze-box centre (std ``GAZE_HEATMAP_SIGMA`` of the image) to the keypoint's spatial softmax,
            logged as ``heatmap_loss`` (heatmap supervision, as keypoint detectors train). The L1 on
            the expected (x, y) barely moves a softmax whose mass sits on the wrong object (the right
            object's cells get a gradient proportional to their tiny weight); this loss raises the
            right cells whatever their weight. Needs ``gaze_keypoint_weight`` > 0. 0: off.
        gaze_colour_weight (`float`, defaults to `0.0`):
            Weight of a training-only loss that teaches the instruction encoding what its target looks
            like: a small head on the instruction embedding predicts the mean colour of the gaze box's
            pixels, with two guesses of which the nearer counts (the gaze rests on the object, then on
            its destination), logged as ``colour_loss``. Needs the parallel head and an instruction
            encoding (``vision_film`` or conv keypoints). Learning from the keypoint loss alone which
            words name the target was the bottleneck of the tiny model's gaze (docs/study_recon.md,
            eighth session). 0: off; a finetune may switch it on (the head starts from random weights).
        action_head_state (`bool`, defaults to `False`):
            Parallel head only: the normalised robot state and the keypoints' coordinates also go
            straight into the action MLP beside each query's hidden state (as a robomimic policy gets
            its proprioception), so the chunk is a function of exact geometry, not only of what
            attention over the binned state tokens keeps of it. The state tokens stay in the prompt.
        action_head_mlp (`str`, defaults to `"concat"`):
            The parallel head's MLP. ``concat``: one hidden layer as wide as the LLM over each query's
            hidden state and (``action_head_state``) the geometry side by side. ``bottleneck``: the
            query state narrowed to 32 numbers (LayerNorm + linear), then two 256-wide layers over
            them and the geometry, so the exact geometry, not the wide query state, drives the chunk.
            Fitted afresh on a frozen trunk (``reconvla fit-head``), it completes 1.75 subtasks per
            chain given the true gaze where the concat MLP completes 1.16-1.21 (docs/study_recon.md,
            fourteenth session). A finetune may switch it (the MLP starts from random weights).
        gaze_teacher_forcing (`float`, defaults to `0.0`):
            Training only (``action_head_state`` with a gaze keypoint): the probability that a
            sample's head input gets the gaze-box centre in place of keypoint 0's estimate, so the head
            learns to act on where the gaze is while the keypoint learns to find it; inference always
            uses the estimate. 0: off.
        standardize_head_inputs (`bool`, defaults to `False`):
            ``action_head_state`` only: the geometry input is standardised with the training
            dataset's statistics (state mean / std, gaze-box centre mean / std for every keypoint),
            fixed before training and saved with the weights, so each input moves the MLP as much as
            the hidden states do. Set by ``reconvla train`` from the first dataset's stats.json.
    """

    preset: str = "paper"
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)

    # Actions and proprioception.
    action_dim: int = 7
    state_dim: int = 7
    chunk_size: int = 5
    n_bins: int = 256
    norm_mode: str = "q01_q99"
    action_dim_modes: tuple[str, ...] | None = None
    state_dim_modes: tuple[str, ...] | None = None
    action_mode: str = "absolute"
    delta_action_dims: tuple[int, ...] | None = None
    action_token_offset: int | None = None
    action_head: str = "tokens"

    # Prompt and images.
    system_prompt: str = "A chat between a robot operator and a robot policy that outputs arm actions."
    stitch_top_fraction: float = 14 / 27  # base view on top, wrist view below

    # Reconstruction branch (training only).
    recon_target: str = "gaze"
    recon_weight: float = 1.0
    num_noise_draws: int = 4
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    gaze_sample_steps: int = 10

    # Inference extras.
    attention_layers: tuple[int, ...] | None = None

    # Local weight directories (never downloaded), read by ReconVLA.from_backbones.
    llm_path: str | None = None
    vision_path: str | None = None
    llava_path: str | None = None
    vae_path: str | None = None
    tokenizer_path: str | None = None

    # Experimental / training-from-scratch options (all off = the paper's model; see the docstring).
    train_vision: bool = False
    projector_input_norm: bool = False
    action_embedding_init: str = "random"
    answer_box: bool = False
    vision_film: bool = False
    spatial_keypoints: int = 0
    keypoint_encoder: str = "vision"
    keypoint_state: bool = False
    gaze_keypoint_weight: float = 0.0
    gaze_heatmap_weight: float = 0.0
    gaze_colour_weight: float = 0.0
    action_head_state: bool = False
    action_head_mlp: str = "concat"
    gaze_teacher_forcing: float = 0.0
    standardize_head_inputs: bool = False

    def __post_init__(self) -> None:
        for name, cls in _NESTED.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _from_dict(cls, value, prefix=name))
        for name in ("action_dim_modes", "state_dim_modes", "attention_layers", "delta_action_dims"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(value))
        self.validate()

    # Derived sizes -------------------------------------------------------------------------
    @property
    def encodes_instruction(self) -> bool:
        """Whether the model runs the LLM over the instruction alone (vision FiLM, conv keypoints)."""
        return self.vision_film or (self.spatial_keypoints > 0 and self.keypoint_encoder == "conv")

    @property
    def grid_size(self) -> int:
        return self.vision.grid_size

    @property
    def num_image_tokens(self) -> int:
        return self.vision.num_image_tokens

    @property
    def action_tokens_per_chunk(self) -> int:
        return self.chunk_size * self.action_dim

    @property
    def box_tokens(self) -> int:
        """Tokens of the gaze box that starts the answer (0 unless ``answer_box``)."""
        return BOX_TOKENS if self.answer_box else 0

    @property
    def answer_tokens_per_chunk(self) -> int:
        """Tokens decoded per chunk: the box (if any), then the actions (the EOS is not decoded)."""
        return self.box_tokens + self.action_tokens_per_chunk

    @property
    def first_action_token_id(self) -> int:
        if self.action_token_offset is not None:
            return self.action_token_offset
        return self.llm.vocab_size - self.n_bins

    @property
    def latent_token_dim(self) -> int:
        """Channels of one packed latent token (2x2 latent pixels)."""
        return 4 * self.vae.latent_channels

    @property
    def builds_reconstruction(self) -> bool:
        return self.recon_target != "none"

    @property
    def relative_dims(self) -> tuple[int, ...]:
        """The action dims encoded relative to the state (empty in absolute mode)."""
        if self.action_mode != "delta":
            return ()
        if self.delta_action_dims is not None:
            return tuple(self.delta_action_dims)
        return tuple(range(self.action_dim - 1))

    def dim_modes(self, which: str) -> tuple[str, ...]:
        modes = self.action_dim_modes if which == "action" else self.state_dim_modes
        size = self.action_dim if which == "action" else self.state_dim
        return modes if modes is not None else ("normalize",) * size

    # Validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        for name in _NESTED:
            getattr(self, name).validate()
        _positive(self, "action_dim", "state_dim", "chunk_size", "n_bins", "num_noise_draws",
                  "num_train_timesteps", "gaze_sample_steps")
        if self.recon_target not in RECON_TARGETS:
            raise ValueError(f"recon_target must be one of {RECON_TARGETS}, got {self.recon_target!r}")
        if self.norm_mode not in NORM_MODES:
            raise ValueError(f"norm_mode must be one of {NORM_MODES}, got {self.norm_mode!r}")
        if self.action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {self.action_mode!r}")
        if self.action_head not in ACTION_HEADS:
            raise ValueError(f"action_head must be one of {ACTION_HEADS}, got {self.action_head!r}")
        if self.action_head == "parallel" and self.answer_box:
            raise ValueError("answer_box is a token-head answer format; the parallel head answers with actions only "
                             "(set answer_box: false or action_head: tokens)")
        if not isinstance(self.spatial_keypoints, int) or isinstance(self.spatial_keypoints, bool) \
                or self.spatial_keypoints < 0:
            raise ValueError(f"spatial_keypoints must be an integer >= 0, got {self.spatial_keypoints!r}")
        if self.keypoint_encoder not in KEYPOINT_ENCODERS:
            raise ValueError(f"keypoint_encoder must be one of {KEYPOINT_ENCODERS}, got {self.keypoint_encoder!r}")
        if self.keypoint_state and not (self.spatial_keypoints and self.keypoint_encoder == "conv"):
            raise ValueError("keypoint_state conditions the conv keypoint net: set spatial_keypoints >= 1 and "
                             "keypoint_encoder: conv")
        if self.spatial_keypoints and self.action_head != "parallel":
            raise ValueError("spatial_keypoints feed the parallel head's action queries: set action_head: parallel")
        for name in ("gaze_keypoint_weight", "gaze_heatmap_weight", "gaze_colour_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value < float("inf")):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.gaze_heatmap_weight > 0 and not self.gaze_keypoint_weight > 0:
            raise ValueError("gaze_heatmap_weight adds to keypoint 0's gaze supervision: set gaze_keypoint_weight > 0")
        if self.gaze_colour_weight > 0 and not (self.action_head == "parallel" and self.encodes_instruction):
            raise ValueError("gaze_colour_weight trains the instruction encoding: it needs action_head: parallel and "
                             "vision_film: true or keypoint_encoder: conv")
        if not (isinstance(self.gaze_teacher_forcing, (int, float)) and 0.0 <= self.gaze_teacher_forcing <= 1.0):
            raise ValueError(f"gaze_teacher_forcing must be a probability in [0, 1], got {self.gaze_teacher_forcing!r}")
        if self.gaze_teacher_forcing > 0 and not (self.action_head_state and self.gaze_keypoint_weight > 0):
            raise ValueError("gaze_teacher_forcing replaces keypoint 0 in the head's input: set action_head_state: "
                             "true and gaze_keypoint_weight > 0")
        if self.standardize_head_inputs and not self.action_head_state:
            raise ValueError("standardize_head_inputs standardises the head's geometry input: set action_head_state: true")
        if self.action_head_mlp not in ACTION_HEAD_MLPS:
            raise ValueError(f"action_head_mlp must be one of {ACTION_HEAD_MLPS}, got {self.action_head_mlp!r}")
        if self.action_head_mlp == "bottleneck" and not self.action_head_state:
            raise ValueError("action_head_mlp: bottleneck feeds the geometry through its own layers: set "
                             "action_head_state: true")
        if self.action_head_state and self.action_head != "parallel":
            raise ValueError("action_head_state feeds the parallel head's MLP: set action_head: parallel")
        if self.gaze_keypoint_weight > 0 and not self.spatial_keypoints:
            raise ValueError("gaze_keypoint_weight supervises keypoint 0: set spatial_keypoints >= 1")
        if self.action_embedding_init not in ACTION_EMBEDDING_INITS:
            raise ValueError(f"action_embedding_init must be one of {ACTION_EMBEDDING_INITS}, "
                             f"got {self.action_embedding_init!r}")
        if self.delta_action_dims is not None:
            dims = self.delta_action_dims
            limit = min(self.action_dim, self.state_dim)
            if (any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < limit for i in dims)
                    or len(set(dims)) != len(dims)):
                raise ValueError(f"delta_action_dims must list distinct dims in [0, {limit}), got {dims!r}")
        for name, size in (("action_dim_modes", self.action_dim), ("state_dim_modes", self.state_dim)):
            modes = getattr(self, name)
            if modes is None:
                continue
            if len(modes) != size or any(m not in DIM_MODES for m in modes):
                raise ValueError(f"{name} must list {size} entries from {DIM_MODES}, got {modes!r}")
        if self.recon_weight < 0:
            raise ValueError(f"recon_weight must be >= 0, got {self.recon_weight}")
        if not 0.0 < self.stitch_top_fraction < 1.0:
            raise ValueError(f"stitch_top_fraction must be in (0, 1), got {self.stitch_top_fraction}")
        first = self.first_action_token_id
        if first < 0 or first + self.n_bins > self.llm.vocab_size:
            raise ValueError(f"action tokens [{first}, {first + self.n_bins}) do not fit in llm.vocab_size "
                             f"({self.llm.vocab_size}); check action_token_offset / n_bins")
        if self.builds_reconstruction and self.vae.latent_size != 2 * self.grid_size:
            raise ValueError(
                f"vae.image_size {self.vae.image_size} gives {self.vae.latent_size}x{self.vae.latent_size} "
                f"latents but 2x2 packing onto the {self.grid_size}x{self.grid_size} image-token grid needs "
                f"{2 * self.grid_size}x{2 * self.grid_size}: set vae.image_size to "
                f"{2 * self.grid_size * self.vae.downsample}")
        if self.attention_layers is not None:
            n = self.llm.num_hidden_layers
            bad = [i for i in self.attention_layers if not -n <= i < n]
            if bad or not self.attention_layers:
                raise ValueError(f"attention_layers {self.attention_layers} must index the {n} LLM layers")

    # Construction and serialisation --------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ReconVLAConfig:
        """A preset with overrides: top-level fields by name, nested ones as dicts (``llm={...}``)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        base = PRESETS[name]()
        return base.replace(**overrides)

    def replace(self, **overrides: Any) -> ReconVLAConfig:
        """A copy with some fields changed; nested dicts are merged into the nested configs."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown ReconVLAConfig field(s): {', '.join(unknown)}")
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            if key in _NESTED and isinstance(value, dict):
                current = dataclasses.asdict(getattr(self, key))
                bad = sorted(set(value) - set(current))
                if bad:
                    raise ValueError(f"unknown {key} config field(s): {', '.join(bad)}")
                current.update(value)
                value = _from_dict(_NESTED[key], current, prefix=key)
            changes[key] = value
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["model_type"] = "reconvla"
        data["format_version"] = CONFIG_FORMAT_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReconVLAConfig:
        data = dict(data)
        data.pop("model_type", None)
        data.pop("format_version", None)
        for name in REMOVED_TRAINING_OPTIONS:
            data.pop(name, None)
        for name in removed_model_options(data):
            data.pop(name)
        return _from_dict(cls, data, prefix="config")

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def removed_model_options(data: dict[str, Any]) -> list[str]:
    """The REMOVED_MODEL_OPTIONS that a config mapping names, all off (to be dropped); a ValueError
    naming the option if one is on."""
    for name in REMOVED_MODEL_OPTIONS:
        if data.get(name, 0) != 0:
            raise ValueError(f"{name}={data[name]!r}: this option was removed (docs/study_recon.md: it did not "
                             "help), and a model with it on cannot be built or loaded any more; remove it or set "
                             "it to 0")
    return [name for name in REMOVED_MODEL_OPTIONS if name in data]


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown {prefix} field(s): {', '.join(unknown)}")
    kwargs = {}
    for key, value in data.items():
        if isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}")


def _paper() -> ReconVLAConfig:
    return ReconVLAConfig(preset="paper")


def _tiny() -> ReconVLAConfig:
    return ReconVLAConfig(
        preset="tiny",
        vision=VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                            image_size=112, patch_size=14),
        # 256 byte tokens + 4 special tokens of the local tokenizer, then 256 action ids at the end.
        llm=LLMConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=520, max_position_embeddings=2048, rope_theta=10000.0),
        vae=VAEConfig(latent_channels=4, block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
                      scaling_factor=0.18215, shift_factor=None, image_size=64),
        denoiser=DenoiserConfig(depth=2, width=64, num_heads=4, timestep_freq_dim=64),
        system_prompt="Robot policy.",
    )


PRESETS = {"paper": _paper, "tiny": _tiny}
