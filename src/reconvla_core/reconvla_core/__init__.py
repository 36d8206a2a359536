"""ReconVLA core: everything that runs without ROS.

Subpackages: ``model`` (the VLA and its reconstruction branch), ``data`` (bags ->
LeRobot v3 datasets -> model-ready samples), ``train``, ``sim`` (PyBullet twin of
the PiPer cell), ``runtime`` (safety filter, action queue, image conversion used
by the ROS nodes), ``bench`` and the ``reconvla`` CLI. Importing this package
never imports rclpy, torch or pybullet: heavy modules load lazily.
"""

__version__ = "0.1.0"
