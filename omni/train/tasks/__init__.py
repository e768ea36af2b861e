"""Every training task: importing a module registers its task with omni.train.task.register_task.

lm (text), omni (the any-to-any model), codec, image, video (the tokenizers). The RBR tasks live in
omni/align (they sit above train/: see docs/architecture.md)."""
