"""The intelligibility judge: Whisper's normalisation on both sides, corpus WER, and a Whisper
tiny.en transcription of espeak-ng speech (the quick judge)."""
import pytest
import torch

from omni.eval.intelligibility import Judge, content_words, holds_answer, normalize_text, word_error_rate
from omni.data.voices import EspeakVoice


@pytest.mark.parametrize("raw, normal", [
    ("Hello, World!", "hello world"),
    ("Mr. Smith won't go", "mister smith will not go"),
    ("Twenty-one dogs", "21 dogs"),
    ("21 dogs.", "21 dogs"),
    ("The colour grey", "the color gray"),
    ("  spaced   out  ", "spaced out"),
])
def test_normalisation(raw, normal):
    assert normalize_text(raw) == normal


def test_wer_ignores_case_punctuation_and_number_spelling():
    assert word_error_rate(["Ten of clubs."], ["10 of Clubs"]) == 0.0
    assert word_error_rate(["four queen of clubs"], ["for queen of clothes"]) == pytest.approx(2 / 4)


def test_corpus_wer_weighs_by_reference_words():
    # 1 error in 1 word + 0 errors in 3 words = 1/4 (not the mean of per-clip rates, 1/2)
    assert word_error_rate(["yes", "red green blue"], ["no", "red green blue"]) == pytest.approx(1 / 4)
    assert word_error_rate(["", "a b"], ["extra", "a b"]) == pytest.approx(1 / 2)  # insertions count
    with pytest.raises(ValueError, match="hypotheses"):
        word_error_rate(["a"], [])
    with pytest.raises(ValueError, match="empty"):
        word_error_rate([""], ["a"])


@pytest.mark.slow
def test_tiny_en_transcribes_espeak_speech():
    """Words heard right, with a log-probability that says how sure; noise is heard less surely."""
    text = "please open the kitchen window before the storm"
    wave, sample_rate = EspeakVoice("en-us", "m3", 150, 50, 50).synth(text)
    judge = Judge("tiny.en")
    heard = judge.transcribe(wave, sample_rate)
    assert word_error_rate([text], [heard]) <= 0.25, heard
    sure = judge.hear(wave, sample_rate)
    assert sure.text == heard and -1.0 < sure.logprob <= 0.0, sure
    noisy = judge.hear(wave + 0.3 * torch.randn(len(wave), generator=torch.Generator().manual_seed(0)), sample_rate)
    assert noisy.logprob < sure.logprob, (noisy, sure)


def test_content_words_drop_only_function_words():
    assert content_words("The sky is blue.") == ["sky", "blue"]
    assert content_words("The opposite of up is down.") == ["opposite", "up", "down"]
    assert content_words("Two plus two is four.") == ["2", "+2", "4"]  # Whisper's normaliser writes "plus" as "+"
    assert content_words("It is.") == ["it", "is"]  # nothing but function words: keep them all


@pytest.mark.parametrize("answer, transcript, held", [
    ("The sky is blue.", "the sky is blue", True),
    ("The sky is blue.", "Sky? Blue!", True),  # function words may be missing
    ("The sky is blue.", "The sky is very blue today.", True),  # other words may come between
    ("Two plus two is four.", "2 plus 2 is 4", True),  # numbers as digits on both sides
    ("A day has twenty four hours.", "A day has 24 hours.", True),
    ("The colour of snow", "the color of snow", True),  # spellings made American on both sides
    ("The sky is blue.", "the sky is grey", False),
    ("The sky is blue.", "You", False),
    ("The sky is blue.", "", False),
    ("Tuesday comes after Monday.", "Monday comes after Tuesday.", False),  # in the answer's order
    ("Two plus two is four.", "two is four", False),
    ("Bees make honey.", "honey bees make", False),
    ("Rain falls from clouds.", "Rainfalls from clouds.", True),  # a compound of two adjacent answer words
    ("Rain falls from clouds.", "Rainfalls from crowds.", False),
    ("Tuesday comes after Monday.", "Mondaytuesday comes after", False),  # only adjacent words, in order
])
def test_holds_answer(answer, transcript, held):
    assert holds_answer(answer, transcript) is held


def test_holds_answer_needs_an_answer():
    with pytest.raises(ValueError, match="no words"):
        holds_answer(" ?! ", "anything")
