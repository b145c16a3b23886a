"""The suite's own isolation: tests train on the data they make, never on the real CIFAR-10 by accident."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def environment_of_a_module_fixture() -> dict:
    return {key: os.environ.get(key) for key in ("CNNKIT_DATA", "CNNKIT_CACHE", "CNNKIT_CIFAR10_URL")}


def test_module_fixtures_see_no_cnnkit_data(environment_of_a_module_fixture):
    """Module-scoped fixtures run before function-scoped ones; under CI's CNNKIT_DATA a module fixture
    that trains on a tiny folder (data.root) would otherwise read the real dataset, which CNNKIT_DATA
    beats data.root for."""
    env = environment_of_a_module_fixture
    assert env["CNNKIT_DATA"] is None
    assert env["CNNKIT_CACHE"] and "cnnkit-cache" in env["CNNKIT_CACHE"]
    assert env["CNNKIT_CIFAR10_URL"].startswith("http://127.0.0.1:9/")

