"""Fixtures the integration tests share (the suite-wide ones are in tests/conftest.py)."""

import shutil

import pytest


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A receiver root for one module's captures, made in-process (guestdisk.make_capture)."""
    d = tmp_path_factory.mktemp("rx")
    yield str(d)
    shutil.rmtree(d, ignore_errors=True)
