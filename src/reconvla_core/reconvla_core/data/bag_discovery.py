"""Find rosbag2 episode directories and peek at them without reading their messages (what
``dataset build`` and ``bag recover`` do before converting or recovering anything)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from reconvla_core.data.bag_messages import deserialize
from reconvla_core.data.bag_reader import BagTopics
from reconvla_core.data.bag_storage import open_storage


def is_bag_dir(path: Path) -> bool:
    """A rosbag2 directory: metadata.yaml, or (cut off before it was written) a storage file."""
    if not path.is_dir():
        return False
    if (path / "metadata.yaml").is_file():
        return True
    return any(path.glob("*.mcap")) or any(path.glob("*.db3"))


def find_bags(paths: Iterable[str | Path]) -> list[Path]:
    """Each path is a bag directory or a directory of bag directories (searched one level down)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"bag path {path} does not exist")
        if is_bag_dir(path):
            found.append(path)
            continue
        children = sorted(child for child in path.iterdir() if is_bag_dir(child))
        if not children:
            raise FileNotFoundError(f"{path} holds no rosbag2 directory (metadata.yaml, *.mcap or *.db3)")
        found.extend(children)
    return found


def peek_success(path: Path) -> bool | None:
    """The episode's success flag from metadata.yaml custom_data, without reading messages (None if absent)."""
    import json

    import yaml

    from reconvla_core.data.bag_writer import EPISODE_INFO_CUSTOM_KEY

    meta = path / "metadata.yaml"
    if not meta.is_file():
        return None
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        with open(meta, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=loader) or {}  # noqa: S506 - a safe loader
        custom = (data.get("rosbag2_bagfile_information") or {}).get("custom_data") or {}
        if EPISODE_INFO_CUSTOM_KEY not in custom:
            return None
        return bool(json.loads(custom[EPISODE_INFO_CUSTOM_KEY]).get("success"))
    except Exception:  # an unreadable metadata file is diagnosed by the full read
        return None


def peek_image_sizes(path: Path, topics: BagTopics) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """((h, w) base, (h, w) wrist) from each camera's first message, or None if the bag cannot say."""
    wanted = (topics.base_image, topics.wrist_image)
    sizes: dict[str, tuple[int, int]] = {}
    try:
        with open_storage(path, set(wanted)) as storage:
            for topic in wanted:
                msg = deserialize(storage.read(topic, 0), storage.topics[topic])
                sizes[topic] = (int(msg.height), int(msg.width))
    except Exception:  # a bag that cannot be read is diagnosed (and reported) by its conversion
        return None
    return sizes[topics.base_image], sizes[topics.wrist_image]
