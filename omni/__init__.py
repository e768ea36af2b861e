"""omni: one autoregressive decoder for text, speech, images and video."""
import importlib

__version__ = "0.1.0"

# Public API, imported lazily so `import omni.config` (imported by these modules) stays light.
_PUBLIC = {"load_model": "omni.infer.text", "TextGenerator": "omni.infer.text", "OmniChat": "omni.infer.chat"}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'omni' has no attribute {name!r}")
