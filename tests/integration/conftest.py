"""Fixtures the integration tests share (the suite-wide ones are in tests/conftest.py)."""

import os
import shutil

import pytest


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A receiver root for one module's captures, made in-process (guestdisk.make_capture)."""
    d = tmp_path_factory.mktemp("rx")
    yield str(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def glance(tmp_path_factory):
    """The tier's cloud: one real glance-api (tests/testbed/glance.py), as cloud `test` in a
    clouds.yaml (.clouds), shared by every publish test."""
    from tests.testbed import glance as tglance

    why = tglance.available()
    if why:
        pytest.skip(why)
    g = tglance.Glance(workdir=str(tmp_path_factory.mktemp("glance"))).start()
    g.clouds = g.write_clouds_yaml(os.path.join(g.work, "clouds.yaml"), cloud="test")
    yield g
    g.cleanup()
