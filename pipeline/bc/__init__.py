"""Stage `bc_policy`: behaviour cloning with lerobot's own trainer, then measured (docs/bc.md)."""
