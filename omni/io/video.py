"""Video files (mp4, webm, mkv, mov, avi, ...) -> RGB frames at a chosen frame rate, decoded by PyAV
(FFmpeg's libraries, bundled in the ``av`` wheel).

Decoding is FFmpeg's; only the choice of frames is ours: for an output rate ``fps`` we keep, for each
output instant ``t = i / fps``, the last decoded frame whose presentation time is <= t (sample-and-hold,
what a player shows at that instant). That works for variable-frame-rate files, where picking every
n-th frame would not.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import av
import numpy as np

VIDEO_SUFFIXES = (".mp4", ".m4v", ".webm", ".mkv", ".mov", ".avi", ".ogv", ".mpg", ".mpeg")


class VideoError(ValueError):
    """A file that is not a readable video (missing, truncated, no video stream, undecodable)."""


def read_video(path: str | Path, fps: Optional[float] = None, max_frames: Optional[int] = None,
               max_seconds: Optional[float] = None) -> tuple[np.ndarray, float]:
    """Decode ``path`` to ``(frames uint8 [T, H, W, 3], rate in frames/s)``.

    Args:
        path: a video file in any container/codec FFmpeg reads.
        fps: output frame rate (Hz); None keeps every decoded frame at the stream's average rate.
        max_frames: stop after this many output frames (None: no limit).
        max_seconds: stop at this presentation time (seconds; None: the whole stream).
    Raises:
        VideoError: the file is missing, has no video stream or cannot be decoded (the message says which).
    """
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such video file")
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: the file holds no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or stream.guessed_rate or 0) or None
            out_rate = float(fps) if fps else rate
            if out_rate is None:
                raise VideoError(f"{path}: the stream declares no frame rate; pass fps=")
            held: Optional[np.ndarray] = None
            end = None  # when the last frame stops being shown (s)
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else len(frames) / out_rate
                end = t + 1.0 / (rate or out_rate)
                if max_seconds is not None and t >= max_seconds:
                    end = max_seconds
                    break
                if fps is None:
                    frames.append(frame.to_ndarray(format="rgb24"))
                else:
                    # Emit every output instant that falls before this frame, holding the previous one.
                    while held is not None and len(frames) / out_rate < t:
                        frames.append(held)
                        if max_frames is not None and len(frames) >= max_frames:
                            break
                    held = frame.to_ndarray(format="rgb24")
                if max_frames is not None and len(frames) >= max_frames:
                    break
            # The last frame is shown until the stream ends, one frame period after it starts.
            while fps is not None and held is not None and (max_frames is None or len(frames) < max_frames):
                if frames and len(frames) / out_rate >= end:
                    break
                frames.append(held)
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: not a readable video ({e})") from e
    if not frames:
        raise VideoError(f"{path}: no frames decoded")
    return np.stack(frames), out_rate

