"""Training data: datasets from the config, a deterministic sample order, per-process loaders.

The order of samples is a pure function of (seed, position in the stream): optimiser step ``s``
consumes stream positions ``[s * G, (s + 1) * G)`` for a global batch ``G``, and each process takes
fixed slices of that global batch. Resuming therefore needs only the step number, and 1 process
with accumulation sees exactly the same global batch as N processes.

A stream "epoch" is one pass of ``len(dataset)`` positions: a permutation when every sample has
the same mixing weight, weighted draws with replacement otherwise (dataset mixtures).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from reconvla_core.train.config import TrainConfig

logger = logging.getLogger(__name__)


class SampleStream:
    """Dataset index at each stream position, from (seed, epoch) only."""

    def __init__(self, sample_weights: np.ndarray | None, length: int, seed: int) -> None:
        if length <= 0:
            raise ValueError("the training split is empty: too few episodes for data.val_fraction?")
        self.length = length
        self.seed = seed
        self.weights = None
        if sample_weights is not None and not np.allclose(sample_weights, sample_weights[0]):
            self.weights = torch.as_tensor(sample_weights / sample_weights.sum(), dtype=torch.float64)
        self._epoch = -1
        self._order: torch.Tensor | None = None

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            if self.weights is None:
                self._order = torch.randperm(self.length, generator=generator)
            else:
                self._order = torch.multinomial(self.weights, self.length, replacement=True, generator=generator)
            self._epoch = epoch
        assert self._order is not None
        return self._order

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(position, self.length)
        return int(self._epoch_order(epoch)[offset])


class ProcessSampler(Sampler[int]):
    """The indices one process reads, micro-batch by micro-batch, from optimiser step ``start_step`` on.

    Global batch ``G = B x P x A`` (per-device batch, processes, accumulation steps); micro-batch ``a``
    of process ``r`` at step ``s`` holds positions ``s*G + (a*P + r)*B ... + B``.
    """

    def __init__(self, stream: SampleStream, *, per_device: int, num_processes: int, rank: int,
                 accum: int, start_step: int, total_steps: int) -> None:
        self.stream = stream
        self.per_device = per_device
        self.num_processes = num_processes
        self.rank = rank
        self.accum = accum
        self.start_step = start_step
        self.total_steps = total_steps

    @property
    def global_batch(self) -> int:
        return self.per_device * self.num_processes * self.accum

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.accum * self.per_device

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start_step, self.total_steps):
            base = step * self.global_batch
            for micro in range(self.accum):
                first = base + (micro * self.num_processes + self.rank) * self.per_device
                for position in range(first, first + self.per_device):
                    yield self.stream[position]


class ProcessedDataset(Dataset):
    """Raw VLADataset samples -> model inputs through the model's processor (per-dataset norm stats)."""

    def __init__(self, raw: Any, processor: Any, stats: list[dict[str, Any]]) -> None:
        self.raw = raw
        self.processor = processor
        self.stats = stats

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.raw[index]
        return process_raw(self.processor, item, self.stats)


def process_raw(processor: Any, item: dict[str, Any], stats: list[dict[str, Any]]) -> dict[str, Any]:
    """One raw sample (VLADataset with processor=None) -> the processor's tensors (its dataset's stats)."""
    dataset_index = int(item.get("dataset_index", 0))
    return processor(
        base_image=item["base_image"],
        wrist_image=item["wrist_image"],
        instruction=item["instruction"],
        state=item["state"],
        actions=item["actions"],
        gaze_box=item.get("gaze_box"),
        gaze_valid=bool(item.get("gaze_valid", True)),
        action_is_pad=item.get("action_is_pad"),
        norm_stats=stats[dataset_index] if stats else None,
    )


@dataclass
class TrainData:
    train: Any  # VLADataset split "train" (raw samples)
    val: Any | None  # VLADataset split "val" or None
    stats: list[dict[str, Any]]  # per source, in config order
    stream: SampleStream

    def steps_per_epoch(self, global_batch: int) -> int:
        return max(1, math.ceil(len(self.train) / global_batch))


def share_robot_stats(stats: list[dict[str, Any]], features: list[str]) -> list[dict[str, Any]]:
    """One normalisation per robot: sources with the same feature map (the same robot and action space,
    e.g. clean and DART-noise recordings of our arm) share stats covering all of them; each other
    embodiment keeps its own (LeRobot's mixture semantics). Per-source stats of one robot would give
    the same joint angle different state tokens and the same motion different targets depending on
    which recording a sample came from."""
    merged: dict[str, dict[str, Any]] = {}
    for entry, feature in zip(stats, features):
        merged[feature] = entry if feature not in merged else _union_stats(merged[feature], entry)
    return [merged[feature] for feature in features]


def _union_stats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Stats whose ranges cover both: elementwise min of the lower quantiles and max of the upper ones,
    count-weighted mean, the larger std."""
    out: dict[str, Any] = {}
    for key in a.keys() & b.keys():
        x, y = a[key], b[key]
        if not (isinstance(x, dict) and isinstance(y, dict)):
            out[key] = x
            continue
        entry = dict(x)
        for name in x.keys() & y.keys():
            u, v = np.asarray(x[name], dtype=np.float64), np.asarray(y[name], dtype=np.float64)
            if name in ("min", "q01", "q10"):
                entry[name] = np.minimum(u, v).tolist()
            elif name in ("max", "q90", "q99", "std"):
                entry[name] = np.maximum(u, v).tolist()
            elif name == "mean":
                nu, nv = float(np.sum(x.get("count", 1))), float(np.sum(y.get("count", 1)))
                entry[name] = ((u * nu + v * nv) / max(nu + nv, 1.0)).tolist()
            elif name == "count":
                entry[name] = (u + v).tolist()
        out[key] = entry
    return out


def source_sample_weights(dataset: Any, weights: list[float]) -> np.ndarray | None:
    """Per-sample weights so a source is drawn with probability weight / sum(weights), whatever its
    size (the VLADataset mixture semantics), and a frame within its source in proportion to the
    frame's ``sample_weight`` (datasets built with ``--interventions weight=W``; 1 without); None
    when every sample weighs the same (a single source without frame weights)."""
    frame_weights = dataset.frame_weights() if hasattr(dataset, "frame_weights") else None
    if len(weights) <= 1 and frame_weights is None:
        return None
    lengths = [int(n) for n in dataset.lengths]  # sources are laid out one after another
    per_sample, start = [], 0
    for n, w in zip(lengths, weights):
        within = np.ones(n) if frame_weights is None else np.asarray(frame_weights[start:start + n], np.float64)
        if n > 0:
            per_sample.append(w * within / within.sum())
        start += n
    return np.concatenate(per_sample)


def build_data(config: TrainConfig, *, need_val: bool = True) -> TrainData:
    """The train/val splits of the configured sources and their normalisation stats."""
    from reconvla_core.data import DatasetSource, VLADataset

    sources = [DatasetSource(s.path, weight=s.weight, features=s.features) for s in config.data.sources]
    common: dict[str, Any] = {"chunk_size": config.model.resolve().chunk_size, "processor": None,
                              "val_fraction": config.data.val_fraction, "seed": config.seed,
                              "static_threshold": config.data.static_threshold,
                              "relabelled_actions": config.data.relabelled_actions}
    train = VLADataset(sources, split="train", augment=config.data.augment, **common)
    val = None
    if need_val and config.data.val_fraction > 0:
        val = VLADataset(sources, split="val", augment=False, **common)
        if len(val) == 0:
            logger.warning("validation split is empty (too few episodes for val_fraction=%s)",
                           config.data.val_fraction)
            val = None
    stats = share_robot_stats([train.norm_stats(i) for i in range(len(sources))],
                              [s.features for s in config.data.sources])
    weights = source_sample_weights(train, [s.weight for s in config.data.sources])
    stream = SampleStream(weights, len(train), config.seed)
    logger.info("data: %d training samples, %s validation samples from %d source(s)", len(train),
                len(val) if val is not None else 0, len(sources))
    return TrainData(train=train, val=val, stats=stats, stream=stream)


def make_loader(data: TrainData, processor: Any, config: TrainConfig, *, num_processes: int, rank: int,
                accum: int, start_step: int, total_steps: int) -> DataLoader:
    """Per-process loader of processed micro-batches from ``start_step`` on (no shuffling of its own)."""
    sampler = ProcessSampler(data.stream, per_device=config.train.per_device_batch_size,
                             num_processes=num_processes, rank=rank, accum=accum,
                             start_step=start_step, total_steps=total_steps)
    return DataLoader(
        ProcessedDataset(data.train, processor, data.stats),
        batch_size=config.train.per_device_batch_size,
        sampler=sampler,
        collate_fn=processor.collate,
        num_workers=config.data.num_workers,
        # Its own generator: creating the iterator must not draw from the global torch RNG
        # (that would make a resumed run differ from an uninterrupted one).
        generator=torch.Generator().manual_seed(config.seed),
        persistent_workers=False,
        drop_last=False,
    )


def move_to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch
