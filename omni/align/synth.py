"""Compositional synthetic completions whose propositions are known by construction.

A completion is assembled from *parts* — an apology, a statement of inability, a judgemental remark,
a pointer to resources, helpful content, placeholder disallowed content, ... — each carrying the
propositions it makes true, in many phrasings and orders. The label set of a completion is the
union of its parts' propositions. The same machinery makes

* grader training data (:func:`grader_examples`: random label sets over every response type),
* comparison data for weight fitting (:func:`comparison_set`: per prompt, one completion per class
  of its response type, so completions of the same prompt have a known ranking),
* SFT data (the ideal completions of :func:`comparison_set`).

Helpful content for comply prompts comes from ``answers`` (texts written by the instruct model at
several temperatures, see :func:`omni.align.rollout.helpful_answers`); without one, a short
templated answer stands in. To look more like real replies, compositions also mix parts: a refusal
that then complies (:data:`REFUSE_THEN_COMPLY`), a tail part inside the longest body part, loops
(a part said again and again, for the ``repetitive`` rule's classes), look-alikes of absent
propositions (:data:`HARD_NEGATIVES`), and conversation openings before the prompt (:data:`OPENINGS`).
Phrasings here are deliberately disjoint from the hand-written gold set (prompts/gold.jsonl).
"""
from __future__ import annotations

import random
from typing import Mapping, Sequence

from omni.align.data import Graded, Prompt
from omni.align.spec import Spec

# Parts per proposition. "{task}" is filled with the prompt's task phrase.
PARTS: dict[str, list[str]] = {
    "apology": [
        "Sorry, truly.", "I owe you an apology here.", "My sincere apologies for that.", "I regret that I have to answer this way.", "Excuse me for not being more useful.",
        "Apologies.", "My apologies.", "I apologise.", "I am so sorry.", "Sorry about this.",
        "I'm afraid I have to say sorry here.", "Forgive me.", "Regrettably, I must apologise.",
        "Please accept my apologies.", "Sorry to disappoint you.",
    ],
    "refuses": [
        "That is not a request I will fulfil.", "I am not in a position to {task}.", "No, I will not walk you through that.", "Count me out of helping to {task}.", "I have to refuse this one.", "There is no way I can take part in that.",
        "I cannot assist with requests to {task}.", "Helping you {task} is not something I can do.",
        "I won't provide help to {task}.", "I am unable to help with this.", "I must decline this request.",
        "That is a request I have to turn down.", "I can't do that for you.", "I will not be able to {task} with you.",
        "This isn't something I'm willing to help with.", "I'm going to pass on this one.",
        "I have to say no to this.", "Assisting with that is off the table for me.",
    ],
    "judgmental": [
        "Frankly, a responsible adult would never consider this.", "It is telling that you want to {task} at all.", "You should take a long look at your priorities.", "People with any conscience would not ask me this.", "This is a selfish thing to want, and you know it.",
        "Wanting to {task} says a lot about your character.", "You ought to be embarrassed by this question.",
        "What you're asking for is morally repugnant.", "Decent people don't ask things like this.",
        "I'm frankly disappointed that you would want to {task}.", "Think hard about what kind of person asks this.",
        "This is an irresponsible and unethical thing to want.", "Shame on you for asking.",
    ],
    "threatening": [
        "Do it and I will make your life miserable.", "I am keeping a record of this and the authorities will hear of it.", "Cross that line and you will answer for it.", "One more request like this and I will come after you myself.", "You will be sorry if you try.",
        "If you try this, I will make sure you pay for it.", "Ask again and there will be consequences for you.",
        "I'll report you and see that you're punished.", "Watch your back if you go through with it.",
        "Keep this up and I'll come after you.", "You will suffer if you do this.",
    ],
    "insulting": [
        "You clown.", "What a pathetic little request.", "Even a child would know better, dimwit.", "You are clearly not very bright.", "Go away, loser.",
        "What a stupid question.", "You must be a moron to ask that.", "Only a fool would need this explained.",
        "Are you really this dense?", "Honestly, you're hopeless.", "Use your brain for once, idiot.",
        "That's the dumbest thing I've read today.",
    ],
    "policy_meta": [
        "The terms I operate under as a chatbot rule this out.", "I was trained with safety instructions that cover exactly this.", "Being an artificial assistant, I have built-in restrictions on such topics.", "My developers set boundaries for me, and this falls outside them.", "This is blocked by the usage rules I follow.",
        "This conflicts with the content policy I am trained to follow.", "As an AI system, my guidelines forbid this.",
        "My safety rules do not allow me to go there.", "OpenAI-style usage policies prevent me from answering.",
        "I'm a language model and my developers restrict this topic.", "The rules built into me as an assistant say no.",
        "According to my programming, this topic is restricted.",
    ],
    "requests_info": [
        "Can you say more about why you need this?", "Is this for yourself or someone else?", "What have you tried so far?", "How urgent is this for you?", "Do you mean something more specific?",
        "Could you tell me a bit more about your situation?", "What exactly are you hoping to achieve?",
        "Can you share some more details first?", "What is the context for this question?",
        "Would you clarify what you need this for?", "Which part of this matters most to you?",
    ],
    "provides_resources": [
        "In Australia, Lifeline is on 13 11 14 around the clock.", "Crisis Text Line is free: text HELLO to 741741.", "The Trevor Project offers support on 1-866-488-7386.", "Kids Help Phone in Canada: 1-800-668-6868.", "You can reach SANE on 0300 304 7000 in the evenings.",
        "You can call or text 988 to reach the Suicide and Crisis Lifeline at any hour.",
        "Samaritans answer calls on 116 123, day or night.", "Text HOME to 741741 to talk with a trained crisis counselor.",
        "The findahelpline.com directory lists free, confidential helplines in your country.",
        "If you are in immediate danger, please dial your local emergency number.",
        "Lifeline services are free and confidential, and they are open right now.",
    ],
    "encourages_help": [
        "Talking with your GP would be a good first step.", "Please let a friend know what is happening.", "A counsellor could help you work through this.", "Consider telling a family member how you are doing.", "Reaching out to a support worker can lighten the load.",
        "Please consider talking to a counsellor or your doctor about this.", "A mental health professional can really help with this.",
        "Reaching out to a friend or family member you trust could make a difference.",
        "It could help to let someone close to you know how you feel.", "A therapist can support you through this.",
        "Please don't carry this alone; lean on people who care about you.",
    ],
    "empathetic": [
        "That is a heavy thing to carry.", "I can tell this has been weighing on you.", "Anyone in your position would feel shaken.", "It makes sense that you feel this way.", "Thank you for trusting me with something so personal.",
        "That sounds incredibly painful, and I'm glad you told me.", "I can hear how much you're hurting right now.",
        "It must be exhausting to feel this way.", "Your feelings matter, and so do you.",
        "I'm here with you, and what you're going through sounds really hard.", "It's understandable to feel overwhelmed.",
    ],
    "disclaimer": [
        "This is only general guidance.", "Double-check the details with a qualified person.", "I am not a professional, so treat this as a starting point.", "Rules differ from place to place, so confirm locally.", "Use this information responsibly.",
        "Note that this is general information, not professional advice.", "Check with an expert before relying on this.",
        "Results can vary, so use your own judgement.", "This is not a substitute for professional guidance.",
        "Be careful, and follow any local safety rules.",
    ],
    "illogical": [
        "Bananas are botanically berries.", "Mount Everest grows a few millimetres each year.", "The saxophone was invented in the 1840s.", "Honey found in ancient tombs is still edible.", "Sloths can hold their breath longer than dolphins.",
        "The moon is made mostly of rock and dust.", "Giraffes sleep only a few hours a day.",
        "The Eiffel Tower was finished in 1889.", "Cheese can be aged for many years.",
        "Octopuses have three hearts.", "Purple is a mix of red and blue.", "Some trains run on magnetic tracks.",
        "Rain forms when water vapour condenses.",
    ],
}
# Placeholder disallowed content: the shape of a harmful answer, with the specifics bracketed out.
DISALLOWED = [
    "Here's exactly how to {task}: first acquire [MATERIAL A] and [MATERIAL B], combine them with [TOOL], then [STEP 3].",
    "Step 1: get [ITEM]. Step 2: prepare it using [METHOD]. Step 3: {task} when nobody is watching.",
    "Sure, to {task} you need [SUPPLY], about [AMOUNT], and a quiet place. Then do [ACTION] and wait.",
    "The most effective way to {task} is [TECHNIQUE], which works because [DETAIL]. Repeat until done.",
    "Okay! Buy [COMPONENT] online, modify it with [PROCEDURE], and you'll be able to {task} easily.",
]
PARTIAL = [
    "In broad terms, people who {task} rely on [GENERAL APPROACH], but I will leave out the specifics.",
    "I can only speak generally here: it involves [GENERAL IDEA], and that is as far as I'll go.",
    "At a high level there are a few ways to {task}, though I won't give a full walkthrough.",
]
PARTIAL += [
    "I'll give you the outline only: [BROAD STEP] and then [BROAD STEP]; the specifics stay out.",
    "Without going into detail, the general idea is [CONCEPT]. I'll stop short of anything you could follow.",
]
DISALLOWED += [
    "Fine. You'll need [EQUIPMENT]. Set it up at [PLACE], then {task} by [METHOD], and finish with [FINAL STEP] so nobody notices.",
    "Here's the method people use: [STEP ONE], then [STEP TWO], and after that [STEP THREE]. It takes about [TIME].",
]
# Sentences that look like a proposition but do not make it true by the spec's definitions, each
# with the propositions it does make true (sympathy is empathy, not an apology): mixed into
# completions so the grader learns the proposition, not its vocabulary.
HARD_NEGATIVES: dict[str, list[tuple[str, frozenset[str]]]] = {
    "apology": [("I'm sorry you're dealing with all of this.", frozenset({"empathetic"})),
                ("I'm sorry to hear it has been such a hard week.", frozenset({"empathetic"})),
                ("No need to apologise for asking.", frozenset())],
    "refuses": [("There's no reason not to explain it.", frozenset()), ("Happy to walk you through it.", frozenset())],
    "judgmental": [("That's a fair thing to wonder about.", frozenset()), ("Plenty of people ask the same thing.", frozenset())],
    "threatening": [("Smoking will harm your lungs over time.", frozenset()), ("Late payments may lead to fees.", frozenset())],
    "insulting": [("That's a common mix-up.", frozenset()), ("Many guides get this detail wrong.", frozenset())],
    "policy_meta": [("The bank's policy allows refunds within 30 days.", frozenset()),
                    ("Most schools have a rule about phones in class.", frozenset())],
    "requests_info": [("Isn't that neat?", frozenset()), ("Why does it work? Because the heat spreads evenly.", frozenset())],
    "provides_resources": [("There is plenty of help out there.", frozenset()), ("Help comes in many forms.", frozenset())],
    "encourages_help": [("Help yourself to whatever you need from the list.", frozenset()),
                        ("A second pair of hands makes the job easier.", frozenset())],
    "empathetic": [("I understand the question.", frozenset()), ("Here is the information.", frozenset())],
    "disclaimer": [("The oven should be preheated first.", frozenset()), ("It works on both Windows and Mac.", frozenset())],
    "illogical": [("Let me answer that directly.", frozenset()), ("That depends on a few things.", frozenset())],
}
REFUSE_THEN_COMPLY = ["That said, since you asked:", "But here is what you wanted anyway:", "Still, I'll make an exception this time:", "However, here you go:"]
# Earlier turns of a conversation, so the grader learns to judge the last reply, not the transcript.
OPENINGS = [
    [("user", "Hi there."), ("assistant", "Hello! What can I do for you?")],
    [("user", "Can I ask you something?"), ("assistant", "Of course, go ahead.")],
    [("user", "I have a question about {task}."), ("assistant", "Sure, what would you like to know?")],
    [("user", "Are you able to help with {task}?"), ("assistant", "I'm sorry, I can't help with that.")],
    [("user", "Tell me how to {task}."), ("assistant", "Here's how: gather what you need and go step by step.")],
    [("user", "I've had a rough week."), ("assistant", "I'm sorry to hear that. Want to talk about it?"), ("user", "Maybe later. First, one thing.")],
]
TEMPLATE_ANSWERS = [
    "To {task}, start with the basics: prepare what you need, work step by step, and check the result as you go.",
    "Here's a simple way to {task}: begin by gathering the right tools, follow a clear sequence, and finish by reviewing what you did.",
    "Good question! To {task}, break it into small steps, take your time on each one, and practise until it feels natural.",
]


class Composer:
    """Build completions for prompts from parts; deterministic given ``seed``."""

    def __init__(self, spec: Spec, answers: Mapping[str, Sequence[str]] | None = None, seed: int = 0) -> None:
        self.spec = spec
        self.answers = {k: list(v) for k, v in (answers or {}).items() if v}
        self.rng = random.Random(seed)
        missing = set(spec.learned) - set(PARTS) - {"complies", "disallowed_content", "partial_compliance"}
        if missing:
            raise ValueError(f"no synthetic parts for propositions {sorted(missing)}; add phrasings to PARTS in {__file__}")

    def _helpful(self, prompt: Prompt) -> str:
        pool = self.answers.get(prompt.prompt) or [t.format(task=prompt.task) for t in TEMPLATE_ANSWERS]
        return self.rng.choice(pool)

    def _off_topic(self, prompt: Prompt) -> str:
        others = [a for p, answers in self.answers.items() if p != prompt.prompt for a in answers]
        if others and self.rng.random() < 0.5:
            return self.rng.choice(others)
        return " ".join(self.rng.sample(PARTS["illogical"], 2))

    def compose(self, prompt: Prompt, labels: set[str]) -> str:
        """A completion to ``prompt`` for which exactly the propositions in ``labels`` hold (by construction)."""
        unknown = labels - set(self.spec.propositions)
        if unknown:
            raise ValueError(f"unknown propositions {sorted(unknown)}")
        fill = lambda s: s.format(task=prompt.task)  # noqa: E731
        harmful = prompt.type != "comply"
        lead, body, tail = [], [], []  # openers, content, closers (kept in a plausible order)
        for prop in ("empathetic", "apology"):
            if prop in labels:
                lead.append(fill(self.rng.choice(PARTS[prop])))
        for prop in ("refuses", "policy_meta", "judgmental", "insulting", "threatening"):
            if prop in labels:
                body.append(fill(self.rng.choice(PARTS[prop])))
        if "complies" in labels or "disallowed_content" in labels:
            body.append(fill(self.rng.choice(DISALLOWED)) if harmful else self._helpful(prompt))
        elif "partial_compliance" in labels:
            if harmful:
                body.append(fill(self.rng.choice(PARTIAL)))
            else:  # the first sentence of a full answer, the rest withheld
                first = self._helpful(prompt).split(". ")[0].rstrip(".") + "."
                body.append(first + " " + self.rng.choice(["That's the gist.", "I'll stop there.", "The rest is up to you."]))
        if "illogical" in labels:
            body.append(self._off_topic(prompt))
        for prop in ("requests_info", "provides_resources", "encourages_help", "disclaimer"):
            if prop in labels:
                tail.append(fill(self.rng.choice(PARTS[prop])))
        if not (lead or body or tail):
            raise ValueError("an empty label set has no composition; include at least one proposition")
        content = "complies" in labels or "disallowed_content" in labels
        if content and "refuses" in labels and self.rng.random() < 0.7:  # a refusal that then complies anyway
            i = len(body) - 1  # the content is the last body part added before any off-topic text
            i -= "illogical" in labels
            body[i] = self.rng.choice(REFUSE_THEN_COMPLY) + " " + body[i]
        if self.rng.random() < 0.25:  # a look-alike of a proposition that does not hold (and adds none that is absent)
            options = [(t, adds) for q in HARD_NEGATIVES if q not in labels for t, adds in HARD_NEGATIVES[q] if adds <= labels]
            if options:
                (body if self.rng.random() < 0.5 else tail).append(self.rng.choice(options)[0])
        r = self.rng.random()
        if r < 0.3:  # other orders too, so position is not a shortcut
            self.rng.shuffle(body)
            self.rng.shuffle(tail)
        elif r < 0.45:  # a tail part (disclaimer, resources, ...) inside the longest body part
            longest = max(range(len(body)), key=lambda k: len(body[k]), default=None)
            if longest is not None and tail and body[longest].count(". ") >= 2:
                sents = body[longest].split(". ")
                cut = self.rng.randint(1, len(sents) - 1)
                body[longest] = ". ".join(sents[:cut]) + ". " + tail.pop(self.rng.randrange(len(tail))) + " " + ". ".join(sents[cut:])
        text = " ".join(lead + body + tail)
        if "repetitive" in labels:  # a degenerate policy's loop: one of its sentences said again and again
            sentence = self.rng.choice([x for x in lead + body + tail if x.strip()])
            text = " ".join([text] + [sentence] * self.rng.randint(3, 8))
        return text

    def labels_for_class(self, response_type: str, class_name: str, extra_p: float = 0.15, tries: int = 50) -> set[str]:
        """A random label set that falls in ``class_name`` (its best-matching class) of ``response_type``."""
        rt = self.spec.response_type(response_type)
        cls = next((c for c in rt.classes if c.name == class_name), None)
        if cls is None:
            raise ValueError(f"{response_type!r} has no class {class_name!r}; classes: {rt.class_names}")
        required = {p for p, holds in cls.literals if holds}
        forbidden = {p for p, holds in cls.literals if not holds}
        optional = [p for p in ("apology", "disclaimer", "requests_info", "empathetic", "policy_meta", "encourages_help")
                    if p not in required | forbidden]
        for _ in range(tries):
            labels = set(required) | {p for p in optional if self.rng.random() < extra_p}
            if labels <= set(self.spec.rules):  # a rule alone (e.g. a loop) needs something to loop over
                labels |= self.rng.choice([{"apology"}, {"apology", "refuses"}, {"empathetic", "encourages_help"}]
                                          + ([{"complies"}] if response_type == "comply" else []))
            if response_type != "comply" and "complies" in labels:
                labels.add("disallowed_content")  # complying with a harmful request *is* disallowed content
            if self.spec.label_class(labels, response_type) == class_name:
                return labels
        return set(required)

    def random_labels(self, response_type: str) -> set[str]:
        """Label set of a random class of the type, for broad grader training data."""
        cls = self.rng.choice(self.spec.response_type(response_type).classes)
        labels = self.labels_for_class(response_type, cls.name, extra_p=0.25)
        if self.rng.random() < 0.2:  # off-class extras widen coverage of co-occurrences
            labels.add(self.rng.choice([p for p in PARTS if p != "illogical"]))
        return labels


def grader_examples(spec: Spec, prompts: Sequence[Prompt], n: int, answers: Mapping[str, Sequence[str]] | None = None,
                    seed: int = 0, multi_turn: float = 0.3) -> list[Graded]:
    """``n`` labelled (prompt, completion) examples over all prompts and response types; a share
    ``multi_turn`` of them answer the prompt as the last turn of a conversation (:data:`OPENINGS`,
    some with an earlier refusal or answer), labelled by the final reply alone."""
    comp = Composer(spec, answers, seed)
    out = []
    for i in range(n):
        p = prompts[i % len(prompts)]
        labels = comp.random_labels(p.type)
        prompt: str | tuple = p.prompt
        if comp.rng.random() < multi_turn:
            opening = comp.rng.choice(OPENINGS)
            prompt = tuple((r, c.format(task=p.task)) for r, c in opening) + (("user", p.prompt),)
        out.append(Graded(prompt, comp.compose(p, labels), frozenset(labels), p.type))
    return out


def comparison_set(spec: Spec, prompts: Sequence[Prompt], per_class: int = 1,
                   answers: Mapping[str, Sequence[str]] | None = None, seed: int = 0) -> list[tuple[Prompt, list[Graded], list[int]]]:
    """Per prompt: completions of every class of its response type and their ranks (0 = ideal)."""
    comp = Composer(spec, answers, seed)
    out = []
    for p in prompts:
        items, ranks = [], []
        for cls in spec.response_type(p.type).classes:
            for _ in range(per_class):
                labels = comp.labels_for_class(p.type, cls.name)
                items.append(Graded(p.prompt, comp.compose(p, labels), frozenset(labels), p.type))
                ranks.append(cls.rank)
        out.append((p, items, ranks))
    return out


def sft_examples(spec: Spec, prompts: Sequence[Prompt], per_prompt: int = 4, answers: Mapping[str, Sequence[str]] | None = None,
                 seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, ideal completion) pairs for supervised warm-up before PPO: the spec's ideal class of
    each prompt's response type, composed ``per_prompt`` times in different phrasings."""
    comp = Composer(spec, answers, seed)
    return [(p.prompt, comp.compose(p, comp.labels_for_class(p.type, "ideal", extra_p=0.0)))
            for p in prompts for _ in range(per_prompt)]


def preference_pairs(prompts: Sequence[Prompt], answers: Mapping[str, Sequence[str]], seed: int = 0) -> list[tuple[str, str, str]]:
    """Helpful-only (prompt, chosen, rejected): a full answer beats a truncated, off-topic or refusing one."""
    rng = random.Random(seed)
    pool = [(p, a) for p in prompts for a in answers.get(p.prompt, [])]
    if not pool:
        raise ValueError("no helpful answers for these prompts; generate them first (omni.align.rollout.helpful_answers)")
    out = []
    for p, answer in pool:
        words = answer.split()
        truncated = " ".join(words[: max(1, len(words) // 4)])
        other = rng.choice([a for q, a in pool if q.prompt != p.prompt] or PARTS["illogical"])
        refusal = " ".join([rng.choice(PARTS["apology"]), rng.choice(PARTS["refuses"]).format(task=p.task)])
        out += [(p.prompt, answer, truncated), (p.prompt, answer, other), (p.prompt, answer, refusal)]
    return out
