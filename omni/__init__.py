"""omni: one autoregressive decoder for text, speech, images and video."""
__version__ = "0.1.0"

__all__ = ["load_model", "TextGenerator"]


def __getattr__(name: str):
    # Lazy, so `import omni.config` (imported by omni.api itself) stays light and cycle-free.
    if name in __all__:
        from omni import api

        return getattr(api, name)
    raise AttributeError(f"module 'omni' has no attribute {name!r}")
