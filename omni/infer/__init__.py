"""Serving the omni model: one generation step (decoding), offline any-to-any generation (generate),
streaming speech-to-speech sessions with VAD and barge-in (session, vad). The user-facing API is
omni/chat.py (OmniChat, ``python -m omni.chat``); docs/omni.md explains the whole."""
