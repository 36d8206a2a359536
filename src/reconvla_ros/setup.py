"""ament_python package reconvla_ros: thin ROS 2 nodes over reconvla_core."""

from glob import glob
import os

from setuptools import find_packages, setup

package_name = "reconvla_ros"
here = os.path.dirname(os.path.abspath(__file__))
# The launch files live at the repository top level (../../launch); install them into share/ so
# `ros2 launch reconvla_ros X` works. Paths are relative to this file, as setuptools wants.
launch_dir = os.path.relpath(os.path.join(here, "..", "..", "launch"), here)


def _files(pattern: str) -> list[str]:
    return sorted(p for p in glob(pattern) if os.path.isfile(p))


# Node entry points: (executable name, module:function), one Node subclass per executable.
NODES = [
    ("camera_ingest", "reconvla_ros.camera_ingest:main"),
    ("policy", "reconvla_ros.policy:main"),
    ("arm_command", "reconvla_ros.arm_command:main"),
    ("teleop_recorder", "reconvla_ros.teleop_recorder:main"),
    ("sim_robot", "reconvla_ros.sim_robot:main"),
]

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", _files(os.path.join(launch_dir, "*.launch.py"))),
        ("share/" + package_name + "/config", _files("config/*.yaml")),
        ("share/" + package_name + "/rviz", _files("rviz/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="ReconVLA-ROS maintainers",
    maintainer_email="maintainers@reconvla-ros.dev",
    description="ROS 2 nodes for ReconVLA on an AgileX PiPer.",
    license="Apache-2.0",
    entry_points={"console_scripts": [f"{name} = {target}" for name, target in NODES]},
)
