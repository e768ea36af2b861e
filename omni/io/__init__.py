"""Leaves of the library: file formats and signal I/O (audio, video, GGUF). They import no other omni module."""
