"""The omni task's user-audio augmentation (omni_train.user_level_dropout)."""
from __future__ import annotations

import pytest
import torch

from omni.config import ConfigError, config_from_dict
from omni.conversation import MOD_AUDIO, Audio, Message, Text
from omni.train.tasks.omni import OmniTask, OmniTrainConfig, batch_from_streams, drop_user_levels
from tests import omni_fixtures as F


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    tok, codec, v, fmt, model = F.setup(tmp_path_factory.mktemp("tok"))
    g = torch.Generator().manual_seed(0)
    speech = lambda n: torch.randint(0, v.audio_codes, (v.audio_codebooks, n), generator=g)  # noqa: E731
    s2s = [Message("user", [Audio(speech(20))]), Message("assistant", [Audio(speech(12), text="hi there")])]
    asr = [Message("user", [Audio(speech(9))]), Message("assistant", [Text("hello")])]
    return batch_from_streams([fmt.serialise(c) for c in (s2s, asr, s2s)], fmt.sp["<|pad|>"])


def test_only_user_audio_loses_levels_and_each_utterance_keeps_a_prefix(batch):
    K = batch["audio"].shape[-1]
    user = (batch["modality"] == MOD_AUDIO) & ~batch["loss"] & (batch["audio"][..., 0] >= 0)
    seen = set()
    for seed in range(20):
        out = drop_user_levels(batch, 1.0, torch.Generator().manual_seed(seed))["audio"]
        assert torch.equal(out[~user], batch["audio"][~user])  # assistant speech and non-frames untouched
        for b in range(out.shape[0]):
            kept = (out[b][user[b]] >= 0).sum(-1)  # levels kept per user frame
            assert kept.min() == kept.max() and 1 <= int(kept[0]) <= K  # one draw per utterance
            assert torch.equal((out[b][user[b]] >= 0), torch.arange(K) < kept[:, None])  # a prefix of levels
            assert torch.equal(out[b][user[b]][:, : int(kept[0])], batch["audio"][b][user[b]][:, : int(kept[0])])
            seen.add(int(kept[0]))
    assert len(seen) > K // 2  # the level count varies
    assert torch.equal(drop_user_levels(batch, 0.0)["audio"], batch["audio"])


def test_the_task_drops_levels_only_while_training(batch):
    task, model = OmniTask(), torch.nn.Linear(1, 1)
    task._weights = OmniTrainConfig(user_level_dropout=1.0)
    torch.manual_seed(0)
    assert not torch.equal(task._augment(model.train(), batch)["audio"], batch["audio"])
    assert task._augment(model.eval(), batch) is batch  # validation and serving read every level
    task._weights = OmniTrainConfig()
    assert task._augment(model.train(), batch) is batch


def test_level_dropout_must_be_a_probability():
    with pytest.raises(ConfigError, match=r"user_level_dropout must be in \[0, 1\]"):
        config_from_dict({"omni_train": {"user_level_dropout": 1.5}})
