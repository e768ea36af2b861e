"""The one checkpoint loader: a run or step folder written by train.py -> the model it holds.

    model, cfg, step = load_checkpoint("runs/omni-tiny", decoder_shape, task="lm")

The model is built from the checkpoint's own config with ``model.init_from`` cleared (the weights are
in the checkpoint: a pretrained file is never read again), every tensor name and shape is checked
against that model before loading, and the model comes back in eval mode. Text models
(omni/infer/text.py), OmniChat (omni/infer/chat.py) and the RBR grader / reward model
(omni/align/models.py) all load through here.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from omni.config import Config, ConfigError
from omni.conversation import OmniVocab
from omni.io.tensors import check_sha256
from omni.model.decoder import Decoder
from omni.model.omni import OmniModel
from omni.train.checkpoint import load_model_state, resolve_checkpoint

Tensor = torch.Tensor

# The omni-tiny checkpoint that ships inside omni (a step folder: weights stored in bfloat16, its
# tokenizers, vocab.json), with its model card; `make demo` talks with it. Digests of every weight file.
SHIPPED_OMNI = Path(__file__).resolve().parent.parent / "assets" / "omni-tiny"
SHIPPED_OMNI_SHA256 = {
    "model.safetensors": "c2a002fc871ee82f14377a33395e799d486c78e07e6737fd7e61a372c9e63c6b",
    "tokenizers/codec/model.safetensors": "47e53d54e8ac65e104f7aaf3538ab5d37110da52c7d4f0199b131702cd6f872e",
    "tokenizers/image/model.safetensors": "8589e67de3bc46145089fc866b7cd804e16009941b6de72224e4bdf3124d2f99",
    "tokenizers/text/spm.model": "2880444d2ee445b1fbc0f956b2b6f58d0e47bacebc75252460115cb74c402391",
    "tokenizers/video/model.safetensors": "adad3e4d82cce880a7f71728566be5f7187d982d713e5eb76cc163304d659607",
}


def read_checkpoint(checkpoint: str | Path) -> tuple[Config, dict[str, Tensor], Path]:
    """(config, weights, step folder) of a run folder (follows ``latest``) or step folder.
    Raises :class:`omni.train.checkpoint.CheckpointError` saying what is missing."""
    step = resolve_checkpoint(checkpoint)
    cfg, state = load_model_state(step)
    return cfg, state, step


def load_weights(model: nn.Module, state: dict[str, Tensor], step: Path) -> nn.Module:
    """Load ``state`` into ``model`` (strict) and return it in eval mode. Raises ConfigError naming
    the tensors whose shape differs and the missing / unexpected names, before loading anything; a
    tensor the model lists in ``retired_weights`` (name -> what to do) adds that advice."""
    expected = model.state_dict()
    problems = [f"{k}: config {tuple(expected[k].shape)} vs file {tuple(v.shape)}"
                for k, v in state.items() if k in expected and expected[k].shape != v.shape]
    if missing := sorted(set(expected) - set(state)):
        problems.append(f"missing in file: {missing[:5]}")
    if unexpected := sorted(set(state) - set(expected)):
        problems.append(f"not in the model: {unexpected[:5]}")
        retired = getattr(model, "retired_weights", {})
        problems += [retired[k] for k in unexpected if k in retired]
    if problems:
        raise ConfigError(
            f"the config {step / 'config.yaml'} does not match the weights {step / 'model.safetensors'}: "
            + "; ".join(problems[:8])
        )
    model.load_state_dict(state)
    return model.eval()


def shape_only(cfg: Config) -> Config:
    """``cfg`` with ``model.init_from`` cleared: building it gives random weights of the right shape."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=""))


def load_checkpoint(checkpoint: str | Path, build: Callable[[Config], nn.Module], task: Optional[str] = None,
                    device: str | torch.device = "cpu") -> tuple[nn.Module, Config, Path]:
    """(model in eval mode on ``device``, its config as saved, step folder).

    ``build(cfg)`` makes the untrained model of the checkpoint's config (``model.init_from`` cleared);
    ``task``, when given, must be the task that wrote the checkpoint (ValueError otherwise).
    """
    cfg, state, step = read_checkpoint(checkpoint)
    if task is not None and cfg.task != task:
        raise ValueError(f"{step} is a {cfg.task!r} checkpoint, not an {task} one (train it with configs/{task}-*.yaml)")
    model = load_weights(build(shape_only(cfg)), state, step)
    return model.to(device), cfg, step


def decoder_shape(cfg: Config) -> Decoder:
    """The bare decoder of ``cfg.model`` (a ``build`` for :func:`load_checkpoint`)."""
    return Decoder(cfg.model)


def omni_model_shape(cfg: Config, vocab: OmniVocab, codewords: Tensor) -> OmniModel:
    """The bare omni model of ``cfg`` over ``vocab`` reading audio through ``codewords`` [K,
    codebook_size, codec dim] (its codec's ``quantizer.codebooks``; with ``functools.partial``, a
    ``build`` for :func:`load_checkpoint`); ``cfg`` is not modified."""
    return OmniModel(Decoder(dataclasses.replace(cfg.model, vocab_size=vocab.size)), cfg.section("omni"), vocab, codewords)


def shipped_omni() -> Path:
    """The step folder of the trained omni-tiny that ships in omni/assets/omni-tiny (MODEL_CARD.md there
    gives the commands, data, steps, CPU time and metrics), after checking the sha256 of each of its
    weight files against :data:`SHIPPED_OMNI_SHA256`. Load it with ``OmniChat.load(shipped_omni())``.

    Raises ValueError naming a damaged or missing file."""
    check_sha256(SHIPPED_OMNI, SHIPPED_OMNI_SHA256,
                 "Reinstall omni, or train the model with `python -m omni.demo --only omni --train` (docs/omni.md).")
    return resolve_checkpoint(SHIPPED_OMNI)
