"""Inference runtimes behind one small interface, chosen by the manifest."""

from typing import Any

from agent.runtime.base import LoadedModel, ModelLoadError, Runtime, golden_check, load_model
from agent.runtime.cache import ModelCache

__all__ = ["LoadedModel", "ModelCache", "ModelLoadError", "Runtime", "golden_check", "litert_interpreter", "load_model"]


def litert_interpreter() -> Any:
    """The LiteRT ``Interpreter`` class the agent loads .tflite models with; ImportError when none is installed.

    For tools that read a .tflite model the way the device will (the simulator's bundle builder).
    """
    from agent.runtime.litert import interpreter_class

    return interpreter_class()[1]
