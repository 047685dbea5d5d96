"""What the stages share: the recipe, artifact folders and md5s, the output layout, lineage, statistics, PLY,
the multi-GPU launcher and child-process reporting."""
