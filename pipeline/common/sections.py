"""The building blocks of every recipe section: a frozen, strict pydantic model with a canonical md5, and the
shared field types. Each stage declares its own section in `pipeline/<stage>/config.py` from these."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

Vec2 = tuple[float, float]
Vec3 = tuple[float, float, float]
Joint6 = tuple[float, float, float, float, float, float]
Positive = Annotated[float, Field(gt=0)]
PolicyOption = str | int | float | bool | None | list[int | float] | dict[str, str]  # a lerobot config value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def md5(self, exclude: set[str] | None = None) -> str:
        """md5 of the canonical JSON of this section (without the `exclude` fields)."""
        payload = json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True)
        return hashlib.md5(payload.encode()).hexdigest()


class Range(Section):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self
