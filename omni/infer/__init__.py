"""Serving: text generation (text), one generation step of the omni model (decoding), offline
any-to-any replies (reply), streaming speech-to-speech sessions (session) with their turn-taking
rules (turns) and VAD (vad), the fast decode path (compile), and OmniChat (chat, ``python -m
omni.chat``); docs/omni.md explains the whole."""
