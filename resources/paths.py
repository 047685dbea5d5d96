"""Where the project lives: the recipe and every artifact folder, resolved against one root."""


from pathlib import Path

import dagster as dg

from pipeline.common.recipe import Recipe, load_recipe


class ProjectPaths(dg.ConfigurableResource):
    """The project root (holding params.yaml, dvc.yaml and the DVC-tracked artifact folders)."""

    root: str = "."
    params_file: str = "params.yaml"

    @property
    def root_path(self) -> Path:
        return Path(self.root).resolve()

    @property
    def params_path(self) -> Path:
        return self.root_path / self.params_file

    def recipe(self) -> Recipe:
        return load_recipe(self.params_path)

    def artifact(self, relative: str) -> Path:
        """An artifact folder such as `models/workcell`, resolved against the root."""
        return self.root_path / relative
