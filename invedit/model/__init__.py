"""The model adapter: the only package of invedit that imports diffusers and transformers."""
from .adapter import DTYPES, Model, ModelLoadError, ModelSource, load_model, pick_device, resolve_source

__all__ = ["DTYPES", "Model", "ModelLoadError", "ModelSource", "load_model", "pick_device", "resolve_source"]
