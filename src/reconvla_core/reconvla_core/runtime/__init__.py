"""Deployment runtime without ROS: safety filter, action-chunk queue, image conversion, camera
pairing, attention overlay and the arm backends. The reconvla_ros nodes are thin wrappers over
these; nothing here imports rclpy.
"""
