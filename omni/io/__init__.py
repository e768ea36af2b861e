"""Leaves of the library: file formats and signal I/O (audio, video, GGUF, weight files). They import no other omni module."""
