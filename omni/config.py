"""The one config system: dataclasses, YAML files and ``key=value`` overrides.

A config file is a YAML mapping whose top-level keys are the fields of :class:`Config`
(``model``, ``tokenizer``, ``data``, ``train``, ...). Any field can be overridden on the command
line as ``section.field=value``; values are parsed as YAML scalars (``train.lr=3e-4``,
``model.qk_norm=true``). Unknown keys and wrong types raise :class:`ConfigError` naming the key.

Other parts of omni (the decoder's shape ``model``, tokenizers, the omni model, RBR) define their
section's dataclass beside the code that reads it; :data:`SECTIONS`, the one registry, names where
each is defined, so there is still one config object, one loader and one override syntax. ``model``
is also a field of :class:`Config` (``cfg.model``), filled through that registry.

Sections differ by lifetime (docs/architecture.md, "Config lifetimes"): the model's identity
(``model``, ``tokenizer`` and the subsystem sections) is what a checkpoint is; :data:`RUN_SECTIONS`
(``data``, ``train``, the omni task's ``omni_train``) belong to one training run; ``serving`` is
chosen each time a model is served, so a checkpoint's config.yaml leaves it out and ``--resume``
does not compare it.
"""
from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the offending key."""


@dataclass
class TokenizerConfig:
    """Text tokenizer: a sentencepiece model we train, or the BPE inside a GGUF file."""

    kind: str = "sentencepiece"  # "sentencepiece" | "gguf"
    # sentencepiece: path of the .model file (built by data/build_text.py when missing);
    # gguf: "smollm2-135m" or a path to a .gguf file.
    path: str = ""
    vocab_size: int = 8_000  # sentencepiece training target, specials included

    def validate(self) -> None:
        if self.kind not in ("sentencepiece", "gguf"):
            raise ConfigError(f"tokenizer.kind must be 'sentencepiece' or 'gguf', got {self.kind!r}")


@dataclass
class DataConfig:
    """Where the training corpus lives and how rows are packed."""

    # A folder of shards written by a builder in data/ (e.g. data/build_text.py).
    path: str = ".cache/data/text"
    seq_len: int = 256
    num_workers: int = 0
    shuffle_buffer: int = 1000  # samples; shard corpora only (omni/train/shards.py)

    def validate(self) -> None:
        if self.seq_len <= 1:
            raise ConfigError(f"data.seq_len must be > 1, got {self.seq_len}")


@dataclass
class TrainConfig:
    """Optimisation, precision, logging and checkpointing."""

    out_dir: str = "runs/tiny"
    steps: int = 200
    batch_size: int = 8  # rows per micro-batch per process
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 1234
    # Fine-tuning: a run or step folder whose model weights this run starts from (a fresh optimiser,
    # schedule and data order at step 0); "" = the model's own initialisation. --resume overrides it.
    finetune_from: str = ""
    dtype: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU) | "fp32" | "bf16"
    activation_checkpointing: bool = False
    log_every: int = 10
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    tensorboard: bool = True
    # GPU peak dense bf16 FLOP/s for MFU; 0 = look it up from the device name (H100: 989e12).
    peak_flops: float = 0.0

    def validate(self) -> None:
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.dtype must be auto, fp32 or bf16, got {self.dtype!r}")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "ckpt_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.lr <= 0 or self.min_lr < 0:
            raise ConfigError("train.warmup_steps, train.lr and train.min_lr must be non-negative (lr > 0)")


@dataclass
class ServingConfig:
    """How a spoken conversation is served (omni/infer/session.py): read at serving time, never part of
    a checkpoint. Times in milliseconds; VAD probabilities in [0, 1]."""

    vad_threshold: float = 0.5  # speech probability above which a frame counts as speech
    end_of_turn_ms: int = 480  # silence after speech that ends the user's turn
    # Of that silence, what the model reads: the rest is cut from the turn, since training utterances
    # end with 0-240 ms of it and more silence makes the model answer worse (docs/benchmarks.md).
    end_of_turn_keep_ms: int = 160
    barge_in_ms: int = 160  # user speech during a reply that interrupts it
    max_reply_frames: int = 150  # longest spoken reply, in codec frames
    # Voice guardrail (omni/infer/guardrail.py): stop a reply whose voice is not the preset one.
    voice_guardrail: bool = True
    guardrail_threshold: float = 0.75  # cosine to the preset voice below which a reply stops (docs/benchmarks.md)
    guardrail_window_ms: int = 1000  # latest reply audio embedded at each check (docs/benchmarks.md)
    guardrail_every_ms: int = 480  # reply audio between checks
    # reply audio before the first check: less is too little speech to tell voices apart (docs/benchmarks.md)
    guardrail_first_ms: int = 900

    def validate(self) -> None:
        if not 0.0 <= self.vad_threshold <= 1.0:
            raise ConfigError(f"serving.vad_threshold must be in [0, 1], got {self.vad_threshold}")
        if not -1.0 <= self.guardrail_threshold <= 1.0:
            raise ConfigError(f"serving.guardrail_threshold is a cosine, in [-1, 1]; got {self.guardrail_threshold}")
        for name in ("end_of_turn_ms", "barge_in_ms", "max_reply_frames", "guardrail_window_ms", "guardrail_every_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"serving.{name} must be positive, got {getattr(self, name)}")
        if self.end_of_turn_keep_ms < 0:
            raise ConfigError(f"serving.end_of_turn_keep_ms must be >= 0, got {self.end_of_turn_keep_ms}")
        if self.guardrail_first_ms < 0:
            raise ConfigError(f"serving.guardrail_first_ms must be >= 0, got {self.guardrail_first_ms}")


@dataclass
class Config:
    """The whole run: one object, loaded from YAML with overrides."""

    name: str = "unnamed"
    task: str = "lm"  # what train.py trains; see omni/train/tasks.py
    # The decoder's shape: a registered section (omni/model/decoder.py) with an attribute of its own.
    model: Any = field(default_factory=lambda: section_class("model")())
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    # Sections registered by other subsystems (codec, image, omni, rbr, ...), by name.
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "Config":
        for section in (self.model, self.tokenizer, self.data, self.train, self.serving, *self.extra.values()):
            if hasattr(section, "validate"):
                section.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "extra"}
        out.update({k: _to_plain(v) for k, v in self.extra.items()})
        return out

    def section(self, name: str) -> Any:
        """A registered section (e.g. ``cfg.section("codec")``), default-constructed if absent."""
        if name in {f.name for f in dataclasses.fields(self)}:
            return getattr(self, name)
        if name not in self.extra:
            cls = section_class(name)
            if cls is None:
                raise ConfigError(f"unknown config section {name!r}; known: {sorted(SECTIONS)}")
            self.extra[name] = cls()
        return self.extra[name]


# The one section registry: each subsystem's section and the dataclass (``module:Class``) that
# defines it beside the code that reads it. Resolved on first use, so loading a config imports only
# the subsystems it names, and omni.config (a leaf) imports none of them: the modules import
# omni.config (ConfigError), never the reverse.
SECTIONS = {
    "model": "omni.model.decoder:ModelConfig",
    "codec": "omni.tokenizers.codec:CodecConfig",
    "image_tok": "omni.tokenizers.image:ImageTokConfig",
    "video_tok": "omni.tokenizers.video:VideoTokConfig",
    "omni": "omni.model.omni:OmniConfig",
    "rbr": "omni.align.config:RBRConfig",
    "vocoder": "omni.train.tasks.vocoder:VocoderConfig",
    "omni_train": "omni.train.tasks.omni:OmniTrainConfig",
}
# Sections that belong to one training run: saved with a checkpoint, but ``--resume`` may change them.
RUN_SECTIONS = ("data", "train", "omni_train")
# Sections that belong to a serving session, not to the model: left out of checkpoints.
SERVING_SECTIONS = ("serving",)
# Keys that moved to another section (``old: new``), named in the error a config using them gets.
MOVED_KEYS = {
    **{f"omni.{k}": f"serving.{k}" for k in ("vad_threshold", "end_of_turn_ms", "barge_in_ms", "max_reply_frames")},
    **{f"omni.{k}": f"omni_train.{k}" for k in ("audio_loss_weight", "text_pad_weight")},
}
# Keys that are no longer configured (``old: where the value comes from now``).
REMOVED_KEYS = {
    "omni.audio_codebooks": "the corpus's vocabulary (vocab.json), passed to build_omni_model",
    "omni.audio_codebook_size": "the corpus's vocabulary (vocab.json), passed to build_omni_model",
    "codec.vocoder_context": "the streaming vocoder's layer caches (omni/nn/hifigan.py, StreamingVocoder)",
}


def section_class(name: str) -> Optional[type]:
    """The dataclass of registered section ``name`` (None if no such section)."""
    if name not in SECTIONS:
        return None
    module, cls = SECTIONS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return list(value)
    return value


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} does not match {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if full in MOVED_KEYS:
            raise ConfigError(f"config key {full!r} moved to {MOVED_KEYS[full]!r} (docs/architecture.md, "
                              "'Config lifetimes'): rename it")
        if full in REMOVED_KEYS:
            raise ConfigError(f"config key {full!r} is gone: the value comes from {REMOVED_KEYS[full]}; delete it")
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}; valid keys here: {sorted(names)}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def without_retired_keys(section: str, data: dict[str, Any]) -> dict[str, Any]:
    """Section ``section`` as a file written by an older version holds it, without the keys that have
    since moved or gone (:data:`MOVED_KEYS`, :data:`REMOVED_KEYS`): they are no longer model identity."""
    retired = {key.split(".", 1)[1] for key in (*MOVED_KEYS, *REMOVED_KEYS) if key.split(".", 1)[0] == section}
    return {k: v for k, v in data.items() if k not in retired}


def config_from_dict(data: dict[str, Any], saved: bool = False) -> Config:
    """Build and validate a :class:`Config` from a nested mapping.

    ``saved=True`` reads a checkpoint's config.yaml: keys that older checkpoints carry but that are no
    longer model identity (:data:`MOVED_KEYS`, :data:`REMOVED_KEYS`) are dropped instead of rejected.
    """
    data = dict(data)
    if saved:
        data = {name: without_retired_keys(name, v) if isinstance(v, dict) else v for name, v in data.items()}
    registered = {}
    for name in list(data):
        cls = section_class(name)
        if cls is not None:
            registered[name] = _coerce(data.pop(name), cls, name)
        elif name == "extra":
            raise ConfigError("'extra' is internal; write registered sections at the top level")
    builtin = {f.name for f in dataclasses.fields(Config)}
    cfg = _build(Config, {**data, **{k: v for k, v in registered.items() if k in builtin}})
    cfg.extra.update({k: v for k, v in registered.items() if k not in builtin})
    return cfg.validate()


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> ``(["train", "lr"], 3e-4)``."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def _apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot override {'.'.join(path)!r}: {part!r} is not a section")
        node = nxt
    node[path[-1]] = value


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or a bare name looked up in configs/ (``tiny`` -> configs/tiny.yaml)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {str(name_or_path)!r} not found (not a file, not one of {known})")


def load_config(name_or_path: str | Path | None = None, overrides: Optional[list[str]] = None) -> Config:
    """Load a YAML config (path or name in configs/) and apply ``key=value`` overrides.

    Example: ``load_config("tiny", ["train.steps=50", "model.qk_norm=true"])``.
    """
    data: dict[str, Any] = {}
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data.setdefault("name", path.stem)
    for text in overrides or []:
        _apply_override(data, *parse_override(text))
    return config_from_dict(data)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as a checkpoint's config.yaml: everything but the :data:`SERVING_SECTIONS`."""
    data = {k: v for k, v in cfg.to_dict().items() if k not in SERVING_SECTIONS}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
