"""``reconvla dataset view``: an episode's frames with the gaze box drawn (PNG contact sheet or GIF)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from reconvla_core.data.lerobot_v3 import (
    BASE_IMAGE_KEY,
    GAZE_KEY,
    WRIST_IMAGE_KEY,
    data_files,
    decode_cell,
    load_episodes,
    load_info,
    load_tasks,
)

logger = logging.getLogger(__name__)

VALID_COLOUR = (0, 255, 0)
FALLBACK_COLOUR = (255, 64, 64)


def read_episode_frames(root: str | Path, episode: int, max_frames: int | None = None) -> dict[str, Any]:
    """Frames of one episode: base/wrist images, gaze boxes (N, 5) or None, frame indices, task."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = Path(root)
    info = load_info(root)
    episodes = {row["episode_index"]: row for row in load_episodes(root)}
    if episode not in episodes:
        raise ValueError(f"{root} has episodes 0..{len(episodes) - 1}; there is no episode {episode}")
    features = info["features"]
    columns = [BASE_IMAGE_KEY, "frame_index", "episode_index"]
    columns += [key for key in (WRIST_IMAGE_KEY, GAZE_KEY) if key in features]
    length = int(episodes[episode]["length"])
    wanted = np.arange(length)
    if max_frames is not None and length > max_frames:
        wanted = np.unique(np.linspace(0, length - 1, max_frames).round().astype(int))
    base, wrist, boxes, frames = [], [], [], []
    for path in data_files(root):
        table = pq.read_table(path, columns=columns, filters=pc.field("episode_index") == episode)
        if table.num_rows == 0:
            continue
        frame_index = table.column("frame_index").to_numpy()
        for row in np.flatnonzero(np.isin(frame_index, wanted)):
            frames.append(int(frame_index[row]))
            base.append(decode_cell(root, table.column(BASE_IMAGE_KEY)[int(row)].as_py()))
            if WRIST_IMAGE_KEY in table.column_names:
                wrist.append(decode_cell(root, table.column(WRIST_IMAGE_KEY)[int(row)].as_py()))
            if GAZE_KEY in table.column_names:
                boxes.append(np.asarray(table.column(GAZE_KEY)[int(row)].as_py(), dtype=np.float32))
    task_index = episodes[episode].get("tasks") or [""]
    return {
        "base": base, "wrist": wrist, "gaze": np.stack(boxes) if boxes else None,
        "frame_index": frames, "task": task_index[0] if task_index else "", "tasks": load_tasks(root),
    }


def draw_gaze(image: np.ndarray, box: np.ndarray | None, width: int = 2) -> np.ndarray:
    """The image with the normalised xyxy box outlined (green: detection, red: whole-image fallback)."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image)
    if box is not None:
        height, width_px = image.shape[:2]
        valid = len(box) < 5 or box[4] >= 0.5
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        corners = [x1 * (width_px - 1), y1 * (height - 1), x2 * (width_px - 1), y2 * (height - 1)]
        ImageDraw.Draw(canvas).rectangle(corners, outline=VALID_COLOUR if valid else FALLBACK_COLOUR, width=width)
    return np.asarray(canvas)


def compose_frame(base: np.ndarray, wrist: np.ndarray | None, box: np.ndarray | None) -> np.ndarray:
    """Base view with the gaze box, wrist view to its right (resized to the base height)."""
    from PIL import Image

    left = draw_gaze(base, box)
    if wrist is None:
        return left
    height = left.shape[0]
    scale = height / wrist.shape[0]
    right = np.asarray(Image.fromarray(wrist).resize((max(1, round(wrist.shape[1] * scale)), height)))
    return np.concatenate([left, right], axis=1)


def render_episode(root: str | Path, episode: int, out: str | Path, max_frames: int = 64) -> dict[str, Any]:
    """Write ``out`` (.png: contact sheet, .gif: animation at the dataset fps). Returns a summary dict."""
    from PIL import Image

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".gif"):
        raise ValueError(f"--out must end in .png or .gif, got {out.name}")
    data = read_episode_frames(root, episode, max_frames=max_frames)
    boxes = data["gaze"]
    tiles = [
        compose_frame(base, data["wrist"][i] if data["wrist"] else None, boxes[i] if boxes is not None else None)
        for i, base in enumerate(data["base"])
    ]
    if not tiles:
        raise ValueError(f"episode {episode} of {root} has no frames")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        fps = float(load_info(root)["fps"])
        images = [Image.fromarray(tile) for tile in tiles]
        images[0].save(out, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
    else:
        columns = min(8, len(tiles))
        rows = math.ceil(len(tiles) / columns)
        tile_h, tile_w = tiles[0].shape[:2]
        sheet = np.full((rows * tile_h, columns * tile_w, 3), 32, dtype=np.uint8)
        for i, tile in enumerate(tiles):
            r, c = divmod(i, columns)
            sheet[r * tile_h : (r + 1) * tile_h, c * tile_w : (c + 1) * tile_w] = tile
        Image.fromarray(sheet).save(out)
    fallbacks = int((boxes[:, 4] < 0.5).sum()) if boxes is not None and boxes.shape[1] > 4 else 0
    logger.info("wrote %s (%d frames of episode %d)", out, len(tiles), episode)
    return {"out": str(out), "episode": episode, "frames": len(tiles), "task": data["task"],
            "gaze_fallbacks": fallbacks, "format": suffix[1:]}
