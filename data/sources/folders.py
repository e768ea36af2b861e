"""Plain folders of your own media: files plus a ``captions.jsonl`` listing each with its caption
(``{"file": "cat.jpg", "text": "A cat on a mat."}`` per line; paths relative to the folder; extra keys
become metadata). ``images``: any image Pillow reads; ``videos``: ``*.mp4`` / ``*.webm`` / any video
PyAV reads. Files on disk that captions.jsonl does not list are counted as skipped."""
from __future__ import annotations

from typing import Iterator

from omni.data.sources.base import IMAGE, VIDEO, Example, Source, read_jsonl_captions
from omni.io.video import VIDEO_SUFFIXES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class _CaptionFolder(Source):
    suffixes: tuple[str, ...] = ()

    def examples(self) -> Iterator[Example]:
        listed = set()
        for ex in read_jsonl_captions(self, self.root / "captions.jsonl", self.modality):
            listed.add(ex.path)
            yield ex
        for path in sorted(self.root.rglob("*")):
            if path.suffix.lower() in self.suffixes and str(path) not in listed:
                self.skip(f"{self.modality} without caption", path)


class ImageTextFolder(_CaptionFolder):
    name, modality, suffixes = "images", IMAGE, IMAGE_SUFFIXES


class VideoFolder(_CaptionFolder):
    name, modality, suffixes = "videos", VIDEO, VIDEO_SUFFIXES
