"""Stage `scene_capture`: posed images of the workcell in nerfstudio's transforms.json convention (docs/capture.md)."""
