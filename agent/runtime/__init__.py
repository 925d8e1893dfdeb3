"""Inference runtimes behind one small interface, chosen by the manifest."""

from agent.runtime.base import LoadedModel, ModelLoadError, Runtime, golden_check, load_model

__all__ = ["LoadedModel", "ModelLoadError", "Runtime", "golden_check", "load_model"]
