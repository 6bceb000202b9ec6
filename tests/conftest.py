"""Shared fixtures. Everything runs on CPU with random weights and no network."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Idle OpenMP threads sleep instead of spinning: on 2 shared cores with other processes
# running, spinning made a 2-thread train step of test_resnet 20x slower (980 ms vs 50 ms).
# Set before torch loads its OpenMP runtime; worker processes (--jobs, Ray) inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (the whole zoo)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def teacher():
    """A seeded random-weight timm ``test_resnet`` with 10 classes (the fit tests' teacher)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray (2 CPUs, a small object store, no dashboard) for the whole session, shut
    down at its end: test_ray_serve's Serve app and test_trials' Tune trials share it, so Ray
    starts once."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=80 << 20, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
