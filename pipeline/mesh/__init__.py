"""Stage `collision_mesh`: collision geometry from the splat (docs/mesh.md)."""
