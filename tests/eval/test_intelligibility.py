"""The intelligibility judge: Whisper's normalisation on both sides, corpus WER, and a Whisper
tiny.en transcription of espeak-ng speech (the quick judge)."""
import pytest

from omni.eval.intelligibility import Judge, normalize_text, word_error_rate
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
    text = "please open the kitchen window before the storm"
    wave, sample_rate = EspeakVoice("en-us", "m3", 150, 50, 50).synth(text)
    heard = Judge("tiny.en").transcribe(wave, sample_rate)
    assert word_error_rate([text], [heard]) <= 0.25, heard
