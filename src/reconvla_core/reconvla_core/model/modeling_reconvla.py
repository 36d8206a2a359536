"""ReconVLA: SigLIP (frozen, penultimate layer) -> projector -> Qwen2, plus the training-only
reconstruction branch (see reconstruction.py).

``model(batch)`` returns the training losses; ``predict_action`` decodes one action chunk.
Weights: ``ReconVLA(config)`` is a random model (no I/O); ``from_pretrained`` loads our
checkpoints or a LLaVA-style directory; ``from_backbones`` loads Qwen2 / SigLIP / VAE directories.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from reconvla_core.model.action_tokenizer import check_array
from reconvla_core.model.configuration_reconvla import GAZE_HEATMAP_SIGMA, ReconVLAConfig
from reconvla_core.model.checkpoint import PreTrainedReconVLA
from reconvla_core.model.decoding import ActionDecoder, naive_generate
from reconvla_core.model.heads import (GazeColourHead, ParallelActionHead, VisionFiLM, chunk_attention_mask,
                                       mean_over_valid)
from reconvla_core.model.keypoints import (ConvKeypoints, SpatialKeypoints, build_keypoints,  # noqa: F401 (re-exported)
                                           expected_points, heatmap_divergence)
from reconvla_core.model.processing_reconvla import IGNORE_INDEX, ReconVLAProcessor
from reconvla_core.model.tokenization import build_byte_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class ReconVLAOutput:
    """Losses of one forward pass. ``recon_loss`` is None when nothing is reconstructed."""

    loss: torch.Tensor | None
    action_loss: torch.Tensor | None
    recon_loss: torch.Tensor | None
    action_accuracy: torch.Tensor | None
    grounding_loss: torch.Tensor | None = None  # only with gaze_keypoint_weight > 0
    heatmap_loss: torch.Tensor | None = None  # only with gaze_heatmap_weight > 0
    colour_loss: torch.Tensor | None = None  # only with gaze_colour_weight > 0


@dataclass
class ActionPrediction:
    """One inference: (K, action_dim) actions in robot units, the answer's gaze box (normalised xyxy of
    the base view; None unless ``answer_box``), the (grid, grid) attention map when asked, and keypoint 0
    (the gaze point the head acted on, (x, y) in the model-input frame; None without keypoints)."""

    actions: np.ndarray
    box: np.ndarray | None = None
    attention: np.ndarray | None = None
    gaze_point: np.ndarray | None = None


# Metrics a forward pass reports (training logs and validation read them by these names).
LOSS_KEYS: tuple[str, ...] = ("loss", "action_loss", "recon_loss", "action_accuracy", "grounding_loss", "heatmap_loss",
                              "colour_loss")


def build_vision_tower(config: ReconVLAConfig) -> SiglipVisionModel:
    """SigLIP encoder truncated after the feature layer (the layers after it are never run)."""
    v = config.vision
    hf_config = SiglipVisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers_kept,
        num_attention_heads=v.num_attention_heads, image_size=v.image_size, patch_size=v.patch_size,
        layer_norm_eps=v.layer_norm_eps, vision_use_head=False, attn_implementation="sdpa")
    return SiglipVisionModel(hf_config)


def build_llm(config: ReconVLAConfig, pad_token_id: int | None = None, eos_token_id: int | None = None) -> Qwen2ForCausalLM:
    c = config.llm
    hf_config = Qwen2Config(
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
        vocab_size=c.vocab_size, max_position_embeddings=c.max_position_embeddings, rope_theta=c.rope_theta,
        rms_norm_eps=c.rms_norm_eps, tie_word_embeddings=c.tie_word_embeddings, pad_token_id=pad_token_id,
        eos_token_id=eos_token_id, attn_implementation="sdpa")
    return Qwen2ForCausalLM(hf_config)


def build_projector(config: ReconVLAConfig) -> nn.Sequential:
    """LLaVA's two-layer MLP (projector.0 / .2 hold LLaVA's linear_1 / linear_2), initialised like the
    LLM's own linear layers (normal, std 0.02, zero bias) so fresh image tokens start at the scale of
    the text embeddings instead of dwarfing them."""
    d_vision, d_llm = config.vision.hidden_size, config.llm.hidden_size
    return nn.Sequential(init_like_llm(nn.Linear(d_vision, d_llm)), nn.GELU(), init_like_llm(nn.Linear(d_llm, d_llm)))


def init_like_llm(layer: nn.Linear) -> nn.Linear:
    """A fresh linear layer initialised as the LLM's own (normal, std 0.02, zero bias)."""
    nn.init.normal_(layer.weight, std=0.02)
    nn.init.zeros_(layer.bias)
    return layer


def build_projector_norm(config: ReconVLAConfig) -> nn.Module:
    """LayerNorm on the vision features before the projector when the config asks for it."""
    return nn.LayerNorm(config.vision.hidden_size) if config.projector_input_norm else nn.Identity()


@torch.no_grad()
def init_action_rows_sinusoidal(llm: Qwen2ForCausalLM, config: ReconVLAConfig) -> None:
    """Action-bin rows of the embedding table and LM head as sin/cos features of the bin value.

    Bin b stands for v_b in [-1, 1]; its row is [sin(pi f_i v_b), cos(pi f_i v_b)] over D/2
    frequencies f_i from 1/2 to n_bins/16 (geometric: neighbouring bins start with cosine
    similarity ~0.99, bins 8 apart ~0.5), scaled to the table's own std. Similar values get
    similar rows, so magnitudes are known before any training.
    """
    first, n = config.first_action_token_id, config.n_bins
    values = torch.linspace(-1.0 + 1.0 / n, 1.0 - 1.0 / n, n)  # the bin centres
    for weight in (llm.get_input_embeddings().weight, llm.get_output_embeddings().weight):
        if weight.is_meta:  # a skeleton that a checkpoint is about to fill: nothing to initialise
            continue
        rows, dim = weight[first:first + n], weight.shape[1]
        freqs = torch.logspace(math.log10(0.5), math.log10(max(1.0, n / 16)), (dim + 1) // 2)
        angles = math.pi * values[:, None] * freqs[None, :]
        features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)[:, :dim]
        features = features / features.std() * weight.float().std().clamp(min=1e-6)
        rows.copy_(features.to(weight.dtype))


class ReconVLA(PreTrainedReconVLA):
    """The vision-language-action model with its (optional) reconstruction branch."""

    def __init__(self, config: ReconVLAConfig, tokenizer: Any = None, build_reconstruction: bool = True) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer if tokenizer is not None else build_byte_tokenizer()
        self.processor = ReconVLAProcessor(config, self.tokenizer)
        self.vision = build_vision_tower(config)
        self.set_vision_trainable(config.train_vision)
        self.vision.eval()
        self.projector_norm = build_projector_norm(config)
        self.projector = build_projector(config)
        self.llm = build_llm(config, self.processor.pad_token_id, self.processor.eos_token_id)
        if config.action_embedding_init == "sinusoidal":
            init_action_rows_sinusoidal(self.llm, config)
        paths = [name for name in ("llm_path", "vision_path", "llava_path", "vae_path") if getattr(config, name)]
        if paths:
            logger.warning("config names %s but ReconVLA(config) builds random weights; load them with "
                           "ReconVLA.from_backbones(config)", ", ".join(paths))
        self.action_head = ParallelActionHead(config) if config.action_head == "parallel" else None
        self.vision_film = VisionFiLM(config) if config.vision_film else None
        self.keypoints = build_keypoints(config)
        self.gaze_colour = GazeColourHead(config) if config.gaze_colour_weight > 0 else None
        self.reconstruction: nn.Module | None = None
        if build_reconstruction and config.builds_reconstruction:
            from reconvla_core.model.reconstruction import ReconstructionBranch  # imports diffusers

            self.reconstruction = ReconstructionBranch(config)

    # Loading / saving: from_pretrained, from_backbones, save_pretrained (PreTrainedReconVLA) -------
    @staticmethod
    def build_projector_modules(config: ReconVLAConfig) -> tuple[nn.Module, nn.Module]:
        return build_projector(config), build_projector_norm(config)

    def switch_option(self, name: str, value: Any) -> None:
        """Change one of the SWITCHABLE_OPTIONS of a built model (a finetune may): the module it selects
        is rebuilt with fresh weights; ``keypoint_encoder`` keeps the coordinate embedding, so the
        action queries read the new keypoints as they read the old ones."""
        if name == "gaze_colour_weight":  # a training-only head: built fresh when switched on, dropped when off
            self.config.gaze_colour_weight = value
            self.config.validate()
            if value > 0 and self.gaze_colour is None:
                reference = self.llm.get_input_embeddings().weight
                self.gaze_colour = GazeColourHead(self.config).to(device=reference.device, dtype=reference.dtype)
            elif value == 0:
                self.gaze_colour = None
            return
        if name == "action_head_mlp":  # the MLP starts afresh; the queries and geometry stats stay
            self.config.action_head_mlp = value
            self.config.validate()
            if self.action_head is None:
                raise ValueError("action_head_mlp: this model has no parallel action head")
            self.action_head.rebuild_mlp(self.config)
            return
        if name == "keypoint_state":  # the state's FiLM layers start at zero; off drops them
            self.config.keypoint_state = bool(value)
            self.config.validate()
            if value and self.keypoints.stem_state is None:
                reference = self.keypoints.stem_film.weight
                self.keypoints.add_state_film(self.config)
                self.keypoints.to(device=reference.device, dtype=reference.dtype)
            elif not value:
                self.keypoints.remove_state_film()
            return
        if name != "keypoint_encoder":
            raise ValueError(f"{name!r} cannot be switched on a built model")
        old = self.keypoints
        if old is None:
            raise ValueError("keypoint_encoder: this model has no spatial keypoints to encode")
        self.config.keypoint_encoder = value
        self.config.validate()
        new = build_keypoints(self.config)
        new.embed.load_state_dict(old.embed.state_dict())
        self.keypoints = new.to(device=old.embed.weight.device, dtype=old.embed.weight.dtype)
        self.__dict__.pop("_instruction_cache", None)

    # Surface used by training and the runtime -----------------------------------------------
    def set_norm_stats(self, stats: Mapping[str, Any]) -> None:
        """LeRobot stats.json dict with 'action' and 'observation.state' entries; saved with the model."""
        self.processor.set_norm_stats(stats)

    @property
    def norm_stats(self) -> dict[str, Any] | None:
        return self.processor.norm_stats

    def standardize_head_inputs(self, stats: Mapping[str, Any]) -> dict[str, list[float]]:
        """Set the head's geometry standardisation (``standardize_head_inputs``) from a dataset's
        stats.json: the normalised state's mean / std (its 'observation.state' entry through the
        state normaliser) and, for every keypoint, the gaze-box centre's (its 'observation.gaze_box'
        entry in the model-input frame; keypoints live in that frame too). Returns the values set."""
        if self.action_head is None or not hasattr(self.action_head, "geometry_shift"):
            raise ValueError("standardize_head_inputs needs action_head: parallel, action_head_state and "
                             "standardize_head_inputs: true")
        _, state_norm = self.processor.normalizers(stats)
        entry = stats["observation.state"]
        mean, std = np.asarray(entry["mean"], np.float64), np.asarray(entry["std"], np.float64)
        state_mean = state_norm.normalize(mean)
        state_std = np.abs(state_norm.normalize(mean + std) - state_mean)
        shift, scale = [state_mean], [state_std]
        if self.config.spatial_keypoints:
            if "observation.gaze_box" not in stats:
                raise ValueError("standardize_head_inputs with spatial keypoints needs the dataset's "
                                 "'observation.gaze_box' stats (datasets built by `reconvla dataset build` have them)")
            box = stats["observation.gaze_box"]
            # xyxy (a fifth entry, when present, is the box's validity flag)
            box_mean, box_std = np.asarray(box["mean"], np.float64)[:4], np.asarray(box["std"], np.float64)[:4]
            # The centre is affine in the box: its spread is at most the mean of the two edges' spreads.
            centre_std = 0.5 * np.array([box_std[0] + box_std[2], box_std[1] + box_std[3]]) * self.processor.base_view_scale
            point_mean = self.processor.gaze_point(np.clip(box_mean, 0.0, 1.0))
            for _ in range(self.config.spatial_keypoints):
                shift.append(point_mean)
                scale.append(centre_std)
        shift_all, scale_all = np.concatenate(shift), np.concatenate(scale)
        scale_all = np.where(scale_all > 1e-3, scale_all, 1.0)  # a constant input (a fixed joint) stays as it is
        self.action_head.set_geometry_stats(torch.from_numpy(shift_all), torch.from_numpy(scale_all))
        return {"shift": shift_all.round(4).tolist(), "scale": scale_all.round(4).tolist()}

    def vision_parameters(self) -> list[nn.Parameter]:
        """The tower parameters that shape the features: patch/position embeddings and the kept layers
        (the post-layernorm is never applied: the features are the feature layer's raw output)."""
        return [*self.vision.embeddings.parameters(), *self.vision.encoder.parameters()]

    def set_vision_trainable(self, trainable: bool) -> None:
        self.vision.requires_grad_(False)
        for param in self.vision_parameters():
            param.requires_grad_(trainable)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part (the VAE is frozen; the vision tower unless ``train_vision``)."""
        denoiser = [] if self.reconstruction is None else self.reconstruction.denoiser.parameters()
        head = [*(() if self.action_head is None else self.action_head.parameters()),
                *(() if self.gaze_colour is None else self.gaze_colour.parameters())]
        llm = list(self.llm.parameters())
        if self.action_head is not None and not self.config.llm.tie_word_embeddings:
            # The parallel head never uses the LM head: leaving it out keeps DDP from waiting for its grads.
            unused = {id(p) for p in self.llm.get_output_embeddings().parameters()}
            llm = [p for p in llm if id(p) not in unused]
        film = [*(() if self.vision_film is None else self.vision_film.parameters()),
                *(() if self.keypoints is None else self.keypoints.parameters())]
        groups = {
            "llm": [p for p in (*llm, *head) if p.requires_grad],
            "projector": [p for p in (*self.projector_norm.parameters(), *self.projector.parameters(), *film)
                          if p.requires_grad],
            "denoiser": [p for p in denoiser if p.requires_grad],
        }
        if self.config.train_vision:
            groups["vision"] = self.vision_parameters()
        return groups

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Activation checkpointing of the LLM layers (transformers >= 5.20 renamed the method)."""
        kwargs = gradient_checkpointing_kwargs or {"use_reentrant": False}
        if hasattr(self.llm, "activation_checkpointing_enable"):
            self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def gradient_checkpointing_disable(self) -> None:
        if hasattr(self.llm, "activation_checkpointing_disable"):
            self.llm.activation_checkpointing_disable()
        else:
            self.llm.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.llm.modules())

    def train(self, mode: bool = True) -> ReconVLA:
        super().train(mode)
        self.__dict__.pop("_instruction_cache", None)
        self.vision.eval()  # SigLIP has no dropout or batch norm: eval mode only keeps a frozen tower inert
        return self

    @property
    def device(self) -> torch.device:
        return self.projector[0].weight.device

    # Forward ---------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor, instruction_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, S, S) -> projected image tokens (B, N, D_llm). A frozen vision tower runs without grad.
        With vision FiLM, ``instruction_embedding`` (B, D_llm) scales and shifts every block's output."""
        return self.project(self.vision_features(pixel_values, instruction_embedding))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Vision features (B, N, D_vision) -> image tokens (B, N, D_llm)."""
        return self.projector(self.projector_norm(features.to(self.projector[0].weight.dtype)))

    def vision_features(self, pixel_values: torch.Tensor, instruction_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, S, S) -> the feature layer's output (B, N, D_vision), FiLM-modulated when configured."""
        dtype = self.vision.embeddings.patch_embedding.weight.dtype
        if self.vision_film is not None:
            if instruction_embedding is None:
                raise ValueError("vision_film needs the pooled instruction embedding (batch['instruction_mask'])")
            scales, shifts = self.vision_film(instruction_embedding.to(self.vision_film.proj.weight.dtype))
            # The blocks run one by one so each output is modulated; a frozen tower's weights get no
            # grads (requires_grad is off) but the FiLM parameters before them do.
            features = self.vision.embeddings(pixel_values.to(dtype))
            for layer, scale, shift in zip(self.vision.encoder.layers, scales, shifts):
                features = layer(features, attention_mask=None)
                features = features * (1.0 + scale.to(dtype)) + shift.to(dtype)
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.train_vision):
                out = self.vision(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
                features = out.hidden_states[-1]  # (B, N, D_vision): output of the feature layer, no post-norm
        return features

    def embed_inputs(self, input_ids: torch.Tensor, image_mask: torch.Tensor, pixel_values: torch.Tensor,
                     instruction_mask: torch.Tensor | None = None,
                     query_mask: torch.Tensor | None = None, state: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the projected image features at the image positions (and the learned
        action queries at the query positions of the parallel head): (B, L, D). ``state``: the
        normalised state, which ``keypoint_state`` models need."""
        return self._embed(input_ids, image_mask, pixel_values, instruction_mask, query_mask, state=state)[0]

    def _embed(self, input_ids: torch.Tensor, image_mask: torch.Tensor, pixel_values: torch.Tensor,
               instruction_mask: torch.Tensor | None, query_mask: torch.Tensor | None,
               instruction_embedding: torch.Tensor | None = None,
               gaze_point: torch.Tensor | None = None, state: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``embed_inputs``, the spatial keypoints (B, K, 2) and their softmax heat maps (B, K, cells)
        when configured (else None); a given ``gaze_point`` (B, 2) replaces keypoint 0 (an external gaze:
        a detector, or the twin's truth)."""
        embeds = self.llm.get_input_embeddings()(input_ids)  # (B, L, D)
        pooled = instruction_embedding
        if self.config.encodes_instruction and pooled is None:
            if instruction_mask is None:
                raise ValueError("vision FiLM and conv keypoints need batch['instruction_mask']; build the "
                                 "batch with model.processor")
            pooled = self.encode_instruction(input_ids, instruction_mask)
        features = self.vision_features(pixel_values, pooled)
        keypoints = heatmap = None  # (B, K, 2), (B, K, cells)
        if isinstance(self.keypoints, ConvKeypoints):
            heatmap = self.keypoints.heatmap(pixel_values, pooled, state)
        elif self.keypoints is not None:
            heatmap = self.keypoints.heatmap(features)
        if heatmap is not None:
            keypoints = expected_points(heatmap, self.keypoints.coords)
        if gaze_point is not None:
            if keypoints is None:
                raise ValueError("a gaze point replaces keypoint 0: this model has no spatial keypoints")
            keypoints = keypoints.clone()
            keypoints[:, 0] = gaze_point.to(keypoints.dtype)
        image_embeds = self.project(features)  # (B, N, D)
        b, n, _ = image_embeds.shape
        if int(image_mask.sum()) != b * n:
            raise ValueError(f"batch has {int(image_mask.sum())} image positions, expected {b} x {n}")
        embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), image_embeds.to(embeds.dtype))
        if self.action_head is not None:
            if query_mask is None:
                raise ValueError("the parallel head needs batch['action_query_mask']; build it with model.processor")
            k = self.config.chunk_size
            if int(query_mask.sum()) != b * k:
                raise ValueError(f"batch has {int(query_mask.sum())} action-query positions, expected {b} x {k}")
            queries = self.action_head.queries.to(embeds.dtype).expand(b, k, -1)
            if keypoints is not None:  # every query starts from the keypoint coordinates
                points = keypoints.reshape(b, -1).to(self.keypoints.embed.weight.dtype)
                queries = queries + self.keypoints.embed(points).to(embeds.dtype)[:, None, :]
            embeds = embeds.masked_scatter(query_mask.unsqueeze(-1), queries)
        return embeds, keypoints, heatmap

    def encode_instruction(self, input_ids: torch.Tensor, instruction_mask: torch.Tensor) -> torch.Tensor:
        """(B, D) instruction embedding for vision FiLM: the LLM run over the instruction's tokens alone,
        read at its last token. A contextual encoding, not a mean of token embeddings: with byte-level
        tokens a mean is a bag of letters that cannot tell "stack red on blue" from "stack blue on red"."""
        lengths = instruction_mask.sum(dim=1)
        if bool((lengths == 0).any()):
            raise ValueError("every row needs instruction tokens (batch['instruction_mask'])")
        width = int(lengths.max())
        # Positions of each row's instruction tokens, in order, padded on the right.
        order = torch.argsort((~instruction_mask).to(torch.int8), dim=1, stable=True)[:, :width]
        ids = torch.gather(input_ids, 1, order)
        valid = torch.arange(width, device=ids.device)[None] < lengths[:, None]
        hidden = self.llm.get_decoder()(inputs_embeds=self.llm.get_input_embeddings()(ids),
                                        attention_mask=valid.long(), use_cache=False).last_hidden_state
        return hidden[torch.arange(ids.shape[0], device=ids.device), lengths - 1]  # (B, D)

    def run_parallel(self, embeds: torch.Tensor, attention_mask: torch.Tensor, query_mask: torch.Tensor,
                     output_attentions: bool = False,
                     geometry: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """One decoder pass of the parallel head: (all hidden states, (B, K, action_dim) normalised
        actions, the attentions when asked). ``geometry``: ``head_geometry``'s output (action_head_state)."""
        mask = chunk_attention_mask(attention_mask, query_mask, embeds.dtype)
        out = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=mask, use_cache=False,
                                     output_attentions=output_attentions)
        hidden = out.last_hidden_state
        b, k = hidden.shape[0], self.config.chunk_size
        actions = self.action_head(hidden[query_mask].view(b, k, -1), geometry)
        return hidden, actions, out.attentions if output_attentions else None

    def _teacher_forced(self, keypoints: torch.Tensor | None, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Keypoints for the head's input at training: keypoint 0 replaced by the gaze-box centre in a
        random ``gaze_teacher_forcing`` share of the rows that have a box (gradients still reach the
        keypoints through the queries and the gaze loss)."""
        p = self.config.gaze_teacher_forcing
        if not (self.training and p > 0 and keypoints is not None and "gaze_point" in batch):
            return keypoints
        rows = (torch.rand(keypoints.shape[0], device=keypoints.device) < p) & batch["gaze_valid"].bool()
        forced = keypoints.clone()
        forced[rows, 0] = batch["gaze_point"][rows].to(forced.dtype)
        return forced

    def head_geometry(self, state: torch.Tensor | None, keypoints: torch.Tensor | None) -> torch.Tensor | None:
        """(B, state_dim + 2 * keypoints) exact geometry for the action MLP (action_head_state), else None."""
        if not self.config.action_head_state:
            return None
        if state is None:
            raise ValueError("action_head_state needs batch['state'] (the normalised state); build it with "
                             "model.processor")
        parts = [state.float()]
        if keypoints is not None:
            parts.append(keypoints.reshape(keypoints.shape[0], -1).float())
        return torch.cat(parts, dim=-1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> ReconVLAOutput:
        """Action loss (token head: CE over the action tokens + EOS; parallel head: L1 on the continuous
        chunk) + recon_weight * reconstruction loss (+ gaze_keypoint_weight * keypoint loss
        + gaze_heatmap_weight * heat-map loss + gaze_colour_weight * colour loss)."""
        for key in ("input_ids", "attention_mask", "image_mask", "pixel_values"):
            if key not in batch:
                raise ValueError(f"batch lacks {key!r}; build it with model.processor and processor.collate")
        device = self.device
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        input_ids = batch["input_ids"]
        instruction = None  # encoded here only when a loss reads it besides the vision
        if self.gaze_colour is not None and "gaze_colour" in batch:
            instruction = self.encode_instruction(input_ids, batch["instruction_mask"])
        embeds, keypoints, heatmap = self._embed(input_ids, batch["image_mask"], batch["pixel_values"],
                                                 batch.get("instruction_mask"), batch.get("action_query_mask"),
                                                 instruction_embedding=instruction, state=batch.get("state"))
        action_loss = action_accuracy = grounding_loss = heatmap_loss = colour_loss = None
        if instruction is not None:
            colour_loss = self.gaze_colour.loss(self.gaze_colour(instruction), batch["gaze_colour"],
                                                batch["gaze_valid"])
        if self.action_head is not None:
            geometry = self.head_geometry(batch.get("state"), self._teacher_forced(keypoints, batch))
            hidden, predicted, _ = self.run_parallel(embeds, batch["attention_mask"], batch["action_query_mask"],
                                                     geometry=geometry)
            if "actions" in batch:
                action_loss = self._l1_action_loss(predicted, batch["actions"], batch.get("action_is_pad"))
            if self.config.gaze_keypoint_weight > 0 and "gaze_point" in batch:
                grounding_loss = self._gaze_keypoint_loss(keypoints, batch["gaze_point"], batch["gaze_valid"])
                if self.config.gaze_heatmap_weight > 0:
                    heatmap_loss = self._gaze_heatmap_loss(heatmap, batch["gaze_point"], batch["gaze_valid"])
        else:
            hidden = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                            use_cache=False).last_hidden_state  # (B, L, D), after the final norm
            if "labels" in batch:
                action_loss, action_accuracy = self._action_loss(hidden, batch["labels"])
        recon_loss = None
        if self.reconstruction is not None and "recon_pixel_values" in batch:
            b, n = hidden.shape[0], self.config.num_image_tokens
            h_r = hidden[batch["image_mask"]].view(b, n, -1)  # (B, N, D): no stop-gradient
            recon_loss = self.reconstruction.loss(h_r, batch["recon_pixel_values"])
        loss = action_loss
        if loss is not None and recon_loss is not None:
            loss = loss + self.config.recon_weight * recon_loss
        if loss is not None and grounding_loss is not None:
            loss = loss + self.config.gaze_keypoint_weight * grounding_loss
        if loss is not None and heatmap_loss is not None:
            loss = loss + self.config.gaze_heatmap_weight * heatmap_loss
        if loss is not None and colour_loss is not None:
            loss = loss + self.config.gaze_colour_weight * colour_loss
        return ReconVLAOutput(loss=loss, action_loss=action_loss, recon_loss=recon_loss,
                              action_accuracy=action_accuracy, grounding_loss=grounding_loss,
                              heatmap_loss=heatmap_loss, colour_loss=colour_loss)

    @staticmethod
    def _l1_action_loss(predicted: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor | None) -> torch.Tensor:
        """Mean absolute error over the chunk's real steps (steps past an episode's end do not count)."""
        error = (predicted.float() - target.float()).abs().mean(dim=-1)  # (B, K)
        keep = torch.ones_like(error) if is_pad is None else (~is_pad.bool()).float()
        return (error * keep).sum() / keep.sum().clamp(min=1.0)

    @staticmethod
    def _gaze_keypoint_loss(keypoints: torch.Tensor, point: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """L1 between keypoint 0 and the gaze-box centre (model-input frame); frames without a box count zero."""
        per_row = (keypoints[:, 0] - point.float()).abs().sum(dim=-1)
        return mean_over_valid(per_row, valid)

    def _gaze_heatmap_loss(self, heatmap: torch.Tensor, point: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Keypoint 0's heat map against a Gaussian at the gaze-box centre (KL); frames without a box count zero."""
        per_row = heatmap_divergence(heatmap[:, 0], self.keypoints.coords, point, GAZE_HEATMAP_SIGMA)
        return mean_over_valid(per_row, valid)

    def _action_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CE over the full vocabulary, computed only where labels are set (shifted by one)."""
        targets = labels[:, 1:]  # (B, L-1)
        keep = targets != IGNORE_INDEX
        if not bool(keep.any()):
            raise ValueError("batch has no labelled action tokens")
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][keep]).float()  # (T, V)
        target = targets[keep]
        loss = F.cross_entropy(logits, target)
        first = self.config.first_action_token_id
        is_action = (target >= first) & (target < first + self.config.n_bins)
        correct = (logits.argmax(-1) == target) & is_action
        accuracy = correct.sum().float() / is_action.sum().clamp(min=1).float()
        return loss, accuracy.detach()

    # Inference -------------------------------------------------------------------------------
    def prepare_prompt(self, base_image: np.ndarray | None, wrist_image: np.ndarray | None, instruction: str,
                       state: Any, stitched_image: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings (1, L, D) and the image mask (L,) for one observation (with the parallel
        head the prompt ends with the K action queries)."""
        embeds, masks = self._embed_observation(base_image, wrist_image, instruction, state, stitched_image)
        return embeds, masks["image_mask"][0]

    def _embed_observation(self, base_image: np.ndarray | None, wrist_image: np.ndarray | None, instruction: str,
                           state: Any, stitched_image: np.ndarray | None,
                           gaze_point: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = self.processor(base_image=base_image, wrist_image=wrist_image, instruction=instruction,
                                state=state, stitched_image=stitched_image)
        device = self.device
        masks = {k: sample[k][None].to(device) for k in ("image_mask", "action_query_mask", "instruction_mask",
                                                          "attention_mask") if k in sample}
        ids = sample["input_ids"][None].to(device)
        with torch.inference_mode():
            instruction = None
            if self.config.encodes_instruction:
                instruction = self._cached_instruction_encoding(ids, masks["instruction_mask"])
            forced = None
            if gaze_point is not None:
                forced = torch.as_tensor(check_array(gaze_point, (2,), "gaze_point"), dtype=torch.float32,
                                         device=device)[None]
            state = sample["state"][None].to(device) if "state" in sample else None
            embeds, keypoints, _ = self._embed(ids, masks["image_mask"], sample["pixel_values"][None].to(device),
                                               masks.get("instruction_mask"), masks.get("action_query_mask"),
                                               instruction, forced, state)
            geometry = self.head_geometry(state, keypoints)
        if geometry is not None:
            masks["geometry"] = geometry  # rides with the masks to run_parallel
        if keypoints is not None:
            masks["keypoints"] = keypoints
        return embeds, masks

    def _cached_instruction_encoding(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The FiLM instruction encoding, computed once per instruction at inference: a chunk then costs one
        decoder pass. ``train()`` drops the cache (the weights are about to change)."""
        key = tuple(ids[0][mask[0]].tolist())
        cached = self.__dict__.get("_instruction_cache")
        if cached is None or cached[0] != key:
            cached = (key, self.encode_instruction(ids, mask))
            self.__dict__["_instruction_cache"] = cached  # a cache, not state: never saved or moved
        return cached[1]

    @torch.inference_mode()
    def predict(self, base_image: np.ndarray | None, wrist_image: np.ndarray | None, instruction: str,
                state: Any, return_attention: bool = False,
                stitched_image: np.ndarray | None = None, gaze_point: Any = None) -> ActionPrediction:
        """One chunk with what came with it: the box the answer started with (``answer_box``), the gaze
        point the head acted on and, if asked, the attention map. ``gaze_point`` ((x, y) in the
        model-input frame, parallel head with keypoints) replaces keypoint 0's own estimate."""
        if self.action_head is not None:
            return self._predict_parallel(base_image, wrist_image, instruction, state, return_attention,
                                          stitched_image, gaze_point)
        if gaze_point is not None:
            raise ValueError("a gaze point replaces keypoint 0 of the parallel head: this model decodes tokens")
        embeds, image_mask = self.prepare_prompt(base_image, wrist_image, instruction, state, stitched_image)
        tokens = self.decode_action_tokens(embeds)
        ids = tokens.cpu().numpy()
        return ActionPrediction(actions=self.processor.decode_actions(ids, state=state),
                                box=self.processor.decode_box(ids),
                                attention=self.attention_map(embeds, tokens, image_mask) if return_attention else None)

    def _predict_parallel(self, base_image: np.ndarray | None, wrist_image: np.ndarray | None, instruction: str,
                          state: Any, return_attention: bool, stitched_image: np.ndarray | None,
                          gaze_point: Any = None) -> ActionPrediction:
        """The whole chunk from one forward pass (the attention map, when asked, from the same pass:
        the action queries' attention to the image tokens)."""
        embeds, masks = self._embed_observation(base_image, wrist_image, instruction, state, stitched_image,
                                                gaze_point)
        query_mask = masks["action_query_mask"]
        attention = None
        if return_attention:
            previous = self.llm.config._attn_implementation
            self.llm.set_attn_implementation("eager")
            try:
                _, values, attentions = self.run_parallel(embeds, masks["attention_mask"], query_mask, True,
                                                          masks.get("geometry"))
            finally:
                self.llm.set_attn_implementation(previous)
            attention = self._attention_to_image(attentions, query_mask[0].nonzero().squeeze(-1),
                                                 masks["image_mask"][0])
        else:
            _, values, _ = self.run_parallel(embeds, masks["attention_mask"], query_mask,
                                             geometry=masks.get("geometry"))
        actions = self.processor.decode_continuous(values[0].float().cpu().numpy(), state=state)
        keypoints = masks.get("keypoints")
        gaze = None if keypoints is None else keypoints[0, 0].float().cpu().numpy().astype(np.float64)
        return ActionPrediction(actions=actions, box=None, attention=attention, gaze_point=gaze)

    def _attention_to_image(self, attentions: Any, query_positions: torch.Tensor, image_mask: torch.Tensor) -> np.ndarray:
        """Attention of ``query_positions`` to the image tokens: per query renormalised over the image,
        averaged over heads, the configured layers and the queries -> (grid, grid) summing to 1."""
        cfg = self.config
        n_layers = cfg.llm.num_hidden_layers
        layers = cfg.attention_layers if cfg.attention_layers is not None else tuple(range(n_layers))
        image_positions = image_mask.nonzero().squeeze(-1)
        maps = []
        for layer in layers:
            weights = attentions[layer % n_layers][0][:, query_positions]  # (H, n, L)
            to_image = weights[..., image_positions].float()  # (H, n, N)
            maps.append(to_image / to_image.sum(-1, keepdim=True).clamp(min=1e-12))
        mean = torch.stack(maps).mean(dim=(0, 1, 2))  # (N,)
        return mean.view(cfg.grid_size, cfg.grid_size).cpu().numpy()

    def predict_action(self, base_image: np.ndarray | None, wrist_image: np.ndarray | None, instruction: str,
                       state: Any, return_attention: bool = False,
                       stitched_image: np.ndarray | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """One chunk: (K, action_dim) actions in robot units (+ the (grid, grid) attention map if asked)."""
        prediction = self.predict(base_image, wrist_image, instruction, state, return_attention, stitched_image)
        if not return_attention:
            return prediction.actions
        return prediction.actions, prediction.attention

    def decode_action_tokens(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Constrained greedy decoding of the answer: (box tokens +) K*D action token ids."""
        cfg = self.config
        prompt_len = prompt_embeds.shape[1]
        decoder = self.__dict__.get("_action_decoder")
        if decoder is None or not decoder.matches(self.llm, prompt_len):
            capacity = (prompt_len + cfg.answer_tokens_per_chunk + 63) // 64 * 64 + 64  # room for longer prompts
            decoder = ActionDecoder(self.llm, cfg.first_action_token_id, cfg.n_bins, cfg.answer_tokens_per_chunk,
                                    capacity)
            self.__dict__["_action_decoder"] = decoder  # a cache, not a submodule: never saved or moved
        return decoder(prompt_embeds)

    def naive_decode_tokens(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """The unconstrained transformers.generate baseline (for benchmarks)."""
        return naive_generate(self.llm, prompt_embeds, self.config.answer_tokens_per_chunk,
                              self.processor.pad_token_id)

    @torch.inference_mode()
    def attention_map(self, prompt_embeds: torch.Tensor, tokens: torch.Tensor, image_mask: torch.Tensor) -> np.ndarray:
        """Attention of the positions that produced the action tokens to the image tokens.

        One extra eager-attention pass over prompt + actions; per query the weights are renormalised
        over the image tokens, then averaged over heads, the configured layers and the queries.
        Returns a (grid, grid) float array summing to 1.
        """
        action_embeds = self.llm.get_input_embeddings().weight[tokens[:-1]][None]  # (1, n-1, D)
        sequence = torch.cat([prompt_embeds, action_embeds.to(prompt_embeds.dtype)], dim=1)  # (1, L+n-1, D)
        prompt_len = prompt_embeds.shape[1]
        previous = self.llm.config._attn_implementation
        self.llm.set_attn_implementation("eager")
        try:
            out = self.llm.get_decoder()(inputs_embeds=sequence, output_attentions=True, use_cache=False)
        finally:
            self.llm.set_attn_implementation(previous)
        queries = torch.arange(prompt_len - 1, sequence.shape[1], device=sequence.device)
        return self._attention_to_image(out.attentions, queries, image_mask)

    @torch.inference_mode()
    def sample_gaze_image(self, base_image: np.ndarray | None, wrist_image: np.ndarray | None, instruction: str,
                          state: Any, stitched_image: np.ndarray | None = None, num_steps: int | None = None,
                          seed: int = 0) -> np.ndarray:
        """Visualisation only: a few-step sample of the reconstructed gaze image, (V, V, 3) uint8."""
        if self.reconstruction is None:
            raise ValueError("this model has no reconstruction branch; load it with "
                             "ReconVLA.from_pretrained(path, load_reconstruction=True)")
        embeds, image_mask = self.prepare_prompt(base_image, wrist_image, instruction, state, stitched_image)
        hidden = self.llm.get_decoder()(inputs_embeds=embeds, use_cache=False).last_hidden_state
        h_r = hidden[:, image_mask]  # (1, N, D)
        generator = torch.Generator(device=h_r.device).manual_seed(seed)
        pixels = self.reconstruction.sample(h_r, num_steps or self.config.gaze_sample_steps, generator)
        image = ((pixels[0].permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255)
        return image.to(torch.uint8).cpu().numpy()

    # Sizes -----------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        def count(params: Any) -> int:
            return sum(p.numel() for p in params)

        recon = self.reconstruction
        return {
            "params_total": count(self.parameters()),
            "params_trainable": count(p for p in self.parameters() if p.requires_grad),
            "params_vision": count(self.vision.parameters()),
            "params_projector": count(self.projector.parameters()) + count(self.projector_norm.parameters()),
            "params_llm": count(self.llm.parameters()),
            "params_reconstruction": 0 if recon is None else count(recon.parameters()),
            "params_denoiser": 0 if recon is None else count(recon.denoiser.parameters()),
            "params_vae": 0 if recon is None else count(recon.vae.parameters()),
        }
