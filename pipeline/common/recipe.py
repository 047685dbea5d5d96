"""The recipe: `params.yaml` validated into typed, frozen models.

`params.yaml` is the only place hyper-parameters live. Dagster assets and DVC stages both read it through
`load_recipe`; an unknown or mistyped key is an error that names the key (and the closest valid one).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError

# each stage owns its recipe section's class (pipeline/<stage>/config.py); the recipe assembles them
from pipeline.bc.config import BcConfig
from pipeline.capture.config import CaptureConfig
from pipeline.demos.config import DemosConfig
from pipeline.eval.config import EvalConfig
from pipeline.mesh.config import MeshConfig
from pipeline.rl.config import RlConfig
from pipeline.splat.config import SplatConfig
from pipeline.twin.config import TwinConfig
from pipeline.workcell.config import ExpertConfig, WorkcellConfig
from pipeline.common.sections import Section


class ProjectConfig(Section):
    """Where DVC pushes artifacts (a relative path resolves against the project root: outside the work tree)."""

    dvc_remote: str = Field("../twinloop-dvc-store", description="path or URL of the default DVC remote; '' = none")


class Recipe(Section):
    """The whole of params.yaml."""

    project: ProjectConfig = ProjectConfig()
    workcell: WorkcellConfig = WorkcellConfig()
    expert: ExpertConfig = ExpertConfig()
    demos: DemosConfig = DemosConfig()
    bc: BcConfig = BcConfig()
    capture: CaptureConfig = CaptureConfig()
    splat: SplatConfig = SplatConfig()
    mesh: MeshConfig = MeshConfig()
    twin: TwinConfig = TwinConfig()
    rl: RlConfig = RlConfig()
    eval: EvalConfig = EvalConfig()

    def section_hash(self, section: str) -> str:
        """md5 of one section's canonical JSON: changes exactly when that stage's recipe changes."""
        return getattr(self, section).md5()


class RecipeError(ValueError):
    """params.yaml is missing, unreadable, or holds an unknown / invalid key."""


def load_recipe(path: str | Path = "params.yaml") -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: the top level must be a mapping of stage sections")
    return parse_recipe(raw, source=str(path))


def parse_recipe(raw: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(f"{source}: " + "; ".join(_explain(err) for err in exc.errors())) from None


def _explain(err: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        model = Recipe
        for part in loc[:-1]:
            field = model.model_fields.get(part)
            model = field.annotation if field is not None else None
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                model = None
                break
        valid = sorted(model.model_fields) if model is not None else []
        near = difflib.get_close_matches(loc[-1], valid, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else (f" (valid keys: {', '.join(valid)})" if valid else "")
        return f"unknown key '{key}'{hint}"
    return f"'{key}': {err['msg']}"
