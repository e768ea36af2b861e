"""COCO captions (cocodataset.org): ``annotations/captions_SPLIT.json`` (``images``: id, file_name;
``annotations``: image_id, caption; about five captions per image) and the images in ``SPLIT/``
(default split ``train2017``). One example per image: ``text`` is its first caption, every caption is
in ``meta["captions"]``."""
from __future__ import annotations

import json
from typing import Iterator

from omni.data.sources.base import IMAGE, Example, Source


class Coco(Source):
    name, modality = "coco", IMAGE

    def examples(self) -> Iterator[Example]:
        split = self.split or "train2017"
        ann_file = self.root / "annotations" / f"captions_{split}.json"
        if not ann_file.is_file():
            have = sorted(p.name for p in (self.root / "annotations").glob("captions_*.json"))
            raise FileNotFoundError(f"{ann_file} is missing; caption files here: {have or 'none'}")
        ann = json.loads(ann_file.read_text(encoding="utf-8"))
        captions: dict[int, list[str]] = {}
        for a in ann.get("annotations", []):
            captions.setdefault(a["image_id"], []).append(" ".join(str(a["caption"]).split()))
        for img in sorted(ann.get("images", []), key=lambda i: i["id"]):
            path = self.root / split / img["file_name"]
            caps = captions.get(img["id"])
            if not caps:
                self.skip("image without caption", path)
                continue
            if not path.is_file():
                self.skip("listed image missing", path)
                continue
            yield Example(IMAGE, str(path), caps[0], {"id": img["id"], "captions": caps})
