"""Read a LeRobot v3.0 dataset's meta files (ours or an external port) and find its data files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reconvla_core.data.lerobot_v3.format import EPISODES_DIR, INFO_PATH, STATS_PATH, TASKS_PATH


def is_dataset(root: str | Path) -> bool:
    return (Path(root) / INFO_PATH).is_file()


def load_info(root: str | Path) -> dict[str, Any]:
    path = Path(root) / INFO_PATH
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not a LeRobot dataset (no {INFO_PATH}); build one with `reconvla dataset build`")
    with open(path, encoding="utf-8") as handle:
        info = json.load(handle)
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise ValueError(f"{root}: codebase_version {version!r}; only LeRobot v3.x datasets are supported")
    return info


def load_stats(root: str | Path) -> dict[str, dict[str, list]]:
    """meta/stats.json as written (feature -> stat -> nested lists), the dict ``model.set_norm_stats`` takes."""
    path = Path(root) / STATS_PATH
    if not path.is_file():
        raise FileNotFoundError(f"{root} has no {STATS_PATH}")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def load_tasks(root: str | Path) -> dict[int, str]:
    """task_index -> task string; reads the pandas index column whatever its name."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(root) / TASKS_PATH)
    names = table.column_names
    text_column = "task" if "task" in names else None
    if text_column is None:
        metadata = table.schema.metadata or {}
        if b"pandas" in metadata:
            index_columns = json.loads(metadata[b"pandas"]).get("index_columns", [])
            text_column = next((c for c in index_columns if isinstance(c, str) and c in names), None)
    if text_column is None:
        text_column = next((n for n in names if n != "task_index"), None)
    if text_column is None or "task_index" not in names:
        raise ValueError(f"{root}/{TASKS_PATH}: cannot find the task text and task_index columns in {names}")
    return dict(zip(table.column("task_index").to_pylist(), table.column(text_column).to_pylist(), strict=False))


def load_episodes(root: str | Path, with_stats: bool = False) -> list[dict[str, Any]]:
    """One dict per episode (all meta/episodes files, in episode order)."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for path in sorted((Path(root) / EPISODES_DIR).glob("*/*.parquet")):
        table = pq.read_table(path)
        if not with_stats:
            table = table.select([name for name in table.column_names if not name.startswith("stats/")])
        rows.extend(table.to_pylist())
    rows.sort(key=lambda row: row["episode_index"])
    return rows


def data_files(root: str | Path) -> list[Path]:
    return sorted((Path(root) / "data").glob("*/*.parquet"))
