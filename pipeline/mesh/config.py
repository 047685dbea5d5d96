"""The `mesh` section of params.yaml: collision geometry from the splat."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipeline.common.sections import Section, Vec3, Joint6, Positive, Range


class ObjectGate(Section):
    """Thresholds of one object's geometry against the capture's ground truth (null: that quantity not gated)."""

    max_size_error_mm: Positive | None = 3.0  # per axis: footprint long side, short side, height
    max_centre_error_mm: Positive | None = 5.0
    max_yaw_error_deg: Positive | None = 10.0  # modulo the footprint's symmetry (90 deg for a square one)
    volume_ratio: Range | None = Range(low=0.8, high=1.25)  # reconstructed solid / true volume
    mass_ratio: Range | None = Range(low=0.8, high=1.25)  # dynamic objects: volume x object_density_kg_m3 / true

class MeshConfig(Section):
    """Stage `collision_mesh`: depth rendered from the splat at the capture views, fused into a TSDF (Open3D), cleaned,
    split into the support surface and the objects on it, and decomposed into convex hulls (CoACD)."""

    # rendering and fusion
    min_pixel_opacity: Annotated[float, Field(gt=0, lt=1)] = 0.5  # fainter splat pixels carry no depth
    # Gaussians this far in front of / behind the first surface along a ray count towards its depth (see
    # `render_surface_depth`): wide enough for a splat surface's thickness, thinner than the objects
    surface_band_front_m: Positive = 0.005
    surface_band_back_m: Positive = 0.015
    max_depth_m: Positive = 1.5
    depth_edge_m: Positive = 0.01  # pixels beside a larger depth jump are silhouettes: not fused
    voxel_m: Positive = 0.003  # TSDF voxel; the truncation is `trunc_voxels` voxels
    trunc_voxels: Annotated[float, Field(ge=1)] = 3.0  # wider truncation widens objects' edges
    # the region to reconstruct, robot base frame (the default: the table top and what stands on it, not the floor)
    workspace_min: Vec3 = (-0.15, -0.45, -0.05)
    workspace_max: Vec3 = (0.6, 0.45, 0.4)
    # the robot is modelled by its own USD: its surfaces (posed at the capture's joint state) are cut out
    remove_robot: bool = True
    robot_clearance_m: Positive = 0.015
    robot_joint_positions_rad: Joint6 | None = None  # for captures without a scene_state.json (SO-101 joint order)
    # cleaning
    min_component_triangles: Annotated[int, Field(ge=0)] = 200
    target_triangles: Annotated[int, Field(ge=100)] = 60_000
    # support plane (RANSAC) and objects
    plane_distance_m: Positive = 0.004
    plane_ransac_iterations: Annotated[int, Field(ge=10)] = 2000
    plane_min_inlier_fraction: Annotated[float, Field(gt=0, le=1)] = 0.2
    plane_max_tilt_deg: Annotated[float, Field(gt=0, le=90)] = 15.0  # a support must be roughly horizontal
    # points higher above the plane outline objects; lower bumps are noise (near the edges of the table the default
    # capture reconstructs ridges up to ~1 cm high)
    object_min_height_m: Positive = 0.012
    # footprints closer than this are one object: a thin bin wall reconstructs in pieces
    cluster_eps_m: Positive = 0.03
    min_object_area_m2: Positive = 1e-4  # smaller footprints (under 1 cm square) are noise
    # objects become height-field solids on cells of this size: about what one capture pixel covers at 0.7 m
    solid_cell_m: Positive = 0.006
    # each object's pose and size refitted to its outline in the capture photos (pipeline/mesh/silhouette.py): an
    # upright box or elliptic cylinder; a convex object becomes the prism, a concave one (a bin) is moved and
    # scaled into it. The splat's geometry of a small object is biased (a 25 mm cube fuses ~16 mm wide)
    silhouette_refine: bool = True
    silhouette_min_iou: Annotated[float, Field(gt=0, le=1)] = 0.6  # a worse fit keeps the splat's geometry
    silhouette_min_views: Annotated[int, Field(ge=1)] = 8  # views that see the object and its surroundings whole
    silhouette_margin_m: Positive = 0.02  # the window around the object; its border samples the background
    silhouette_supersample: Annotated[int, Field(ge=1, le=32)] = 8  # coverage computed on a grid this much finer
    support_thickness_m: Positive = 0.02  # the support becomes a box this thick under the plane
    # convex decomposition (CoACD) and physics
    convex_fill: Annotated[float, Field(gt=0, le=1)] = 0.8  # a solid filling this much of its hull is one hull
    coacd_threshold: Annotated[float, Field(gt=0, le=1)] = 0.15  # concavity; lower = more, tighter hulls
    seed: int = 0  # RANSAC and CoACD
    coacd_mcts_iterations: Annotated[int, Field(ge=1)] = 60  # CoACD's default 150; fewer is faster
    max_hulls_per_object: Annotated[int, Field(ge=1)] = 16
    max_hulls: Annotated[int, Field(ge=1)] = 64
    object_density_kg_m3: Positive = 960.0  # the sim cube: 15 g in a 2.5 cm cube
    # gates (blocking asset checks)
    expected_objects: Annotated[int, Field(ge=0)] | None = 2  # the cube and the bin; null: not checked
    max_chamfer_mm: Positive = 5.0  # to the capture's ground-truth depth, when it has one (sim)
    # per object, where the capture has ground truth (sim): `default` applies to objects not named here.
    # object_gate_blocks: a failed object gate stops the twin chain (ERROR); false: it warns and the twin is built
    object_gate_blocks: bool = True
    object_gates: dict[str, ObjectGate] = {
        "default": ObjectGate(),
        # a thin-walled bin: its walls are one or two solid cells thick, so its volume is not a measure of it;
        # static, so it has no mass
        "bin": ObjectGate(max_size_error_mm=6.0, volume_ratio=None, mass_ratio=None),
    }
