"""What a test needs from this environment: a missing package fails the test where the run requires it
(`make test` sets MCN_REQUIRE_ROS, and MCN_REQUIRE_ONNX on Python >= 3.11, where requirements/dev.txt installs
onnx and onnxruntime; scripts/launch_from_sources.sh sets MCN_REQUIRE_LAUNCH) and skips it elsewhere."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def unavailable(required_by: str, failure: str, skip: str) -> NoReturn:
    """Fail with ``failure`` where the environment variable ``required_by`` is 1, else skip with ``skip``
    (at module level too)."""
    if os.environ.get(required_by) == "1":
        pytest.fail(failure)
    pytest.skip(skip, allow_module_level=True)


def onnx_modules() -> tuple[ModuleType, ModuleType]:
    """onnx and onnxruntime (the optional ONNX Runtime backend's packages), imported."""
    try:
        return importlib.import_module("onnx"), importlib.import_module("onnxruntime")
    except ImportError as error:
        unavailable(
            "MCN_REQUIRE_ONNX",
            f"onnx and onnxruntime are required here but do not import ({error}); run `make setup`",
            f"optional packages onnx / onnxruntime (requirements/dev.txt, Python >= 3.11): {error}",
        )
