"""What every asset does around its stage: stage errors become a Dagster Failure, the outputs are committed to DVC,
and the materialization carries the DVC md5 as data version, the lineage, the recipe hash and the timings."""

from __future__ import annotations

import base64
import io
from contextlib import contextmanager

import dagster as dg

from pipeline.common.artifacts import split_timings


@contextmanager
def stage_errors(*errors: type[BaseException]):
    """A stage's input errors (bad recipe, missing upstream, broken files) fail the run with the stage's message,
    not a traceback."""
    try:
        yield
    except errors as exc:
        raise dg.Failure(description=str(exc)) from exc


def committed(stage: str, dvc, recipe, section: str, metadata: dict, metrics: dict | None = None
              ) -> dg.MaterializeResult:
    """`dvc commit` the stage's outputs and describe the materialization: data version = the output md5, lineage,
    the recipe section's hash, the wall-clock figures of `metrics` (never in the artifact itself), then `metadata`."""
    md5 = dvc.commit_stage(stage)
    timings = split_timings(metrics)[1] if metrics else {}
    return dg.MaterializeResult(
        data_version=dg.DataVersion(md5),
        metadata={**dvc.lineage_metadata(stage), "recipe_hash": recipe.section_hash(section),
                  **({"timings": dg.MetadataValue.json(timings)} if timings else {}), **metadata},
    )


def image_md(path, width: int = 640) -> str:
    """An inline image for the Dagster UI, downscaled so the event log stays small."""
    from PIL import Image

    image = Image.open(path)
    image.thumbnail((width, width * image.height // image.width))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return f"![preview](data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()})"
