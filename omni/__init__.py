"""omni: one autoregressive decoder for text, speech, images and video."""
__version__ = "0.1.0"
