"""Reading and writing PLY vertex clouds (points, Gaussian splats) with named scalar properties.

Writes binary little-endian (what COLMAP, nerfstudio and the INRIA 3DGS code write); reads binary little/big-endian
and ASCII. Only the first element (`vertex`) is read: enough for point clouds and splats, which have no faces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_PLY_TO_NUMPY = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2", "ushort": "u2",
    "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}
_NUMPY_TO_PLY = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
                 "f4": "float", "f8": "double"}


class PlyError(ValueError):
    """The file is not a PLY vertex cloud this module can read."""


def write_ply(path: str | Path, vertices: dict[str, np.ndarray]) -> Path:
    """Write one `vertex` element whose properties are the given 1-D arrays (all the same length), in order."""
    path = Path(path)
    if not vertices:
        raise PlyError("no vertex properties to write")
    n = len(next(iter(vertices.values())))
    dtype = []
    for name, values in vertices.items():
        values = np.asarray(values)
        if values.shape != (n,):
            raise PlyError(f"property {name!r} has shape {values.shape}, expected ({n},)")
        code = values.dtype.str.lstrip("<>|=")
        if code not in _NUMPY_TO_PLY:
            raise PlyError(f"property {name!r}: dtype {values.dtype} has no PLY type")
        dtype.append((name, "<" + code))
    table = np.empty(n, dtype=dtype)
    for name, values in vertices.items():
        table[name] = values
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property {_NUMPY_TO_PLY[code.lstrip('<')]} {name}" for name, code in dtype]
    header.append("end_header")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(table.tobytes())
    return path


def read_ply(path: str | Path) -> dict[str, np.ndarray]:
    """The first element's properties as arrays, by name."""
    path = Path(path)
    if not path.is_file():
        raise PlyError(f"no PLY file at {path}")
    data = path.read_bytes()
    if not data.startswith(b"ply"):
        raise PlyError(f"{path} is not a PLY file (no 'ply' magic)")
    end = data.find(b"end_header")
    if end < 0:
        raise PlyError(f"{path}: PLY header has no end_header")
    body_start = data.index(b"\n", end) + 1
    lines = data[:end].decode("ascii", errors="replace").splitlines()
    fmt, count, props, first_element = None, 0, [], None
    for line in lines:
        words = line.split()
        if not words:
            continue
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            if first_element is not None:
                break  # later elements (faces, ...) are not read
            first_element, count = words[1], int(words[2])
        elif words[0] == "property" and first_element is not None:
            if words[1] == "list":
                raise PlyError(f"{path}: list properties in element {first_element!r} are not supported")
            if words[1] not in _PLY_TO_NUMPY:
                raise PlyError(f"{path}: unknown property type {words[1]!r}")
            props.append((words[2], _PLY_TO_NUMPY[words[1]]))
    if first_element != "vertex" or not props:
        raise PlyError(f"{path}: expected a first element 'vertex' with properties, found {first_element!r}")
    if fmt == "ascii":
        text = data[body_start:].decode("ascii").split("\n")[:count]
        rows = np.array([row.split()[: len(props)] for row in text if row.strip()], dtype=np.float64)
        if len(rows) != count:
            raise PlyError(f"{path}: header says {count} vertices, file holds {len(rows)}")
        return {name: rows[:, i].astype(code) for i, (name, code) in enumerate(props)}
    if fmt not in ("binary_little_endian", "binary_big_endian"):
        raise PlyError(f"{path}: unsupported PLY format {fmt!r}")
    order = "<" if fmt == "binary_little_endian" else ">"
    dtype = np.dtype([(name, order + code) for name, code in props])
    if len(data) - body_start < count * dtype.itemsize:
        raise PlyError(f"{path}: truncated: {count} vertices need {count * dtype.itemsize} bytes")
    table = np.frombuffer(data, dtype=dtype, count=count, offset=body_start)
    return {name: table[name].astype(table[name].dtype.newbyteorder("=")) for name, _ in props}
