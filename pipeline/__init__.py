"""Twinloop's framework-free stages. Rendering is headless unless the user chose a GL backend: MUJOCO_GL must be set
before anything (lerobot included) imports mujoco, hence here."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
