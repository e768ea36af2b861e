"""Mozilla Common Voice (commonvoice.mozilla.org), one language folder: ``clips/*.mp3`` and tab-separated
``validated.tsv`` / ``train.tsv`` / ``dev.tsv`` / ``test.tsv`` with a header row (``client_id``,
``path``, ``sentence``, ``up_votes``, ``down_votes``, ``age``, ``gender``, ``accents``, ``locale``, ...).
The split names the .tsv (default ``validated``). mp3 is decoded by soundfile (libsndfile >= 1.1)."""
from __future__ import annotations

import csv
import sys
from typing import Iterator

from omni.data.sources.base import AUDIO, Example, Source

META = ("client_id", "age", "gender", "accents", "accent", "locale", "up_votes", "down_votes")


class CommonVoice(Source):
    name, modality = "commonvoice", AUDIO

    def examples(self) -> Iterator[Example]:
        tsv = self.root / f"{self.split or 'validated'}.tsv"
        if not tsv.is_file():
            have = sorted(p.stem for p in self.root.glob("*.tsv"))
            raise FileNotFoundError(f"{tsv} is missing; this Common Voice folder has the splits {have}")
        csv.field_size_limit(sys.maxsize)
        with open(tsv, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if not {"path", "sentence"} <= set(reader.fieldnames or ()):
                raise ValueError(f"{tsv}: expected the columns path and sentence, got {reader.fieldnames}")
            for row in reader:
                clip = self.root / "clips" / (row.get("path") or "")
                text = (row.get("sentence") or "").strip()
                if not row.get("path") or not clip.is_file():
                    self.skip("listed clip missing", clip)
                    continue
                if not text:
                    self.skip("empty sentence", clip)
                    continue
                meta = {k: row[k] for k in META if row.get(k)}
                yield Example(AUDIO, str(clip), text, {"id": clip.stem, "speaker": row.get("client_id", ""), **meta})
