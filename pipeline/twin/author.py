"""Author the workcell twin as one OpenUSD stage with usd-core (`pxr`): robot, colliders, splat, cameras, physics.

Layout of `twin.usd` (Z up, metres, kilograms; default prim `/World`):

    /World/PhysicsScene          gravity, time step (Newton's and PhysX's attribute)
    /World/Robot                 the official SO-101 USD (a copy beside twin.usd), referenced at the base pose;
                                 convex colliders, servo gains and the home pose authored over it
    /World/Robot/gripper/wrist   the wrist camera, riding on the gripper link
    /World/Colliders/<part>      static parts of models/mesh/scene.json (table, fixed objects): convex hull meshes
    /World/Objects/<part>        rigid bodies with mass: hull meshes + the Gaussians that move with the object
    /World/Splat/scene           the static splat (UsdVol.ParticleField3DGaussianSplat)
    /World/Splat/robot_at_capture  Gaussians on the robot at capture time: kept, invisible (the robot has meshes)
    /World/Cameras/front         the recording's front camera
    /World/Capture/view_NNN      the capture rig (intrinsics + extrinsics of every capture image)
    /World/Looks/Physics/*       physics materials (friction, restitution)

Splat attributes follow the schema: linear scales, opacities in [0, 1], unit quaternions (w, x, y, z), and per
Gaussian (degree+1)^2 RGB spherical-harmonic coefficients in the 3DGS convention (colour = 0.28209·c0 + 0.5 + ...).
The layer's customLayerData["twinloop"] records the recipe and the md5 of every upstream artifact it was made from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import newton_usd_schemas  # noqa: F401  registers Newton's USD schemas; must precede the first pxr stage
import numpy as np
import torch

from pipeline.common.recipe import Recipe
from pipeline.workcell.joints import SIM_JOINTS

TWIN_USD = "twin.usd"
ROBOT_USD = "robot/so101.usd"  # the official USD, copied so the twin folder is self-contained
ROBOT_PATH = "/World/Robot"
SPLAT_SCENE_PATH = "/World/Splat/scene"
SPLAT_ROBOT_PATH = "/World/Splat/robot_at_capture"
FRONT_CAMERA_PATH = "/World/Cameras/front"
WRIST_CAMERA_PATH = f"{ROBOT_PATH}/gripper/wrist"
CAPTURE_PATH = "/World/Capture"
_APERTURE_MM = 20.955  # USD's default horizontal aperture; focal length follows from the pixel intrinsics


class TwinError(ValueError):
    """The twin cannot be authored from these inputs (missing parts, unknown object names, empty splat)."""


@dataclass(frozen=True)
class SplatParts:
    """Gaussians (activated: linear scales, opacities in [0, 1], unit quaternions w-first) split by what they show."""

    scene: dict[str, np.ndarray]
    robot: dict[str, np.ndarray]
    objects: dict[str, dict[str, np.ndarray]]  # object name -> Gaussians in world coordinates


def activated(splat: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """gsplat's training parameters (log scales, logit opacities, raw quaternions) -> the USD schema's values."""
    quats = splat["quats"] / splat["quats"].norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return {
        "means": splat["means"].numpy().astype(np.float32),
        "quats": quats.numpy().astype(np.float32),
        "scales": torch.exp(splat["scales"]).numpy().astype(np.float32),
        "opacities": torch.sigmoid(splat["opacities"]).numpy().astype(np.float32),
        "sh": torch.cat([splat["sh0"], splat["shN"]], 1).numpy().astype(np.float32),  # [N, K, 3]
    }


def _take(g: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[mask] for k, v in g.items()}


def split_splat(g: dict[str, np.ndarray], scene: dict, dynamic: list[dict], robot_points: np.ndarray | None,
                object_margin: float, robot_clearance: float) -> SplatParts:
    """Assign each Gaussian to a rigid object (inside its box, above the support), the robot at capture time (within
    `robot_clearance` of its surface), or the static scene."""
    from pipeline.mesh.fusion import near

    means = g["means"].astype(np.float64)
    free = np.ones(len(means), bool)
    objects = {}
    normal = np.asarray(scene["support_plane"]["normal"])
    height = means @ normal - scene["support_plane"]["offset"]
    for part in dynamic:
        lo = np.asarray(part["bbox_min"]) - object_margin
        hi = np.asarray(part["bbox_max"]) + object_margin
        inside = free & np.all((means >= lo) & (means <= hi), axis=1) & (height > object_margin / 2)
        objects[part["name"]] = _take(g, inside)
        free &= ~inside
    on_robot = np.zeros(len(means), bool)
    if robot_points is not None and len(robot_points):
        on_robot = free & near(means, robot_points, robot_clearance)
    return SplatParts(scene=_take(g, free & ~on_robot), robot=_take(g, on_robot), objects=objects)


def author_twin(recipe: Recipe, out_dir: Path, scene: dict, mesh_dir: Path, splat: SplatParts, capture,
                robot_usd: Path, upstream: dict[str, str], progress=None, servo=None) -> Path:
    """Write `out_dir/twin.usd` (+ the robot USD beside it); returns the twin's path. The drives carry `servo` (a
    `pipeline.twin.identify.ServoProfile`; default: the recipe's datasheet prior, `twin.servo_prior`)."""
    from pxr import Usd, UsdGeom, UsdPhysics

    from pipeline.twin.identify import ServoProfile

    say = progress or (lambda msg: None)
    cfg = recipe.twin
    parts = {p["name"]: p for p in scene["parts"]}
    unknown = sorted(set(cfg.dynamic_objects) - set(parts))
    if unknown:
        raise TwinError(f"twin.dynamic_objects names {unknown}, but models/mesh/scene.json has parts "
                        f"{sorted(parts)}: list the scene's object names")
    if not any(p["role"] == "support" for p in scene["parts"]):
        raise TwinError("models/mesh/scene.json has no support part: nothing for objects to rest on")
    out_dir.mkdir(parents=True, exist_ok=True)
    say("writing a portable copy of the SO-101 USD")
    write_portable_robot(robot_usd, out_dir / ROBOT_USD, upstream.get("robot_usd", ""))

    path = out_dir / TWIN_USD
    stage = Usd.Stage.CreateNew(str(path))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    UsdPhysics.SetStageKilogramsPerUnit(stage, 1.0)
    world = UsdGeom.Xform.Define(stage, "/World")
    stage.SetDefaultPrim(world.GetPrim())
    Usd.ModelAPI(world).SetKind("assembly")
    stage.GetRootLayer().customLayerData = {"twinloop": {
        "generator": "twinloop usd_twin",
        "frame": "robot base: metres, z up",
        "recipe_twin": json.dumps(cfg.model_dump(mode="json"), sort_keys=True),
        "recipe_twin_md5": cfg.md5(),
        "upstream_md5": dict(sorted(upstream.items())),
    }}

    _physics_scene(stage, cfg)
    materials = _physics_materials(stage, cfg)
    say("referencing the SO-101 and authoring its colliders, servos and home pose")
    _robot(stage, recipe)
    write_servo(stage, servo or ServoProfile.from_prior(cfg.servo_prior), "prior" if servo is None else "given")
    say("authoring colliders and rigid bodies from the collision mesh")
    for part in scene["parts"]:
        dynamic = part["name"] in cfg.dynamic_objects
        _part(stage, part, mesh_dir, materials["object" if dynamic else "support"], dynamic,
              splat.objects.get(part["name"]), cfg)
    say("authoring the splat and the cameras")
    _splat(stage, SPLAT_SCENE_PATH, splat.scene)
    robot_splat = _splat(stage, SPLAT_ROBOT_PATH, splat.robot)
    robot_splat.CreateVisibilityAttr(UsdGeom.Tokens.invisible)
    robot_splat.GetPrim().SetDocumentation("Gaussians on the robot at capture time: the robot has its own meshes "
                                           "and moves; kept to reproduce the capture photos")
    _cameras(stage, recipe, capture)
    stage.GetRootLayer().Save()
    return path


def write_portable_robot(src: Path, dst: Path, src_md5: str = "") -> dict[str, int]:
    """Copy the official SO-101 USD beside the twin, repaired so any USD tool reads it: its Omniverse MDL materials
    (OmniPBR.mdl and a material on NVIDIA's servers — unresolvable outside Isaac Sim) become UsdPreviewSurface with
    the same base colour, metalness and roughness; prims with a material binding get MaterialBindingAPI; an empty
    binding is removed; material subsets get a family type; CollisionAPI is removed from prims that are not geometry
    (the `collisions` Xforms). Returns how many of each were repaired."""
    from pxr import Sdf, Usd, UsdGeom, UsdPhysics, UsdShade

    dst.parent.mkdir(parents=True, exist_ok=True)
    if not Sdf.Layer.FindOrOpen(str(src)).Export(str(dst)):
        raise TwinError(f"could not copy the robot USD {src} to {dst}")
    stage = Usd.Stage.Open(str(dst))
    fixes = {"mdl_materials": 0, "binding_api": 0, "empty_bindings": 0, "subset_families": 0,
             "collision_api_off_geometry": 0}
    for prim in Usd.PrimRange.AllPrims(stage.GetPseudoRoot()):
        if prim.HasAPI(UsdPhysics.CollisionAPI) and not prim.IsA(UsdGeom.Gprim):  # only geometry collides
            prim.RemoveAPI(UsdPhysics.CollisionAPI)
            fixes["collision_api_off_geometry"] += 1
        if prim.IsA(UsdShade.Shader) and prim.HasAttribute("info:mdl:sourceAsset"):
            _mdl_to_preview_surface(UsdShade.Shader(prim))
            fixes["mdl_materials"] += 1
        binding = prim.GetRelationship("material:binding")
        if binding and not binding.GetTargets():
            prim.RemoveProperty("material:binding")
            fixes["empty_bindings"] += 1
        elif binding and not prim.HasAPI(UsdShade.MaterialBindingAPI):
            UsdShade.MaterialBindingAPI.Apply(prim)
            fixes["binding_api"] += 1
        if prim.IsA(UsdGeom.Subset) and UsdGeom.Subset(prim).GetFamilyNameAttr().Get() == "materialBind":
            parent = UsdGeom.Imageable(prim.GetParent())
            if UsdGeom.Subset.GetFamilyType(parent, "materialBind") == UsdGeom.Tokens.unrestricted:
                UsdGeom.Subset.SetFamilyType(parent, "materialBind", UsdGeom.Tokens.nonOverlapping)
                fixes["subset_families"] += 1
    stage.GetRootLayer().customLayerData = {"twinloop": {
        "source": "isaaclab-so101 embodiments/data/SO-ARM101-USD.usd", "source_md5": src_md5,
        "repairs": dict(fixes)}}
    stage.GetRootLayer().Save()
    return fixes


def _mdl_to_preview_surface(shader) -> None:
    """Replace an OmniPBR-style MDL shader by a UsdPreviewSurface with its base colour, metalness and roughness."""
    from pxr import Gf, Sdf, UsdShade

    prim = shader.GetPrim()

    def value(*names, default):
        for name in names:
            attr = prim.GetAttribute(name)
            if attr and attr.HasAuthoredValue():
                return attr.Get()
        return default

    colour = value("inputs:diffuse_color_constant", "inputs:diffuse_tint", default=Gf.Vec3f(0.18, 0.18, 0.18))
    metallic = float(value("inputs:metallic_constant", default=0.0))
    roughness = float(value("inputs:reflection_roughness_constant", default=0.5))
    for prop in list(prim.GetAuthoredProperties()):
        name = prop.GetName()
        if name.startswith(("inputs:", "outputs:", "info:mdl:")):
            prim.RemoveProperty(name)
    shader.SetShaderId("UsdPreviewSurface")
    shader.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).Set(Gf.Vec3f(*colour))
    shader.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(metallic)
    shader.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(roughness)
    surface = shader.CreateOutput("surface", Sdf.ValueTypeNames.Token)
    material = prim.GetParent()
    if material.IsA(UsdShade.Material):
        for prop in list(material.GetAuthoredProperties()):
            if prop.GetName().startswith("outputs:"):
                material.RemoveProperty(prop.GetName())
        UsdShade.Material(material).CreateSurfaceOutput().ConnectToSource(surface)


def _physics_scene(stage, cfg) -> None:
    from pxr import Gf, Sdf, Usd, UsdPhysics

    scene = UsdPhysics.Scene.Define(stage, "/World/PhysicsScene")
    scene.CreateGravityDirectionAttr(Gf.Vec3f(0.0, 0.0, -1.0))
    scene.CreateGravityMagnitudeAttr(cfg.gravity_m_s2)
    steps = int(round(1.0 / cfg.physics_dt_s))
    prim = scene.GetPrim()
    # the time step has no UsdPhysics attribute: Newton (its NewtonSceneAPI schema) and PhysX (Isaac Sim) each read
    # their own
    if Usd.SchemaRegistry().FindAppliedAPIPrimDefinition("NewtonSceneAPI"):
        prim.ApplyAPI("NewtonSceneAPI")
        prim.GetAttribute("newton:timeStepsPerSecond").Set(steps)
    else:  # Newton's schemas registered too late in this process: the same attribute, undeclared (Newton warns)
        prim.CreateAttribute("newton:timeStepsPerSecond", Sdf.ValueTypeNames.Int).Set(steps)
    prim.CreateAttribute("physxScene:timeStepsPerSecond", Sdf.ValueTypeNames.UInt).Set(steps)
    # MuJoCo solver options (Newton's MuJoCo solver reads mjc:option:*)
    prim.CreateAttribute("mjc:option:cone", Sdf.ValueTypeNames.Token).Set(cfg.friction_cone)
    prim.CreateAttribute("mjc:option:impratio", Sdf.ValueTypeNames.Float).Set(cfg.impratio)


def _physics_materials(stage, cfg) -> dict:
    from pxr import UsdPhysics, UsdShade

    out = {}
    for name, friction in (("support", cfg.support_friction), ("object", cfg.object_friction)):
        material = UsdShade.Material.Define(stage, f"/World/Looks/Physics/{name}")
        api = UsdPhysics.MaterialAPI.Apply(material.GetPrim())
        api.CreateStaticFrictionAttr(friction)
        api.CreateDynamicFrictionAttr(friction)
        api.CreateRestitutionAttr(cfg.restitution)
        out[name] = material
    return out


def _bind_physics_material(prim, material) -> None:
    from pxr import UsdShade

    UsdShade.MaterialBindingAPI.Apply(prim).Bind(material, UsdShade.Tokens.weakerThanDescendants,
                                                 "physics")


def _robot(stage, recipe: Recipe) -> None:
    """Reference the robot, make its colliders explicit and give each joint a drive at the home pose (its gains:
    `write_servo`)."""
    from isaaclab_so101.constants import HOME_JOINT_POS
    from pxr import Sdf, Usd, UsdGeom, UsdPhysics

    from pipeline.workcell.build import add_robot_colliders

    cell = recipe.workcell  # the robot's mounting (base yaw) and collider settings: geometry a real cell has too
    robot = UsdGeom.Xform.Define(stage, ROBOT_PATH)
    robot.GetPrim().GetReferences().AddReference(f"./{ROBOT_USD}")
    # the USD's own root transform (a 90 deg yaw) is kept; the calibrated base yaw goes outside it, as the workcell
    # build composes them
    own_ops = robot.GetOrderedXformOps()
    base_yaw = robot.AddRotateZOp(opSuffix="basePose")
    base_yaw.Set(cell.robot_base_yaw_deg)
    robot.SetXformOpOrder([base_yaw, *own_ops])
    root = Sdf.Path(ROBOT_PATH)
    add_robot_colliders(stage, root, cell)
    for prim in Usd.PrimRange(stage.GetPrimAtPath(root)):
        if prim.HasAPI(UsdPhysics.CollisionAPI):
            _contact_gap(prim, recipe.twin.contact_gap_m)
    for i, name in enumerate(SIM_JOINTS):
        joint = stage.GetPrimAtPath(root.AppendPath(f"joints/{name}"))
        if not joint.IsValid():
            raise TwinError(f"the SO-101 USD has no joint {name!r}")
        drive = UsdPhysics.DriveAPI.Apply(joint, "angular")
        home_deg = math.degrees(HOME_JOINT_POS[name])
        drive.CreateTargetPositionAttr(home_deg)
        # the initial joint state: PhysX's JointStateAPI attribute (Isaac Sim), and Newton's own (not yet in its
        # schema; Newton's default resolver reads only newton:*)
        for attr in ("state:angular:physics:position", "newton:angular:position"):
            joint.CreateAttribute(attr, Sdf.ValueTypeNames.Float).Set(home_deg)


#: customLayerData["twinloop"] key of the servo model the drives carry (what USD has no attribute for included)
SERVO_KEY = "servo"


def write_servo(stage, profile, source: str, fit: dict | None = None) -> None:
    """Set the SO-101 drives to a servo profile: stiffness, damping, max force (UsdPhysics drives, per degree),
    armature and friction loss (Newton's newton:* joint attributes). The latency and the calibration, which no USD
    schema holds, and where the profile came from (`source`: prior | identified | given; `fit`: its uncertainty)
    go into the layer's customLayerData["twinloop"]["servo"], read back by `read_servo`."""
    from pxr import Sdf, UsdPhysics

    root = Sdf.Path(ROBOT_PATH)
    for i, name in enumerate(SIM_JOINTS):
        joint = stage.GetPrimAtPath(root.AppendPath(f"joints/{name}"))
        if not joint.IsValid():
            raise TwinError(f"the SO-101 USD has no joint {name!r}")
        drive = UsdPhysics.DriveAPI.Apply(joint, "angular")
        # UsdPhysics angular drives are per degree; the servo model is per radian
        drive.CreateStiffnessAttr().Set(float(profile.kp[i]) * math.pi / 180)
        drive.CreateDampingAttr().Set(float(profile.kv[i]) * math.pi / 180)
        drive.CreateMaxForceAttr().Set(float(profile.torque_limit_nm[i]))
        joint.CreateAttribute("newton:armature", Sdf.ValueTypeNames.Float).Set(float(profile.armature[i]))
        joint.CreateAttribute("newton:friction", Sdf.ValueTypeNames.Float).Set(float(profile.frictionloss[i]))
    layer = stage.GetRootLayer()
    data = dict(layer.customLayerData)
    meta = dict(data.get("twinloop", {}))
    meta[SERVO_KEY] = json.dumps({"source": source, "profile": profile.to_json(), "fit": fit or {}}, sort_keys=True)
    data["twinloop"] = meta
    layer.customLayerData = data


def read_servo(usd_path: Path) -> dict:
    """The servo record `write_servo` left in a twin: {"source", "profile" (ServoProfile.to_json), "fit"}."""
    from pxr import Sdf

    layer = Sdf.Layer.FindOrOpen(str(usd_path))
    if layer is None:
        raise TwinError(f"cannot open {usd_path}")
    raw = dict(layer.customLayerData).get("twinloop", {}).get(SERVO_KEY)
    if not raw:
        raise TwinError(f"{usd_path} records no servo model: rebuild it with usd_twin")
    return json.loads(raw)


def _hull_mesh(stage, path, vertices: np.ndarray, faces: np.ndarray, material, time_constant: float):
    from pxr import Gf, Sdf, UsdGeom, UsdPhysics, Vt

    mesh = UsdGeom.Mesh.Define(stage, path)
    points = Vt.Vec3fArray([Gf.Vec3f(*map(float, v)) for v in vertices])
    mesh.CreatePointsAttr(points)
    mesh.CreateFaceVertexCountsAttr(Vt.IntArray([3] * len(faces)))
    mesh.CreateFaceVertexIndicesAttr(Vt.IntArray([int(i) for i in faces.reshape(-1)]))
    mesh.CreateExtentAttr(UsdGeom.Mesh.ComputeExtent(points))
    mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    mesh.CreatePurposeAttr(UsdGeom.Tokens.guide)  # collision geometry: the splat is the appearance
    UsdPhysics.CollisionAPI.Apply(mesh.GetPrim())
    UsdPhysics.MeshCollisionAPI.Apply(mesh.GetPrim()).CreateApproximationAttr(UsdPhysics.Tokens.convexHull)
    _bind_physics_material(mesh.GetPrim(), material)
    # MuJoCo contact softness (time constant, damping ratio)
    mesh.GetPrim().CreateAttribute("mjc:solref", Sdf.ValueTypeNames.Float2).Set(Gf.Vec2f(time_constant, 1.0))
    return mesh


def _contact_gap(prim, gap: float) -> None:
    from pxr import Sdf

    prim.CreateAttribute("newton:contactGap", Sdf.ValueTypeNames.Float).Set(gap)


def _part(stage, part: dict, mesh_dir: Path, material, dynamic: bool, gaussians: dict | None, cfg) -> None:
    import trimesh
    from pxr import Gf, Tf, UsdGeom, UsdPhysics, Vt

    name = Tf.MakeValidIdentifier(part["name"])
    path = f"/World/{'Objects' if dynamic else 'Colliders'}/{name}"
    xform = UsdGeom.Xform.Define(stage, path)
    origin = np.zeros(3)
    if dynamic:  # the body frame sits at the object's box centre, axes along the world's
        origin = (np.asarray(part["bbox_min"]) + np.asarray(part["bbox_max"])) / 2
        xform.AddTranslateOp().Set(Gf.Vec3d(*origin))
        UsdPhysics.RigidBodyAPI.Apply(xform.GetPrim())
        mass = part.get("mass_kg")
        if not mass:
            raise TwinError(f"scene.json part {part['name']!r} has no mass: it cannot be a rigid body")
        UsdPhysics.MassAPI.Apply(xform.GetPrim()).CreateMassAttr(float(mass))
    prim = xform.GetPrim()
    prim.SetCustomDataByKey("twinloop:role", part["role"])
    prim.SetCustomDataByKey("twinloop:hulls", Vt.StringArray(list(part["hulls"])))
    for k, rel in enumerate(part["hulls"]):
        hull = trimesh.load(mesh_dir / rel, force="mesh", process=False)
        mesh = _hull_mesh(stage, f"{path}/hull_{k:02d}", np.asarray(hull.vertices) - origin,
                          np.asarray(hull.faces), material, cfg.contact_time_constant_s)
        _contact_gap(mesh.GetPrim(), cfg.contact_gap_m)
    if dynamic and gaussians is not None and len(gaussians["means"]):
        local = dict(gaussians, means=(gaussians["means"] - origin).astype(np.float32))
        _splat(stage, f"{path}/Splat", local)


def _splat(stage, path: str, g: dict[str, np.ndarray]):
    from pxr import Gf, UsdVol, Vt

    prim = UsdVol.ParticleField3DGaussianSplat.Define(stage, path)
    n = len(g["means"])
    prim.CreatePositionsAttr(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(g["means"], np.float32)))
    wxyz = np.ascontiguousarray(g["quats"], np.float32)
    prim.CreateOrientationsAttr(Vt.QuatfArray([Gf.Quatf(float(q[0]), float(q[1]), float(q[2]), float(q[3]))
                                               for q in wxyz]))
    prim.CreateScalesAttr(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(g["scales"], np.float32)))
    prim.CreateOpacitiesAttr(Vt.FloatArray.FromNumpy(np.ascontiguousarray(g["opacities"], np.float32)))
    sh = np.ascontiguousarray(g["sh"], np.float32)
    degree = int(round(math.sqrt(sh.shape[1]))) - 1 if n else 0
    prim.CreateRadianceSphericalHarmonicsDegreeAttr(degree)
    prim.CreateRadianceSphericalHarmonicsCoefficientsAttr(Vt.Vec3fArray.FromNumpy(sh.reshape(-1, 3)))
    if n:  # a Gaussian reaches ~3 sigma
        reach = 3 * g["scales"].max(axis=1, keepdims=True)
        lo, hi = (g["means"] - reach).min(0), (g["means"] + reach).max(0)
    else:
        lo = hi = np.zeros(3)
    prim.CreateExtentAttr(Vt.Vec3fArray([Gf.Vec3f(*map(float, lo)), Gf.Vec3f(*map(float, hi))]))
    return prim


def _camera(stage, path: str, K: np.ndarray, width: int, height: int, camera_to_world: np.ndarray | None = None):
    """A USD camera with pinhole intrinsics K at a width x height image; USD cameras look down -Z with +Y up, the
    OpenGL convention of nerfstudio's transform_matrix, so a capture pose is the prim's transform as is."""
    from pxr import Gf, UsdGeom

    cam = UsdGeom.Camera.Define(stage, path)
    pixel = _APERTURE_MM / width  # aperture units per pixel
    cam.CreateProjectionAttr(UsdGeom.Tokens.perspective)
    cam.CreateHorizontalApertureAttr(_APERTURE_MM)
    cam.CreateFocalLengthAttr(float(K[0, 0] * pixel))
    cam.CreateVerticalApertureAttr(float(height * pixel * K[0, 0] / K[1, 1]))
    cam.CreateHorizontalApertureOffsetAttr(float((K[0, 2] - width / 2) * pixel))
    cam.CreateVerticalApertureOffsetAttr(float((height / 2 - K[1, 2]) * pixel * K[0, 0] / K[1, 1]))
    cam.CreateClippingRangeAttr(Gf.Vec2f(0.01, 100.0))
    cam.GetPrim().SetCustomDataByKey("twinloop:resolution", Gf.Vec2i(width, height))
    if camera_to_world is not None:
        cam.AddTransformOp().Set(Gf.Matrix4d(np.asarray(camera_to_world, dtype=np.float64).T.tolist()))
    return cam


def camera_intrinsics(camera_prim) -> tuple[np.ndarray, int, int]:
    """(K, width, height) of a camera authored by `_camera` (the inverse of its aperture arithmetic)."""
    from pxr import UsdGeom

    cam = UsdGeom.Camera(camera_prim)
    width, height = camera_prim.GetCustomDataByKey("twinloop:resolution")
    pixel = cam.GetHorizontalApertureAttr().Get() / width
    fx = cam.GetFocalLengthAttr().Get() / pixel
    fy = fx * height * pixel / cam.GetVerticalApertureAttr().Get()
    cx = width / 2 + cam.GetHorizontalApertureOffsetAttr().Get() / pixel
    cy = height / 2 - cam.GetVerticalApertureOffsetAttr().Get() / pixel * fy / fx
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), int(width), int(height)


def _cameras(stage, recipe: Recipe, capture) -> None:
    from pxr import Gf, UsdGeom

    from pipeline.capture.stage import look_at_camera_to_world, pinhole_K

    cams = recipe.workcell.cameras
    front_K = pinhole_K(cams.width, cams.height, cams.front.fovy_deg)
    c2w = look_at_camera_to_world(np.asarray(cams.front.position), np.asarray(cams.front.look_at))
    _camera(stage, FRONT_CAMERA_PATH, front_K, cams.width, cams.height, c2w)
    # the wrist camera at the official mount offset on the gripper link (as the MuJoCo workcell has it)
    wrist = _camera(stage, WRIST_CAMERA_PATH, pinhole_K(cams.width, cams.height, cams.wrist.fovy_deg), cams.width,
                    cams.height)
    wrist.AddTranslateOp().Set(Gf.Vec3d(*cams.wrist.offset_pos))
    roll = math.radians(cams.wrist.offset_roll_deg)
    wrist.AddOrientOp().Set(Gf.Quatf(math.cos(roll / 2), math.sin(roll / 2), 0.0, 0.0))
    UsdGeom.Scope.Define(stage, CAPTURE_PATH)
    for i, frame in enumerate(capture.frames):
        cam = _camera(stage, f"{CAPTURE_PATH}/view_{i:03d}", capture.K, capture.width, capture.height,
                      frame.camera_to_world)
        cam.GetPrim().SetCustomDataByKey("twinloop:image", str(Path(frame.image).relative_to(capture.root)))
