"""Stage `gaussian_splat`: 3D Gaussian splatting of the capture (docs/splat.md)."""
