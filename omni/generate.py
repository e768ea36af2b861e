"""``python -m omni.generate``: generate text from a checkpoint or a config on the command line.

    python -m omni.generate --config configs/smollm2-135m.yaml --prompt "What is the capital of France?"
    python -m omni.generate --checkpoint runs/tiny --prompt "Once upon a time" --temperature 0.8 --top-k 50

A shim: the command line lives in omni/infer/text.py (:func:`omni.infer.text.main`).
"""
from omni.infer.text import cli, main  # noqa: F401  (main: the command line as a function)

if __name__ == "__main__":
    cli()
