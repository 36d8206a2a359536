#!/usr/bin/env bash
# Source ROS 2, the driver underlay and the ReconVLA workspace, then run the command.
set -e
source "/opt/ros/${ROS_DISTRO:-jazzy}/setup.bash"
source /opt/underlay/install/setup.bash
source /opt/reconvla/install/setup.bash
exec "$@"
