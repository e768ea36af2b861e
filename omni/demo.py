"""``python -m omni.demo`` (``make demo``): the text foundation, then the omni model, end to end.

A shim: the demo builds corpora and trains tokenizers, so it lives outside the library, in
eval/demo_pipeline.py (installed as ``omni.eval.demo_pipeline``; its docstring lists the stages). The
library never imports eval/ or data/, so this runs that module by name.
"""
import runpy

if __name__ == "__main__":
    runpy.run_module("omni.eval.demo_pipeline", run_name="__main__", alter_sys=True)
