"""``python -m omni.chat``: talk to a trained omni model from the command line.

A shim: the command line and :class:`OmniChat` live in omni/infer/chat.py.
"""
from omni.infer.chat import OmniChat, main  # noqa: F401  (`from omni.chat import OmniChat` keeps working)

if __name__ == "__main__":
    main()
