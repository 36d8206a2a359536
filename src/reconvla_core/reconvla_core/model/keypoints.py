"""Spatial keypoints for the parallel head: where things are, as coordinates (spatial softmax).

``SpatialKeypoints`` reads them from the vision tower's token grid, ``ConvKeypoints`` from a small
conv net of its own (``ReconVLAConfig.keypoint_encoder``); ``build_keypoints`` picks one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reconvla_core.model.configuration_reconvla import ReconVLAConfig


def grid_centres(rows: int, cols: int, device: torch.device | None = None) -> torch.Tensor:
    """(rows * cols, 2) (x, y) centres of a row-major grid's cells in [0, 1]."""
    ys = (torch.arange(rows, dtype=torch.float32, device=device) + 0.5) / rows
    xs = (torch.arange(cols, dtype=torch.float32, device=device) + 0.5) / cols
    ys, xs = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


class SpatialKeypoints(nn.Module):
    """Spatial softmax over the image-token grid (``keypoint_encoder="vision"``): per keypoint, softmax
    of a linear read-out of the vision features over the N tokens, and the expected (x, y) of the
    token centres in [0, 1]. ``embed`` maps the coordinates into the action queries."""

    def __init__(self, config: ReconVLAConfig) -> None:
        super().__init__()
        self.logits = nn.Linear(config.vision.hidden_size, config.spatial_keypoints)
        self.embed = keypoint_embedding(config)
        self.register_buffer("coords", grid_centres(config.grid_size, config.grid_size), persistent=False)

    def heatmap(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, D_vision) -> (B, K, N) each keypoint's softmax over the token grid (cells: ``coords``)."""
        return torch.softmax(self.logits(features).float().transpose(1, 2), dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, D_vision) -> (B, K, 2) expected (x, y) per keypoint."""
        return expected_points(self.heatmap(features), self.coords)


class ConvKeypoints(nn.Module):
    """``keypoint_encoder="conv"``: a small convolutional net of its own on the model-input image
    (two stride-2 stages, 32 and 64 channels, each FiLM-scaled and -shifted by the instruction
    encoding) and a spatial softmax over its quarter-resolution map (robomimic's ResNet + spatial
    softmax, in miniature), finer than the tiny tower's 20 px patches (docs/study_recon.md, "How precise
    must perception be?")."""

    width = 32

    def __init__(self, config: ReconVLAConfig) -> None:
        super().__init__()
        w, text = self.width, config.llm.hidden_size
        self.stem = nn.Sequential(nn.Conv2d(3, w, 5, stride=2, padding=2), nn.GELU(),
                                  nn.Conv2d(w, w, 3, padding=1), nn.GELU())
        self.body = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU(),
                                  nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.GELU())
        self.stem_film = nn.Linear(text, 2 * w)
        self.body_film = nn.Linear(text, 4 * w)
        self.remove_state_film()
        if config.keypoint_state:
            self.add_state_film(config)
        self.logits = nn.Conv2d(2 * w, config.spatial_keypoints, 1)
        self.embed = keypoint_embedding(config)
        side = -(-config.vision.image_size // 4)  # both stride-2 convs round up
        self.register_buffer("coords", grid_centres(side, side), persistent=False)

    def add_state_film(self, config: ReconVLAConfig) -> None:
        """``keypoint_state``: FiLM terms from the normalised robot state, zero at first (so a trained
        net switched over finds the same keypoints until training moves them)."""
        w = self.width
        self.stem_state = nn.Linear(config.state_dim, 2 * w)
        self.body_state = nn.Linear(config.state_dim, 4 * w)
        for layer in (self.stem_state, self.body_state):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def remove_state_film(self) -> None:
        self.stem_state = self.body_state = None

    def state_film_parameters(self) -> list[nn.Parameter]:
        """The ``keypoint_state`` layers' parameters (empty without them): what ``fit-gaze --state-film`` trains."""
        return [p for layer in (self.stem_state, self.body_state) if layer is not None for p in layer.parameters()]

    @staticmethod
    def _film(features: torch.Tensor, scale_shift: torch.Tensor) -> torch.Tensor:
        scale, shift = scale_shift[:, :, None, None].chunk(2, dim=1)
        return features * (1.0 + scale) + shift

    def heatmap(self, pixel_values: torch.Tensor, instruction_embedding: torch.Tensor,
                state: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, S, S) normalised image, (B, D_llm) instruction encoding (and (B, state_dim) normalised
        state with ``keypoint_state``) -> (B, K, H*W) each keypoint's softmax over the feature map
        (cells: ``coords``)."""
        dtype = self.logits.weight.dtype
        text = instruction_embedding.to(dtype)
        stem_film, body_film = self.stem_film(text), self.body_film(text)
        if self.stem_state is not None:
            if state is None:
                raise ValueError("keypoint_state: the keypoint net needs the normalised state (batch['state'])")
            stem_film = stem_film + self.stem_state(state.to(dtype))
            body_film = body_film + self.body_state(state.to(dtype))
        features = self._film(self.stem(pixel_values.to(dtype)), stem_film)
        features = self._film(self.body(features), body_film)
        return torch.softmax(self.logits(features).flatten(2).float(), dim=-1)

    def forward(self, pixel_values: torch.Tensor, instruction_embedding: torch.Tensor,
                state: torch.Tensor | None = None) -> torch.Tensor:
        """``heatmap``'s inputs -> (B, K, 2) expected (x, y)."""
        return expected_points(self.heatmap(pixel_values, instruction_embedding, state), self.coords)


def expected_points(heatmap: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """(B, K, cells) softmax weights, (cells, 2) cell centres -> (B, K, 2) expected (x, y)."""
    return heatmap @ coords.to(heatmap.device)


def heatmap_divergence(heatmap: torch.Tensor, coords: torch.Tensor, point: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B,) KL(target || heatmap) per row: the target is a Gaussian of std ``sigma`` (image fraction)
    at ``point`` (B, 2), normalised over the cells. 0 when the softmax is the target."""
    squared = ((coords.to(point.device)[None] - point[:, None].float()) ** 2).sum(dim=-1)  # (B, cells)
    target = torch.softmax(-squared / (2.0 * sigma ** 2), dim=-1)
    log_heat = torch.log(heatmap.float().clamp(min=1e-12))
    return F.kl_div(log_heat, target, reduction="none").sum(dim=-1)


def keypoint_embedding(config: ReconVLAConfig) -> nn.Linear:
    """The keypoints' coordinates -> an LLM-width vector added into every action query (small init)."""
    embed = nn.Linear(2 * config.spatial_keypoints, config.llm.hidden_size)
    nn.init.normal_(embed.weight, std=0.02)
    nn.init.zeros_(embed.bias)
    return embed


def build_keypoints(config: ReconVLAConfig) -> nn.Module | None:
    if not config.spatial_keypoints:
        return None
    return ConvKeypoints(config) if config.keypoint_encoder == "conv" else SpatialKeypoints(config)
