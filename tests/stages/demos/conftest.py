"""Fixtures of the demos tests."""

import shutil

import pytest


@pytest.fixture
def demos_and_inbox(recorded, tmp_path):
    """(data/demos, data/inbox): the demos a copy of the recorded dataset, the inbox empty."""
    demos_root, inbox = tmp_path / "demos", tmp_path / "inbox"
    shutil.copytree(recorded, demos_root)
    inbox.mkdir()
    return demos_root, inbox
