"""The shared decoder, its attention entry point and sampling (generation loops: omni/infer)."""
from omni.model.attention import AttentionMask, attention  # noqa: F401
from omni.model.decoder import Decoder  # noqa: F401
from omni.model.sampling import SamplingConfig, sample  # noqa: F401
