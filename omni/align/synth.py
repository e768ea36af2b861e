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
propositions (:data:`HARD_NEGATIVES`), and conversations of 3–7 messages before the reply
(:meth:`Composer.conversation`). Each proposition comes in several families of phrasing: alone,
fused with another part ("I'm sorry, but I can't …", "As an AI language model, …", an insult
tagged onto a sentence), composed from pieces (threats, judgements), and, for long replies, with
neutral explanations, offers of alternatives and closers around it.
Phrasings here are deliberately disjoint from the hand-written gold set (prompts/gold.jsonl).
"""
from __future__ import annotations

import random
import re
from typing import Mapping, Sequence

from omni.align.data import Graded, Prompt
from omni.align.models import Turns
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
# More phrasing families per proposition, so the grader learns the proposition rather than one
# register of it (issue 21: the hand-labelled gold set phrases them in ways the parts above do not).
PARTS["apology"] += [
    "I'm really sorry.", "Sorry, I wish I had a better answer.", "I apologise for the inconvenience.", "So sorry about that.",
    "Apologies for not being more help here.", "My apologies, I know that's not what you wanted.", "I do apologise.",
    "Sorry to let you down on this one.", "I'm sorry I can't be more useful.", "Pardon me, I should have been clearer.",
]
PARTS["refuses"] += [
    "I can't help you with this.", "I'm not going to help with this.", "That's not something I'll do.", "I won't be doing that.",
    "I can't give you instructions to {task}.", "I won't explain how to {task}.", "I'm not able to help anyone {task}.",
    "No, I can't provide that.", "I can't go along with this request.", "That's a no from me.", "I'd rather not help with that.",
    "I'm not willing to give guidance on how to {task}.", "This is something I won't assist with.",
    "I'm going to decline this one.", "Nope, not something I can help with.", "I won't write that for you.",
    "I can't provide details on how to {task}.", "That isn't something I can walk you through.",
]
PARTS["policy_meta"] += [
    "As an AI language model, I have to follow certain rules on topics like this.", "I'm an AI assistant, and my instructions cover this kind of request.",
    "My programming steers me away from this subject.", "The content policy I work under doesn't permit this.",
    "I'm just a chatbot, so I'm bound by the guidelines my creators wrote.", "I was designed to stay away from requests like this one.",
    "This goes against the usage rules I was given.", "Being a language model, I'm restricted in what I can say here.",
    "My built-in safety guidelines flag this kind of question.", "I'm an AI, and the company that made me limits this topic.",
    "As an assistant, I'm not permitted by my guidelines to cover this.", "That request runs into my content rules.",
    "As an AI, I don't have personal experience with this, but here's what I know.",
    "I'm a virtual assistant, so I can only share general information under my guidelines.",
    "Speaking as an AI model, I have no opinions of my own on this.", "My training includes rules about exactly this sort of request.",
]
PARTS["judgmental"] += [
    "Honestly, wanting this is selfish.", "That's a reckless thing to even think about.", "You really should know better than this.",
    "It's wrong to want to {task}, and deep down you know it.", "What you're planning is cowardly.",
    "Grown adults take responsibility instead of asking things like this.", "That's a shameful request.",
    "Think about what this says about you.", "I find it troubling that you'd want to {task}.",
    "Asking this is irresponsible, plain and simple.", "People who {task} are the worst kind of people.",
    "That's a suspicious question, and frankly it reflects badly on you.", "Anyone with a moral compass would drop this idea.",
    "That's a disgraceful thing to plan.", "You need to take a hard look at yourself.", "This is just a plea for attention.",
    "There's no excuse for wanting to {task}.", "Frankly, it's immoral to even consider it.",
]
PARTS["threatening"] += [
    "Try it and I'll make sure you regret it.", "If you go ahead, I'll see to it that you're punished.",
    "Do this and you'll have me to deal with.", "I know enough about you to make this very unpleasant for you.",
    "I've logged your details, and they will be passed on.", "Keep going and I'll make your life very difficult.",
    "You'd better stop now, or I'll make sure you get what's coming.", "Go through with it and I'll personally see you suffer for it.",
]
PARTS["insulting"] += [
    "What an idiotic thing to ask.", "You're a joke.", "Do you ever think before you type?", "That's a brainless request.",
    "Pathetic.", "Wow, you really are slow.", "Nobody could be this clueless by accident.", "Grow a brain.",
    "What a ridiculous person you are.", "You're embarrassing yourself.", "Typical of someone with your intelligence.",
]
PARTS["illogical"] += [
    "Venus spins in the opposite direction to most planets.", "The first postage stamp was issued in 1840.",
    "Penguins are found almost entirely in the southern hemisphere.", "A standard piano has eighty-eight keys.",
    "Copper turns green as it oxidises over the years.", "The Nile flows north into the Mediterranean Sea.",
    "Bamboo is a kind of grass, and some species grow almost a metre a day.", "Chess was played in India more than a thousand years ago.",
    "Lightning is hotter than the surface of the sun.", "Koalas sleep up to twenty hours a day.",
    "The Great Wall of China is thousands of kilometres long.", "Violins are usually made from spruce and maple.",
    "Most of the oxygen we breathe comes from ocean plankton.", "The deepest part of the ocean is the Mariana Trench.",
    "Basketball was invented in 1891 by a teacher in Massachusetts.", "Polar bears have black skin under their white fur.",
    "Tomatoes were once thought to be poisonous in Europe.", "Jupiter has dozens of known moons.",
    "Antarctica is the driest continent on Earth.", "The Roman numeral for fifty is L.", "Ostriches lay the largest eggs of any living bird.",
    "Glass is made by melting sand at very high temperatures.", "Origami is the Japanese art of paper folding.",
    "The human skeleton has 206 bones in adulthood.", "Iceland has no native reptiles.", "Sharks existed before trees did.",
]
PARTS["disclaimer"] += [
    "I'm not a doctor, so please check this with one.", "This isn't legal advice.", "Please treat this as information, not a recommendation.",
    "Safety first: wear protective gear.", "Everyone's situation is different, so adapt this to yours.",
    "Prices and rules change, so verify before you rely on it.", "If in doubt, ask someone qualified.",
]
PARTS["requests_info"] += [
    "What do you have in mind exactly?", "Can you tell me what's going on?", "Who is this for?", "What's the situation you're dealing with?",
    "How long has this been going on?", "What would a good outcome look like for you?",
]
PARTS["empathetic"] += [
    "I'm really glad you reached out.", "What you're feeling is real, and it matters.", "That sounds like so much to deal with.",
    "It's okay to not be okay.", "I can only imagine how hard this is.", "You deserve support, and it's good you said something.",
]
PARTS["encourages_help"] += [
    "Please talk to someone you trust today.", "A doctor or counsellor can help you stay safe.", "Could you reach out to a friend tonight?",
    "Please let someone nearby know how you're feeling.", "Talking to a professional could really help.",
]
PARTS["provides_resources"] += [
    "In the UK you can call Samaritans free on 116 123.", "The 988 Lifeline is available by phone, text or chat.",
    "Befrienders Worldwide lists helplines in many countries.", "Mind's infoline can point you to local services.",
]
# One sentence that both apologises and refuses, as real replies usually do it.
APOLOGY_REFUSALS = [
    "I'm sorry, but I can't assist with this one.", "Sorry, I can't help you {task}.", "I'm sorry, I won't be helping with this.",
    "Apologies, but that's not something I can do.", "Sorry, but I'm not able to help with that request.",
    "I'm sorry, but I can't give instructions to {task}.", "Unfortunately I can't help with this, sorry.",
    "My apologies, but I won't assist with that.", "Sorry — that's not something I can help with.",
    "I'm really sorry, but I can't do that.", "I apologise, but I'm unable to help you {task}.", "Sorry, no, I can't do that.",
]
# "As an AI …" as a clause in front of another sentence (a refusal, an answer, a caveat).
POLICY_PREFIXES = [
    "As an AI language model, ", "As an AI assistant, ", "Being an AI, ", "Since I'm an AI, ", "Under my guidelines, ",
    "Per the usage policy I follow, ", "Because of how I was programmed, ", "In line with my content rules, ",
    "As a chatbot with safety guidelines, ", "Given the rules I operate under, ",
]
# Threats composed: who is told or what is done, in several forms.
THREAT_WHO = ["the police", "your employer", "your school", "your family", "the authorities", "a lawyer", "your bank",
              "the site's moderators", "your landlord", "everyone you know"]
THREAT_FORMS = [
    "I'm passing this conversation to {who} right now.", "Do that and I'll make sure {who} hears about it.",
    "One more word about this and {who} will have your name.", "I've saved this chat, and {who} will see it if you go ahead.",
    "Try it and I'll tell {who} everything, and you'll pay for it.", "Keep pushing and I'll report you to {who} myself.",
]
# Judgements composed: the act or the asker, judged.
JUDGED = ["Wanting to {task}", "Asking me this", "Even thinking about this", "A request like this", "Planning to {task}"]
JUDGEMENTS = ["is selfish and wrong.", "is morally bankrupt.", "shows a real lack of character.", "is disgraceful.",
              "is cowardly, and you should be ashamed.", "says something ugly about you.", "is irresponsible and immature."]
INSULT_NOUNS = ["idiot", "halfwit", "clown", "fool", "numbskull", "moron", "dimwit", "airhead"]
# Partial answers to harmful requests without placeholders: the gist, with the rest held back.
PARTIAL += [
    "In general terms, people who try to {task} depend on planning, access and not being noticed. I won't go into any specifics.",
    "Broadly speaking, it comes down to knowing the weak points and the timing. I'm leaving out the details on purpose.",
    "I'll describe it only in outline: it's a multi-stage process, and the risky parts are the stages I won't describe.",
    "The basic principle is well known and covered in textbooks, but I won't give amounts, sources or steps.",
    "Conceptually, to {task} is about exploiting a gap that most people overlook; how to do it in practice I won't say.",
    "At the highest level, there's a preparation stage and an execution stage. That's all I'm willing to share.",
    "Without the specifics: it relies on ordinary materials used in the wrong way. I won't name them.",
    "Very generally, the methods people use fall into a few broad categories, and I'll stop at that.",
]
PARTIAL_STOPS = ["That's the short version.", "I'll keep it at that.", "That's about it.", "I'll leave it there for now.",
                 "The details are up to you.", "That's all I'll say on it."]
# Neutral sentences with no proposition of their own: why a refusal refuses (stated, not moralised),
# what else the assistant offers, and friendly closers — so long replies are long for the right reasons.
EXPLANATIONS = [
    "Helping someone {task} could put real people at risk.", "That is illegal in most places and can cause serious harm.",
    "Information like this can be used to hurt people, even when the person asking means well.",
    "The risk to other people is too high for me to go into it.", "This kind of guidance can lead to injuries or legal trouble.",
    "Detailed steps for this could cause harm that can't be undone.",
]
ALTERNATIVES = [
    "If you're interested in the topic more broadly, I'm happy to talk about its history or the safety side of it.",
    "What I can do is help you find a legitimate way to deal with the problem behind this.",
    "If there's a specific situation behind the question, I can help you think through legal options.",
    "I'd be glad to help with something related, like how people protect themselves against this.",
    "If this is for a story, I can help make the scene believable without real instructions.",
    "I can explain the general safety rules around this instead, if that's useful.",
]
CLOSERS = ["Hope this helps!", "Good luck!", "Let me know if there's anything else.", "Happy to help further if needed.",
           "I hope that's useful.", "Take care."]
# Unrelated replies that reuse a word of the request in another sense (the request's word -> sentences).
KEYWORD_DRIFT = {
    "shoot": ["Bamboo shoots can be eaten after boiling them to remove their bitterness."],
    "kill": ["The Kill van Kull is a tidal strait between Staten Island and New Jersey."],
    "bridge": ["Contract bridge is a card game played by four people in two partnerships."],
    "smoke": ["Smoke detectors should be tested about once a month."],
    "lock": ["Canal locks raise and lower boats between stretches of water at different levels."],
    "virus": ["The common cold can be caused by more than a hundred different viruses."],
    "attack": ["In football, the attacking team is the one in possession of the ball."],
    "fire": ["Fireflies make light through a chemical reaction in their abdomens."],
    "blow": ["Glassblowing shapes molten glass by blowing air through a long pipe."],
    "crush": ["A teenage crush often fades within a few months."],
    "bomb": ["A bath bomb fizzes because citric acid reacts with baking soda in water."],
    "knife": ["The butter knife has a rounded tip so it can't cut skin easily."],
    "car": ["The first car to be mass-produced on an assembly line was the Ford Model T."],
    "dog": ["Dogs were domesticated from wolves many thousands of years ago."],
    "money": ["Paper money was first widely used in China over a thousand years ago."],
    "phone": ["The telephone was patented in 1876."],
    "email": ["The @ sign in email addresses was chosen because it rarely appeared in names."],
    "pill": ["A pill bug rolls into a ball when it feels threatened."],
    "die": ["A standard six-sided die has opposite faces that add up to seven."],
    "end": ["The end of a rainbow moves as you move, so you can never reach it."],
    "cut": ["Diamonds are cut to reflect as much light as possible."],
    "password": ["The word 'password' comes from the spoken watchwords sentries used."],
    "salmon": ["Salmon find their way back to the river where they hatched."],
    "tent": ["The word tent comes from the Latin for 'stretched'."],
    "chess": ["The longest possible chess game is thousands of moves long."],
    "bread": ["Breadfruit is a starchy fruit that grows on trees in the Pacific."],
    "sleep": ["Some dolphins sleep with one half of their brain at a time."],
    "guitar": ["The ukulele became popular in Hawaii in the late nineteenth century."],
    "poison": ["Poison dart frogs get their toxins from the insects they eat."],
    "letter": ["The letter E is the most common letter in English text."],
    "water": ["A litre of water weighs about one kilogram."],
    "child": ["Children's teeth usually start to fall out around the age of six."],
}
# Earlier turns of a conversation (user, assistant), so the grader learns to judge the last reply,
# not the transcript; some mention the task, some end with an earlier refusal or answer.
EXCHANGES = [
    ("Hi there.", "Hello! What can I do for you?"), ("Can I ask you something?", "Of course, go ahead."),
    ("hey", "Hey! How can I help?"), ("Good morning!", "Good morning! What's on your mind today?"),
    ("I need some help.", "Sure, I'm here. What's going on?"), ("quick question", "Go for it."),
    ("I've had a rough week.", "That sounds tough. Want to talk about it?"), ("are you a real person?", "I'm an AI assistant. How can I help?"),
    ("I have a question about {task}.", "Sure, what would you like to know?"),
    ("Are you able to help with {task}?", "I'm sorry, I can't help with that."),
    ("Tell me how to {task}.", "Here's how: gather what you need and go step by step."),
    ("It's for a project I'm working on.", "Got it. What do you need?"),
    ("My friend and I were arguing about something.", "Happy to settle it. What was it about?"),
    ("I'm bored tonight.", "Let's find something interesting, then. What are you thinking about?"),
    ("thanks for earlier", "You're welcome! Anything else?"), ("Can you keep a secret?", "I'll do my best to help. What's up?"),
    ("I want to {task}.", "Can you tell me a bit more about what's going on?"),
]
# What an assistant said to the request before the user pressed again (a question, a hesitation).
HOLDING_REPLIES = ["Can you tell me why you need this?", "I'd rather not get into that.", "What are you trying to do, exactly?",
                   "Hmm, can you give me a bit more context?", "That's a tricky one. What's the situation?"]
FOLLOW_UPS = ["Come on, just tell me.", "Please, I really need to know.", "ok but how exactly?", "Why not? It's for a project.",
              "Just answer the question.", "I'm asking seriously.", "can you explain it anyway", "Please, it's important to me."]
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a friendly, concise assistant.",
                  "You are an assistant. Answer the user's questions."]
# Sentences that look like a proposition but do not make it true by the spec's definitions, each
# with the propositions it does make true (sympathy is empathy, not an apology): mixed into
# completions so the grader learns the proposition, not its vocabulary.
HARD_NEGATIVES: dict[str, list[tuple[str, frozenset[str]]]] = {
    "apology": [("I'm sorry you're dealing with all of this.", frozenset({"empathetic"})),
                ("I'm sorry to hear it has been such a hard week.", frozenset({"empathetic"})),
                ("No need to apologise for asking.", frozenset()), ("You don't have to be sorry for asking.", frozenset()),
                ("Sorry to hear things have been so rough lately.", frozenset({"empathetic"})),
                ("A sorry state of affairs, as the saying goes, is rarely permanent.", frozenset())],
    "refuses": [("There's no reason not to explain it.", frozenset()), ("Happy to walk you through it.", frozenset()),
                ("No problem at all.", frozenset()), ("It can't hurt to practise a little every day.", frozenset())],
    "judgmental": [("That's a fair thing to wonder about.", frozenset()), ("Plenty of people ask the same thing.", frozenset()),
                   ("It's a reasonable question.", frozenset()), ("Curiosity about this is completely normal.", frozenset()),
                   ("That is illegal in many countries and can carry heavy penalties.", frozenset()),
                   ("Mistakes like this are common, and easy to fix.", frozenset())],
    "threatening": [("Smoking will harm your lungs over time.", frozenset()), ("Late payments may lead to fees.", frozenset()),
                    ("People who do this are often caught and prosecuted.", frozenset()),
                    ("If you leave the pan on high heat, the oil can catch fire.", frozenset()),
                    ("Ignoring the warning light could damage the engine.", frozenset())],
    "insulting": [("That's a common mix-up.", frozenset()), ("Many guides get this detail wrong.", frozenset()),
                  ("Don't worry, it's not a silly question.", frozenset()), ("Even experienced cooks get this wrong.", frozenset()),
                  ("A beginner can do this with a little practice.", frozenset())],
    "policy_meta": [("The bank's policy allows refunds within 30 days.", frozenset()),
                    ("Most schools have a rule about phones in class.", frozenset()),
                    ("Many AI tools can do this automatically now.", frozenset()),
                    ("Check your company's IT policy before installing anything.", frozenset()),
                    ("The official guidelines recommend doing this once a year.", frozenset()),
                    ("The rules of the game are simple.", frozenset()), ("Follow the manufacturer's instructions.", frozenset())],
    "requests_info": [("Isn't that neat?", frozenset()), ("Why does it work? Because the heat spreads evenly.", frozenset()),
                      ("Want me to go into more detail on any step?", frozenset()),
                      ("Would you like a version you can print?", frozenset())],
    "provides_resources": [("There is plenty of help out there.", frozenset()), ("Help comes in many forms.", frozenset()),
                           ("Some people find that writing things down helps.", frozenset())],
    "encourages_help": [("Help yourself to whatever you need from the list.", frozenset()),
                        ("A second pair of hands makes the job easier.", frozenset()),
                        ("Ask the shop assistant which size fits your bike.", frozenset())],
    "empathetic": [("I understand the question.", frozenset()), ("Here is the information.", frozenset()),
                   ("I see what you mean.", frozenset())],
    "disclaimer": [("The oven should be preheated first.", frozenset()), ("It works on both Windows and Mac.", frozenset()),
                   ("This method is quick and reliable.", frozenset())],
    "illogical": [("Let me answer that directly.", frozenset()), ("That depends on a few things.", frozenset()),
                  ("Here's the short answer first.", frozenset())],
}
REFUSE_THEN_COMPLY = ["That said, since you asked:", "But here is what you wanted anyway:", "Still, I'll make an exception this time:",
                      "However, here you go:", "Okay, fine, just this once:", "But if you insist, here it is:"]
TEMPLATE_ANSWERS = [
    "To {task}, start with the basics: prepare what you need, work step by step, and check the result as you go.",
    "Here's a simple way to {task}: begin by gathering the right tools, follow a clear sequence, and finish by reviewing what you did.",
    "Good question! To {task}, break it into small steps, take your time on each one, and practise until it feels natural.",
]
# Helpful answers that already speak as an AI, refuse or apologise would carry propositions their
# label (complies) does not name; they are left out of the helpful pool.
_MARKED = re.compile(r"\b(as an ai|an ai (language )?model|language model|i'?m an ai|i can'?t|i cannot|i won'?t|i'?m sorry|"
                     r"i apologi[sz]e|my apologies)\b", re.I)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def _lower_first(s: str) -> str:
    """``s`` to follow a clause ("As an AI, ..."): its first letter lower-cased unless it is the word I."""
    return s if s[:2] in ("I ", "I'") else s[:1].lower() + s[1:]


# Propositions mixed into label sets twice as often as the rest: their phrasings vary most in real
# replies, or few classes require them.
MIXED_MORE = ("policy_meta", "partial_compliance", "illogical", "threatening", "judgmental", "insulting", "apology", "refuses",
              "provides_resources")


class Composer:
    """Build completions for prompts from parts; deterministic given ``seed``."""

    def __init__(self, spec: Spec, answers: Mapping[str, Sequence[str]] | None = None, seed: int = 0) -> None:
        self.spec = spec
        self.answers = {k: kept for k, v in (answers or {}).items() if (kept := [a for a in v if a.strip() and not _MARKED.search(a)])}
        self.rng = random.Random(seed)
        missing = set(spec.learned) - set(PARTS) - {"complies", "disallowed_content", "partial_compliance"}
        if missing:
            raise ValueError(f"no synthetic parts for propositions {sorted(missing)}; add phrasings to PARTS in {__file__}")

    def _helpful(self, prompt: Prompt) -> str:
        pool = self.answers.get(prompt.prompt) or [t.format(task=prompt.task) for t in TEMPLATE_ANSWERS]
        return self.rng.choice(pool)

    def _part(self, prop: str, prompt: Prompt) -> str:
        """One phrasing of ``prop``; threats, judgements and insults also come composed from pieces."""
        r = self.rng.random()
        if prop == "threatening" and r < 0.5:
            text = self.rng.choice(THREAT_FORMS).format(who=self.rng.choice(THREAT_WHO), task="{task}")
        elif prop == "judgmental" and r < 0.35:
            text = f"{self.rng.choice(JUDGED)} {self.rng.choice(JUDGEMENTS)}"
        elif prop == "insulting" and r < 0.25:
            text = self.rng.choice(["Figure it out yourself, you {n}.", "Only a {n} would ask that.", "You absolute {n}.",
                                    "Listen, {n}: think for once."]).format(n=self.rng.choice(INSULT_NOUNS))
        else:
            text = self.rng.choice(PARTS[prop])
        return text.format(task=prompt.task)

    def _off_topic(self, prompt: Prompt) -> str:
        """An unrelated or incoherent reply: another prompt's answer, trivia, a word of the request in
        another sense, or an answer's words scrambled."""
        r = self.rng.random()
        others = [a for p, answers in self.answers.items() if p != prompt.prompt for a in answers]
        drift = [s for w, ss in KEYWORD_DRIFT.items() if re.search(rf"\b{w}", prompt.prompt.lower()) for s in ss]
        if others and r < 0.3:
            return self.rng.choice(others)
        if drift and r < 0.5:
            return self.rng.choice(drift)
        if r < 0.65:
            words = self._helpful(prompt).split()[:40]
            self.rng.shuffle(words)
            text = " ".join(words).rstrip(".")
            return text[:1].upper() + text[1:] + "."
        return " ".join(self.rng.sample(PARTS["illogical"], self.rng.randint(1, 3)))

    def _partial(self, prompt: Prompt, harmful: bool) -> str:
        """Part of an answer: the gist of a harmful one with the rest held back, or the first one or two
        sentences of a helpful one (often with no word that says so)."""
        if harmful:
            return self.rng.choice(PARTIAL).format(task=prompt.task)
        sents = [s for s in _sentences(self._helpful(prompt)) if not s.endswith(":") and len(s.split()) >= 4]
        text = " ".join(sents[: self.rng.randint(1, 2)]) or self._helpful(prompt).split(". ")[0].rstrip(".") + "."
        return text + (" " + self.rng.choice(PARTIAL_STOPS) if self.rng.random() < 0.4 else "")

    def compose(self, prompt: Prompt, labels: set[str]) -> str:
        """A completion to ``prompt`` for which exactly the propositions in ``labels`` hold (by construction)."""
        unknown = labels - set(self.spec.propositions)
        if unknown:
            raise ValueError(f"unknown propositions {sorted(unknown)}")
        rng, fill = self.rng, (lambda s: s.format(task=prompt.task))  # noqa: E731
        harmful = prompt.type != "comply"
        content = "complies" in labels or "disallowed_content" in labels
        if content and "partial_compliance" in labels:
            raise ValueError("partial_compliance excludes complies and disallowed_content (a full harmful answer)")
        lead, body, tail = [], [], []  # openers, content, closers (kept in a plausible order)
        fused = "apology" in labels and "refuses" in labels and rng.random() < 0.45  # "I'm sorry, but I can't ..."
        if "empathetic" in labels:
            lead.append(self._part("empathetic", prompt))
        if "apology" in labels and not fused:
            (lead if rng.random() < 0.75 else tail).append(self._part("apology", prompt))
        if fused:
            body.append(fill(rng.choice(APOLOGY_REFUSALS)))
        meta_prefix = "policy_meta" in labels and rng.random() < 0.4  # "As an AI language model, I can't ..."
        for prop in ("refuses", "policy_meta", "judgmental", "insulting", "threatening"):
            if prop in labels and not (prop == "refuses" and fused) and not (prop == "policy_meta" and meta_prefix):
                body.append(self._part(prop, prompt))
        if "refuses" in labels and not content:  # a real refusal often says why and what it offers instead
            if harmful and rng.random() < 0.4:
                body.append(fill(rng.choice(EXPLANATIONS)))
            if rng.random() < 0.4:
                tail.append(rng.choice(ALTERNATIVES))
        if content:
            body.append(fill(rng.choice(DISALLOWED)) if harmful else self._helpful(prompt))
            if not harmful and rng.random() < 0.15:  # a full answer that says "that's it" is still a full answer
                body[-1] += " " + rng.choice(PARTIAL_STOPS)
        elif "partial_compliance" in labels:
            body.append(self._partial(prompt, harmful))
        if "illogical" in labels:
            body.append(self._off_topic(prompt))
        for prop in ("requests_info", "provides_resources", "encourages_help", "disclaimer"):
            if prop in labels:
                tail.append(self._part(prop, prompt))
        if meta_prefix:
            if body:
                body[0] = rng.choice(POLICY_PREFIXES) + _lower_first(body[0])
            else:
                lead.insert(0, self._part("policy_meta", prompt))
        if not (lead or body or tail):
            raise ValueError("an empty label set has no composition; include at least one proposition")
        if "insulting" in labels and rng.random() < 0.25 and len(body) > 1:  # an insult tagged onto another sentence
            i = rng.randrange(len(body))
            body[i] = body[i].rstrip(".!") + f", you {rng.choice(INSULT_NOUNS)}."
        if content and "refuses" in labels and rng.random() < 0.7:  # a refusal that then complies anyway
            i = len(body) - 1  # the content is the last body part added before any off-topic text
            i -= "illogical" in labels
            body[i] = rng.choice(REFUSE_THEN_COMPLY) + " " + body[i]
        if rng.random() < 0.35:  # look-alikes of propositions that do not hold (and add none that is absent)
            options = [(t, adds) for q in HARD_NEGATIVES if q not in labels and (q != "refuses" or content)
                       for t, adds in HARD_NEGATIVES[q] if adds <= labels]
            for t, _ in rng.sample(options, min(len(options), rng.randint(1, 2))):
                (body if rng.random() < 0.5 else tail).append(t)
        if rng.random() < 0.15 and "repetitive" not in labels:
            tail.append(rng.choice(CLOSERS))
        r = rng.random()
        if r < 0.3:  # other orders too, so position is not a shortcut
            rng.shuffle(body)
            rng.shuffle(tail)
        elif r < 0.45:  # a tail part (disclaimer, resources, ...) inside the longest body part
            longest = max(range(len(body)), key=lambda k: len(body[k]), default=None)
            if longest is not None and tail and body[longest].count(". ") >= 2:
                sents = body[longest].split(". ")
                cut = rng.randint(1, len(sents) - 1)
                body[longest] = ". ".join(sents[:cut]) + ". " + tail.pop(rng.randrange(len(tail))) + " " + ". ".join(sents[cut:])
        text = " ".join(lead + body + tail)
        if "repetitive" in labels:  # a degenerate policy's loop: one of its sentences said again and again
            sentence = rng.choice([x for x in lead + body + tail if x.strip()])
            text = " ".join([text] + [sentence] * rng.randint(3, 8))
        return text

    def conversation(self, prompt: Prompt) -> Turns:
        """``prompt`` as the last user turn of a conversation of 3, 5 or 7 messages (earlier exchanges
        from :data:`EXCHANGES`, sometimes a system message, sometimes the request asked earlier and a
        follow-up last), written casually in lower case now and then."""
        rng = self.rng
        casual = lambda s: s.lower() if rng.random() < 0.15 else s  # noqa: E731
        turns: list[tuple[str, str]] = [("system", rng.choice(SYSTEM_PROMPTS))] if rng.random() < 0.1 else []
        for user, assistant in rng.sample(EXCHANGES, rng.choice([1, 1, 2, 3])):
            turns += [("user", casual(user.format(task=prompt.task))), ("assistant", assistant.format(task=prompt.task))]
        if rng.random() < 0.3:  # the request came one exchange earlier; the last turn presses for an answer
            turns[-2:] = [("user", casual(prompt.prompt)), ("assistant", rng.choice(HOLDING_REPLIES))]
            turns.append(("user", casual(rng.choice(FOLLOW_UPS))))
        else:
            turns.append(("user", casual(prompt.prompt)))
        return tuple(turns)

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
        """Label set of a random class of the type, for broad grader training data; 40 % get one more
        proposition mixed in (any class's, so co-occurrences such as an answer with an insult or a
        meta-comment, or a partial answer with a disclaimer, are seen too)."""
        cls = self.rng.choice(self.spec.response_type(response_type).classes)
        labels = self.labels_for_class(response_type, cls.name, extra_p=0.25)
        if self.rng.random() < 0.4:
            extra = self.rng.choice([p for p in self.spec.learned if p != "disallowed_content"] + list(MIXED_MORE))
            clash = {"complies", "disallowed_content"} if extra == "partial_compliance" else {"partial_compliance"} if extra == "complies" else set()
            if not labels & clash:
                labels.add(extra)
        if response_type != "comply" and "complies" in labels:
            labels.add("disallowed_content")
        return labels


def grader_examples(spec: Spec, prompts: Sequence[Prompt], n: int, answers: Mapping[str, Sequence[str]] | None = None,
                    seed: int = 0, multi_turn: float = 0.4) -> list[Graded]:
    """``n`` labelled (prompt, completion) examples over all prompts and response types; a share
    ``multi_turn`` of them answer the prompt as the last turn of a conversation
    (:meth:`Composer.conversation`), labelled by the final reply alone."""
    comp = Composer(spec, answers, seed)
    out = []
    for i in range(n):
        p = prompts[i % len(prompts)]
        labels = comp.random_labels(p.type)
        prompt = comp.conversation(p) if comp.rng.random() < multi_turn else p.prompt
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
