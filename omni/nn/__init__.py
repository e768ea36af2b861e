"""Layers shared by several tokenizers (causal convolutions, finite scalar quantisation). Leaves: no omni imports
besides omni.streaming."""
