"""pipeline.common.ply beyond the splat stage's binary INRIA files (those: tests/stages/splat/test_splat.py)."""

import numpy as np


def test_ascii_ply_reads(tmp_path):
    from pipeline.common.ply import read_ply

    path = tmp_path / "a.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty uchar red\nend_header\n"
                    "0.5 10\n-1.25 255\n")
    v = read_ply(path)
    assert v["x"].tolist() == [0.5, -1.25] and v["red"].tolist() == [10, 255] and v["red"].dtype == np.uint8
