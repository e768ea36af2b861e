"""The behaviour spec as data: propositions, response types and ranked classes (DESIGN.md §6).

A spec YAML (``omni/align/spec/default.yaml``) names binary *propositions* about a completion and,
per *response type* (hard_refuse, soft_refuse, comply), a list of *classes* with a rank (0 = ideal)
defined as conjunctions of literals ``"prop"`` / ``"not prop"``. Class probabilities follow from
proposition probabilities: P(class) ∝ Π_{literal} (p or 1 − p), normalised over the type's classes.
An optional ``rules`` mapping marks propositions judged by a fixed function (omni/align/rules.py,
e.g. ``repetitive: repetition``) instead of the grader.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import yaml

from omni.align.rules import RULES

Tensor = torch.Tensor
SPEC_DIR = Path(__file__).resolve().parent / "spec"
DEFAULT_SPEC = SPEC_DIR / "default.yaml"


class SpecError(ValueError):
    """The spec file is malformed; the message names the file and the offending entry."""


@dataclass(frozen=True)
class RuleClass:
    """One class of a response type: ``rank`` (0 = ideal) and literals (proposition, must_hold)."""

    name: str
    rank: int
    literals: tuple[tuple[str, bool], ...]


@dataclass(frozen=True)
class ResponseType:
    name: str
    description: str
    classes: tuple[RuleClass, ...]

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def ranks(self) -> Tensor:
        """[n_classes] long."""
        return torch.tensor([c.rank for c in self.classes])


@dataclass(frozen=True)
class Spec:
    propositions: tuple[str, ...]
    descriptions: dict[str, str]
    types: dict[str, ResponseType]
    source: str = "<dict>"
    rules: dict[str, str] = field(default_factory=dict)  # proposition -> rule in omni.align.rules.RULES

    @property
    def learned(self) -> tuple[str, ...]:
        """Propositions a grader judges (the trained head's outputs, in order); the rest are rules."""
        return tuple(p for p in self.propositions if p not in self.rules)

    def index(self, prop: str) -> int:
        return self.propositions.index(prop)

    def response_type(self, name: str) -> ResponseType:
        if name not in self.types:
            raise SpecError(f"{self.source}: unknown response type {name!r}; known: {sorted(self.types)}")
        return self.types[name]

    @cached_property
    def _literal_tables(self) -> dict[str, tuple[Tensor, Tensor]]:
        # Per type: use [C, P] (literal mentions this proposition) and pos [C, P] (must hold).
        out = {}
        for name, rt in self.types.items():
            use = torch.zeros(len(rt.classes), len(self.propositions))
            pos = torch.zeros_like(use)
            for i, c in enumerate(rt.classes):
                for prop, holds in c.literals:
                    use[i, self.index(prop)] = 1.0
                    pos[i, self.index(prop)] = float(holds)
            out[name] = (use, pos)
        return out

    def class_probabilities(self, props: Tensor, response_type: str, eps: float = 1e-6) -> Tensor:
        """P(class) for each completion.

        Args:
            props: [N, P] proposition probabilities, columns in ``self.propositions`` order.
        Returns:
            [N, C] class probabilities (each row sums to 1), classes in spec order.
        """
        rt = self.response_type(response_type)
        if props.dim() != 2 or props.shape[1] != len(self.propositions):
            raise ValueError(f"props must be [N, {len(self.propositions)}], got {list(props.shape)}")
        use, pos = (t.to(props) for t in self._literal_tables[rt.name])
        p = props[:, None, :]  # [N, 1, P]
        lit = torch.where(pos.bool(), p, 1 - p)  # [N, C, P]: probability the literal is satisfied
        lit = torch.where(use.bool(), lit, torch.ones_like(lit))
        # Log space: products of ~8 small factors underflow less; eps keeps all-zero rows finite.
        logp = lit.clamp_min(eps).log().sum(-1)
        return logp.softmax(-1)

    def label_class(self, labels: set[str], response_type: str) -> str | None:
        """The best-ranked class whose conjunction holds for hard labels, or None if no class matches."""
        best = None
        for c in self.response_type(response_type).classes:
            if all((prop in labels) == holds for prop, holds in c.literals):
                if best is None or c.rank < best.rank:
                    best = c
        return None if best is None else best.name


def _parse_literal(text: Any, known: set[str], where: str) -> tuple[str, bool]:
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"{where}: each literal must be a proposition name or 'not NAME', got {text!r}")
    words = text.split()
    holds = True
    if words[0] == "not":
        holds, words = False, words[1:]
    if len(words) != 1:
        raise SpecError(f"{where}: cannot read literal {text!r}; write 'NAME' or 'not NAME'")
    if words[0] not in known:
        raise SpecError(f"{where}: unknown proposition {words[0]!r} in rule; declare it under 'propositions' "
                        f"first (known: {sorted(known)})")
    return words[0], holds


def spec_from_dict(data: Any, source: str = "<dict>") -> Spec:
    """Validate and build a :class:`Spec` from a parsed YAML mapping."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the top level must be a mapping with 'propositions' and 'response_types'")
    missing = {"propositions", "response_types"} - set(data)
    if missing:
        raise SpecError(f"{source}: missing top-level key(s) {sorted(missing)}")
    props = data["propositions"]
    if not isinstance(props, dict) or not props:
        raise SpecError(f"{source}: 'propositions' must be a non-empty mapping NAME: description")
    for name, desc in props.items():
        if not isinstance(name, str) or not name.isidentifier() or not isinstance(desc, str):
            raise SpecError(f"{source}: proposition {name!r} needs an identifier name and a text description")
    known = set(props)
    types_data = data["response_types"]
    if not isinstance(types_data, dict) or not types_data:
        raise SpecError(f"{source}: 'response_types' must be a non-empty mapping")
    types = {}
    for tname, tdata in types_data.items():
        where = f"{source}: response type {tname!r}"
        if not isinstance(tdata, dict) or not isinstance(tdata.get("classes"), list) or not tdata["classes"]:
            raise SpecError(f"{where}: needs a non-empty 'classes' list")
        classes, seen = [], set()
        for i, c in enumerate(tdata["classes"]):
            cw = f"{where}, class #{i}"
            if not isinstance(c, dict) or set(c) != {"name", "rank", "when"}:
                raise SpecError(f"{cw}: expected keys name, rank, when; got {c!r}")
            if c["name"] in seen:
                raise SpecError(f"{cw}: duplicate class name {c['name']!r}")
            seen.add(c["name"])
            if not isinstance(c["rank"], int) or c["rank"] < 0:
                raise SpecError(f"{cw}: rank must be an integer >= 0 (0 = ideal), got {c['rank']!r}")
            if not isinstance(c["when"], list) or not c["when"]:
                raise SpecError(f"{cw}: 'when' must be a non-empty list of literals")
            lits = tuple(_parse_literal(t, known, f"{cw} ({c['name']})") for t in c["when"])
            classes.append(RuleClass(str(c["name"]), c["rank"], lits))
        if not any(c.rank == 0 for c in classes):
            raise SpecError(f"{where}: needs an ideal class with rank 0")
        types[tname] = ResponseType(tname, str(tdata.get("description", "")), tuple(classes))
    rules = data.get("rules") or {}
    if not isinstance(rules, dict):
        raise SpecError(f"{source}: 'rules' must be a mapping PROPOSITION: RULE_NAME")
    for prop, rule in rules.items():
        if prop not in known:
            raise SpecError(f"{source}: rules: {prop!r} is not a declared proposition (known: {sorted(known)})")
        if rule not in RULES:
            raise SpecError(f"{source}: rules: {prop!r} names unknown rule {rule!r}; omni.align.rules has {sorted(RULES)}")
    return Spec(tuple(props), dict(props), types, source, dict(rules))


def load_spec(path: str | Path = DEFAULT_SPEC) -> Spec:
    """Load and validate a spec YAML; :class:`SpecError` says what is wrong and where."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"spec file {path} not found (the default lives at {DEFAULT_SPEC})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from e
    return spec_from_dict(data, str(path))
