"""The shared decoder, its attention entry point and generation."""
from omni.model.attention import AttentionMask, attention  # noqa: F401
from omni.model.decoder import Decoder  # noqa: F401
from omni.model.sampling import SamplingConfig, generate  # noqa: F401
