"""The ROS-side contract shared by the simulator, the recorder, the bag reader and the nodes.

These are the names and message layouts the real drivers use (realsense2_camera
>= 4.55, OrbbecSDK_ROS2 with camera_name wrist_camera, piper_ros), plus the two
topics the product adds (gaze box, episode info). Plain constants, no ROS import.
"""

from __future__ import annotations

# Cameras (sensor_msgs/Image, rgb8 by default).
BASE_IMAGE_TOPIC = "/camera/camera/color/image_raw"
WRIST_IMAGE_TOPIC = "/wrist_camera/color/image_raw"
# Follower arm feedback (sensor_msgs/JointState: position[0:6] rad, position[6] gripper m).
FOLLOWER_STATE_TOPIC = "/joint_states_single"
# Leader arm command during teleop (sensor_msgs/JointState, same layout) = the dataset's action.
LEADER_COMMAND_TOPIC = "/master/joint_states"
# Command to the follower as piper_ros takes it (sensor_msgs/JointState: position[0:6] rad,
# position[6] gripper m, velocity[6] = speed percentage 0..100).
ARM_COMMAND_TOPIC = "/joint_ctrl_single"
# Canonical joint states published by arm_command (sensor_msgs/JointState, names ACTION_NAMES).
JOINT_STATES_TOPIC = "/joint_states"
# Instruction (std_msgs/String, transient-local QoS).
INSTRUCTION_TOPIC = "/instruction"
# Ground-truth / annotated gaze box: std_msgs/Float32MultiArray data = [x1, y1, x2, y2, valid],
# normalised to [0, 1] in the base image. Stamped by the bag log time.
GAZE_BOX_TOPIC = "/reconvla/gaze_box"
# Episode metadata: std_msgs/String holding JSON (see EPISODE_INFO_KEYS), written once when the
# episode ends (and mirrored in metadata.yaml custom_data where the writer supports it).
EPISODE_INFO_TOPIC = "/reconvla/episode_info"
EPISODE_INFO_KEYS = ("task", "instruction", "success", "operator", "software_version", "start_time", "stop_time")

# Our nodes' own topics.
MODEL_FRAME_TOPIC = "/reconvla/frame"  # sensor_msgs/Image: stitched model-input frame (rgb8)
ACTION_CHUNK_TOPIC = "/reconvla/action_chunk"  # trajectory_msgs/JointTrajectory
ATTENTION_TOPIC = "/reconvla/attention"  # sensor_msgs/Image, rgb8 colour-mapped overlay
# Operator interventions (HG-DAgger), published by arm_command every control period while
# interventions are on: std_msgs/Bool, true while the leader arm drives the follower. The recorder
# writes it into each episode; the bag reader turns it into the dataset's per-frame flag.
INTERVENTION_TOPIC = "/reconvla/intervention"
# Relabelled states (sim DAgger): std_msgs/Bool, true while the recorded leader command is an
# expert's label for a state another controller (the policy) drove, so the arm executed something
# else. Training then uses such a frame's label but not the frames after it as its chunk's
# continuation (those followed the policy's motion, not the label's).
RELABELLED_TOPIC = "/reconvla/relabelled"
