"""The object-level geometry gate of `collision_mesh`: each reconstructed object against the capture's ground truth
(the sim source has it), per object — size error per axis, centre error, yaw error, volume ratio and mass ratio —
against the thresholds of `mesh.object_gates`.

A scene-wide Chamfer distance is dominated by the table: a cube reconstructed at a third of its volume moves it by a
fraction of a millimetre. These numbers are what the twin's physics gets from the mesh (a cube's size decides the
grasp, its mass how it moves), so they are gated object by object.
"""

from __future__ import annotations

import numpy as np

AXES = ("long side", "short side", "height")


def oriented(size_m: list[float], yaw_deg: float) -> tuple[np.ndarray, float]:
    """(long side, short side, height) and the yaw of the long side, whichever footprint side came first."""
    size = np.asarray(size_m, dtype=float)
    if size[1] > size[0]:
        size, yaw_deg = size[[1, 0, 2]], yaw_deg + 90.0
    return size, yaw_deg


def yaw_error_deg(measured: float, truth: float, symmetry_deg: float) -> float:
    """The smallest angle between two footprint orientations that repeat every `symmetry_deg`."""
    d = (measured - truth) % symmetry_deg
    return float(min(d, symmetry_deg - d))


def object_errors(part: dict, truth: dict) -> dict:
    """How far one reconstructed object (a scene.json part) is from its ground truth (`truth.ground_truth_objects`):
    per-axis size error (mm, reconstruction − truth, in the object's own footprint axes), centre error (mm), yaw
    error (degrees, modulo the footprint's symmetry: 90° for a square one, else 180°), volume ratio, mass ratio."""
    size, yaw = oriented(part["size_m"], part.get("yaw_deg", 0.0))
    true_size, true_yaw = oriented(truth["size_m"], truth["yaw_deg"])
    square = true_size[1] >= 0.9 * true_size[0]
    errors = {
        "size_mm": (1000 * size).round(2).tolist(), "true_size_mm": (1000 * true_size).round(2).tolist(),
        "size_error_mm": (1000 * (size - true_size)).round(2).tolist(),
        "centre_error_mm": round(1000 * float(np.linalg.norm(np.asarray(part["centre"]) -
                                                              np.asarray(truth["centre"]))), 2),
        "yaw_error_deg": round(yaw_error_deg(yaw, true_yaw, 90.0 if square else 180.0), 2),
        "volume_ratio": round(part["volume_m3"] / truth["volume_m3"], 3) if truth.get("volume_m3") else None,
        "mass_ratio": None,
    }
    if truth.get("mass_kg") and part.get("mass_kg") is not None:
        errors["mass_kg"], errors["true_mass_kg"] = round(part["mass_kg"], 5), round(truth["mass_kg"], 5)
        errors["mass_ratio"] = round(part["mass_kg"] / truth["mass_kg"], 3)
    return errors


def gate_for(name: str, gates: dict):
    """The thresholds of object `name`: its own entry in `mesh.object_gates`, else the `default` entry (None: the
    object is measured, not gated)."""
    return gates.get(name, gates.get("default"))


def object_gate(parts: list[dict], truth: list[dict] | None, gates: dict) -> dict:
    """Every ground-truth object measured against the part that took its name (`_name_objects`), and every threshold
    it breaks as a sentence naming the object, the quantity, the axis and the error. Without ground truth (a real
    capture) nothing is measured: `{"measured": False}`."""
    if not truth:
        return {"measured": False, "objects": {}, "problems": []}
    by_name = {p["name"]: p for p in parts if p["role"] == "object"}
    objects, problems = {}, []
    for t in truth:
        name, gate = t["name"], gate_for(t["name"], gates)
        part = by_name.get(name)
        if part is None or "size_m" not in part:
            objects[name] = {"found": False}
            if gate is not None:
                problems.append(f"{name}: not found on the support (ground truth centre "
                                f"{', '.join(f'{1000 * v:.0f}' for v in t['centre'])} mm): see preview.png")
            continue
        e = {"found": True, **object_errors(part, t)}
        e["thresholds"] = None if gate is None else gate.model_dump(mode="json")
        objects[name] = e
        if gate is None:
            continue
        if gate.max_size_error_mm is not None:
            for axis, err, got, want in zip(AXES, e["size_error_mm"], e["size_mm"], e["true_size_mm"]):
                if abs(err) > gate.max_size_error_mm:
                    problems.append(f"{name}: {axis} {got:.1f} mm vs {want:.1f} mm true ({err:+.1f} mm, limit "
                                    f"±{gate.max_size_error_mm:g} mm)")
        if gate.max_centre_error_mm is not None and e["centre_error_mm"] > gate.max_centre_error_mm:
            problems.append(f"{name}: centre {e['centre_error_mm']:.1f} mm from the true one (limit "
                            f"{gate.max_centre_error_mm:g} mm)")
        if gate.max_yaw_error_deg is not None and e["yaw_error_deg"] > gate.max_yaw_error_deg:
            problems.append(f"{name}: yaw {e['yaw_error_deg']:.1f} deg off (limit {gate.max_yaw_error_deg:g} deg)")
        for key, label in (("volume_ratio", "volume"), ("mass_ratio", "mass")):
            allowed, value = getattr(gate, key), e[key]
            if allowed is not None and value is not None and not allowed.low <= value <= allowed.high:
                problems.append(f"{name}: {label} {value:.2f}× the true one (allowed {allowed.low:g}–"
                                f"{allowed.high:g}×)" + (f": {1000 * e['mass_kg']:.1f} g vs {1000 * e['true_mass_kg']:.1f} g"
                                                        if key == "mass_ratio" else ""))
    return {"measured": True, "objects": objects, "problems": problems}


def summary_line(name: str, e: dict) -> str:
    if not e.get("found"):
        return f"{name}: not found"
    size = " × ".join(f"{v:.1f}" for v in e["size_mm"])
    true = " × ".join(f"{v:.1f}" for v in e["true_size_mm"])
    vol = "" if e["volume_ratio"] is None else f", volume {e['volume_ratio']:.2f}×"
    return (f"{name}: {size} mm (true {true}), centre off {e['centre_error_mm']:.1f} mm, yaw off "
            f"{e['yaw_error_deg']:.1f}°{vol}" + ("" if e["mass_ratio"] is None else f", mass {e['mass_ratio']:.2f}×"))

