"""Inference runtimes behind one small interface, chosen by the manifest."""

from agent.runtime.base import LoadedModel, Runtime, RuntimeError_, golden_check, load_model

__all__ = ["LoadedModel", "Runtime", "RuntimeError_", "golden_check", "load_model"]
