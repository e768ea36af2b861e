"""Suite-wide settings for `make test`, which runs the suite in two pytest-xdist workers (one per core
of the 2-core CI box), each taking whole test files (``--dist loadfile``) in collection order
(``--no-loadscope-reorder``):

* each worker computes on one thread, and so do the processes its tests start (torchrun ranks, the
  Triton interpreter child, the benchmark scripts): two workers of two threads each would
  oversubscribe the cores;
* files that hold slow tests are collected first, so that a long file is not the last one taken while
  the other worker sits idle (longest first is the classic rule for balancing jobs over machines).
"""
import os

import torch


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within a file stays
