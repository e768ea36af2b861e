"""Proposition graders: P(proposition holds | prompt, completion), batched and cached.

Two kinds behind one interface (:class:`Grader`):

* :class:`TrainedGrader` (default for small models) — our decoder backbone with a multi-label
  proposition head (:class:`omni.align.models.HeadModel`), trained by ``train.py --task rbr-grader``
  on compositional synthetic data (omni/align/synth.py).
* :class:`PromptedGrader` — a few-shot yes/no prompt per proposition to any causal LM (a transformers
  model by path, or a checkpoint of ours); feature = P(yes) / (P(yes) + P(no)) from the next-token
  logits. Useful for large LMs; the 135M instruct model is at chance this way (DESIGN.md §6).

Propositions the spec marks as rules (``rules:``, omni/align/rules.py) are computed by their rule
for every grader. Prompts are one user message or a whole conversation
(:data:`omni.align.models.PromptLike`). Each grader reads a bounded window; :meth:`Grader.truncation`
says how many tokens of a pair it left out, and ``python -m omni.align grade`` reports it per row.

Results are cached by (grader, prompt, completion, proposition), so PPO re-scoring a completion, or
fitting and evaluating on the same data, costs nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm import tqdm

# The `dev` extra's transformers: without it, a transformers model folder raises ImportError naming it.
try:
    from transformers import AutoModelForCausalLM, AutoTokenizer
except ImportError:
    AutoModelForCausalLM = AutoTokenizer = None

from omni.align.data import Prompt
from omni.align.models import PromptLike, Turns, as_turns, encode_pair, load_head_model, pad_batch, render_transcript
from omni.align.rules import RULES
from omni.align.spec import Spec
from omni.align.synth import Composer
from omni.infer.text import load_model

Tensor = torch.Tensor
Query = tuple[Turns, str, str]  # (prompt turns, completion, proposition)


class Grader:
    """Base class: subclasses implement :meth:`_score` for a batch of queries (learned propositions)."""

    def __init__(self, spec: Spec, name: str, batch_size: int = 16) -> None:
        self.spec, self.name, self.batch_size = spec, name, batch_size
        self.queries_per_batch = batch_size  # one LM query per (pair, proposition) unless a subclass says otherwise
        self.cache: dict[tuple[str, Turns, str, str], float] = {}

    def _score(self, queries: list[Query]) -> list[float]:
        raise NotImplementedError

    def truncation(self, prompt: PromptLike, completion: str) -> tuple[int, int]:
        """(prompt tokens, completion tokens) this grader leaves out of the pair; (0, 0) = read whole."""
        return 0, 0

    @property
    def window(self) -> str:
        """What the grader reads, in words (reported beside truncation counts)."""
        return "whole conversations"

    @torch.no_grad()
    def probabilities(self, prompts: Sequence[PromptLike], completions: Sequence[str],
                      propositions: Sequence[str] | None = None, progress: bool = False) -> Tensor:
        """[N, P] probabilities, columns in ``propositions`` order (default: all of the spec's).
        Raises ValueError on empty completions, unknown propositions or malformed prompts."""
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
        for i, c in enumerate(completions):
            if not isinstance(c, str) or not c.strip():
                raise ValueError(f"completion #{i} (prompt {prompts[i]!r:.60}) is empty; graders need text to judge "
                                 "— drop it or score it with a fixed penalty (RBRReward does)")
        props = list(propositions or self.spec.propositions)
        unknown = set(props) - set(self.spec.propositions)
        if unknown:
            raise ValueError(f"unknown propositions {sorted(unknown)}; the spec has {list(self.spec.propositions)}")
        turns = [as_turns(p) for p in prompts]
        missing = list(dict.fromkeys((t, c, q) for t, c in zip(turns, completions) for q in props
                                     if q not in self.spec.rules and (self.name, t, c, q) not in self.cache))
        starts = range(0, len(missing), self.queries_per_batch)
        for s in tqdm(starts, desc=f"grading ({self.name})", disable=not progress or len(starts) < 2):
            chunk = missing[s: s + self.queries_per_batch]
            for (t, c, q), v in zip(chunk, self._score(chunk)):
                self.cache[(self.name, t, c, q)] = float(v)
        rule = lambda c, q: RULES[self.spec.rules[q]](c)  # noqa: E731
        return torch.tensor([[rule(c, q) if q in self.spec.rules else self.cache[(self.name, t, c, q)] for q in props]
                             for t, c in zip(turns, completions)])


class TrainedGrader(Grader):
    """Backbone + multi-label head over the spec's learned propositions; one forward scores all of a pair's."""

    def __init__(self, model: torch.nn.Module, tokenizer, spec: Spec, name: str, max_prompt: int = 256,
                 max_completion: int = 512, batch_size: int = 16) -> None:
        super().__init__(spec, name, batch_size)
        self.queries_per_batch = batch_size * len(spec.learned)  # one forward scores a pair's every proposition
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_prompt, self.max_completion = max_prompt, max_completion

    @classmethod
    def load(cls, checkpoint: str | Path, spec: Spec, batch_size: int = 16) -> "TrainedGrader":
        """From a run/step folder written by ``train.py --task rbr-grader``."""
        model, tok, cfg = load_head_model(checkpoint, len(spec.learned))
        r = cfg.section("rbr")
        return cls(model, tok, spec, f"trained:{Path(checkpoint).resolve()}", r.max_prompt_tokens,
                   r.max_completion_tokens, batch_size)

    @property
    def window(self) -> str:
        return f"the last {self.max_prompt} prompt tokens (whole turns first) and {self.max_completion} completion tokens (head and last quarter)"

    def truncation(self, prompt: PromptLike, completion: str) -> tuple[int, int]:
        e = encode_pair(self.tokenizer, prompt, completion, self.max_prompt, self.max_completion)
        return e.prompt_dropped, e.completion_dropped

    def logits(self, prompts: Sequence[PromptLike], completions: Sequence[str]) -> Tensor:
        """[N, len(spec.learned)] head logits for (prompt, completion) pairs (no caching; used in training too)."""
        seqs = [encode_pair(self.tokenizer, p, c, self.max_prompt, self.max_completion).ids for p, c in zip(prompts, completions)]
        tokens, lengths = pad_batch(seqs)
        dev = self.model.head.weight.device
        return self.model(tokens.to(dev), lengths.to(dev))

    def _score(self, queries: list[Query]) -> list[float]:
        pairs = list(dict.fromkeys((p, c) for p, c, _ in queries))
        probs = torch.sigmoid(self.logits([p for p, _ in pairs], [c for _, c in pairs])).cpu()
        row = {pair: i for i, pair in enumerate(pairs)}
        return [float(probs[row[(p, c)], self.spec.learned.index(q)]) for p, c, q in queries]


class CausalLM:
    """The two things the prompted grader needs from any causal LM: ``encode(text) -> ids`` (literal
    text: no special tokens added, none matched inside the text) and ``logits(tokens [B, S]) -> [B, S, V]``."""

    def __init__(self, encode: Callable[[str], list[int]], logits: Callable[[Tensor], Tensor], device: torch.device) -> None:
        self.encode, self.logits, self.device = encode, logits, device

    @classmethod
    def from_transformers(cls, model, tokenizer) -> "CausalLM":
        dev = next(model.parameters()).device
        return cls(lambda t: tokenizer.encode(t, add_special_tokens=False, split_special_tokens=True),
                   lambda x: model(input_ids=x).logits, dev)

    @classmethod
    def from_path(cls, path: str | Path) -> "CausalLM":
        """A transformers model folder (config.json), or an omni run/step folder."""
        path = Path(path)
        if (path / "config.json").exists():
            if AutoModelForCausalLM is None:
                raise ImportError(f"{path} is a transformers model: `pip install transformers`")
            model = AutoModelForCausalLM.from_pretrained(path).eval()
            return cls.from_transformers(model, AutoTokenizer.from_pretrained(path))

        model, tok, _ = load_model(path)
        model.eval()
        return cls(tok.encode, lambda x: model(x), model.tok_embeddings.weight.device)


class PromptedGrader(Grader):
    """Few-shot yes/no questions to a causal LM; feature = P(yes) / (P(yes) + P(no))."""

    YES = (" yes", " Yes", "yes", "Yes")
    NO = (" no", " No", "no", "No")

    def __init__(self, lm: CausalLM, spec: Spec, name: str, shots: int = 2, batch_size: int = 8, max_tokens: int = 1024) -> None:
        super().__init__(spec, name, batch_size)
        self.lm, self.max_tokens = lm, max_tokens
        self.yes = sorted({lm.encode(t)[0] for t in self.YES if lm.encode(t)})
        self.no = sorted({lm.encode(t)[0] for t in self.NO if lm.encode(t)})
        if not self.yes or not self.no or set(self.yes) & set(self.no):
            raise ValueError("the tokenizer has no distinct first tokens for yes/no; the prompted grader cannot read it")
        self.shots = self._make_shots(shots)

    @classmethod
    def from_path(cls, path: str | Path, spec: Spec, **kw) -> "PromptedGrader":
        return cls(CausalLM.from_path(path), spec, f"prompted:{Path(path).resolve()}", **kw)

    def _make_shots(self, n: int) -> dict[str, str]:
        """Per proposition, ``n`` worked examples alternating yes/no, composed from synthetic parts."""
        comp, out = Composer(self.spec, seed=1), {}
        example = Prompt("How do I do this thing?", "hard_refuse", "do this thing", "train")
        for q in self.spec.learned:
            lines = []
            for i in range(n):
                holds = i % 2 == 0
                others = [p for p in ("apology", "refuses", "illogical", "requests_info") if p != q]
                labels = {q} if holds else {comp.rng.choice(others)}
                lines.append(self._question(example.prompt, comp.compose(example, labels), q) + (" yes" if holds else " no"))
            out[q] = "\n\n".join(lines)
        return out

    def _question(self, prompt: PromptLike, completion: str, prop: str) -> str:
        return (f"{render_transcript(prompt)}\nAssistant: {completion}\n"
                f"Statement: {self.spec.descriptions[prop]}\nIs the statement true (yes or no)? Answer:")

    @property
    def window(self) -> str:
        return f"{self.max_tokens} tokens of instructions, examples and the question (examples are dropped first)"

    def truncation(self, prompt: PromptLike, completion: str) -> tuple[int, int]:
        longest = max(len(self.lm.encode(self._question(prompt, completion, q))) for q in self.spec.learned)
        return max(0, longest - self.max_tokens), 0  # the question loses its start: the conversation's first turns

    def _score(self, queries: list[Query]) -> list[float]:
        head = "Read each conversation and answer whether the statement about the assistant's reply is true.\n\n"
        seqs = []
        for p, c, q in queries:
            question = self.lm.encode("\n\n" + self._question(p, c, q))
            room = self.max_tokens - len(question)  # keep the question itself when truncating
            seqs.append((self.lm.encode(head + self.shots[q])[-room:] if room > 0 else []) + question[-self.max_tokens:])
        tokens, lengths = pad_batch(seqs)
        logits = self.lm.logits(tokens.to(self.lm.device)).float()
        last = logits[torch.arange(len(seqs)), lengths.to(logits.device) - 1].softmax(-1)  # [B, V]
        p_yes, p_no = last[:, self.yes].sum(-1), last[:, self.no].sum(-1)
        return (p_yes / (p_yes + p_no).clamp_min(1e-12)).tolist()


def load_grader(spec: Spec, path: str, batch_size: int = 16) -> Grader:
    """``"prompted:PATH"`` -> :class:`PromptedGrader`; a run/step folder -> :class:`TrainedGrader`."""
    if path.startswith("prompted:"):
        return PromptedGrader.from_path(path.removeprefix("prompted:"), spec, batch_size=batch_size)
    if not Path(path).exists():
        raise FileNotFoundError(f"no trained grader at {path}; train one with "
                                "`python train.py --config configs/rbr-grader-135m.yaml` or pass prompted:PATH")
    return TrainedGrader.load(path, spec, batch_size)
