"""reconvla_ros: thin ROS 2 nodes over reconvla_core (parameters, message conversion, timers)."""
