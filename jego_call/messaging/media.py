"""Media files: content sniffing, thumbnails, voice durations, content-addressed storage.

Blocking functions (`analyse`, `TempUpload.write`, `MediaFiles.commit`) run in a worker thread
(`asyncio.to_thread`). The kind of a file comes from its bytes only, never from its name or
Content-Type: PNG/JPEG/GIF/WebP (checked by Pillow) are photos, WAV/OGG/WebM/MP3 with an audio
stream (probed by av) are voice, anything else is a file. Call `analyse(path)`, then
`MediaFiles.commit(tmp, sha256)`; see service.py for the upload flow.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image, ImageOps

THUMB_MAX = 320
MAX_PIXELS = 50_000_000  # larger images are refused (decompression bombs)
FILE_MIME = "application/octet-stream"

PHOTO_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
AUDIO_MIME = {"wav": "audio/wav", "ogg": "audio/ogg", "webm": "audio/webm", "mp3": "audio/mpeg"}
# av (FFmpeg) demuxer names for each audio magic
AV_FORMATS = {"wav": {"wav"}, "ogg": {"ogg"}, "webm": {"matroska", "webm"}, "mp3": {"mp3"}}


class MediaRejected(Exception):
    """The content is not what it must be (e.g. an image Pillow cannot decode)."""


@dataclass(frozen=True, slots=True)
class Sniffed:
    """What the bytes are: `kind` photo, voice or file, with its details."""

    kind: str
    mime: str
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    thumbnail: bytes | None = None   # JPEG, at most THUMB_MAX px on its longer side
    note: str = ""                   # why a candidate photo/voice turned out to be a file


def magic(head: bytes) -> str | None:
    """The format the first bytes announce: png, jpeg, gif, webp, wav, ogg, webm, mp3, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    if head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def _photo(path: Path, fmt: str) -> Sniffed:
    pil_format = {"png": "PNG", "jpeg": "JPEG", "gif": "GIF", "webp": "WEBP"}[fmt]
    try:
        with Image.open(path, formats=[pil_format]) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise MediaRejected(f"image is {w}x{h}: at most {MAX_PIXELS} pixels")
            img.load()  # decodes everything: a truncated or corrupt image fails here
            shown = ImageOps.exif_transpose(img) or img
            w, h = shown.size
            thumb = shown.convert("RGBA") if shown.mode in ("P", "LA", "RGBA", "PA") else shown.convert("RGB")
            if thumb.mode == "RGBA":  # flatten transparency onto white for JPEG
                bg = Image.new("RGB", thumb.size, (255, 255, 255))
                bg.paste(thumb, mask=thumb.getchannel("A"))
                thumb = bg
            thumb.thumbnail((THUMB_MAX, THUMB_MAX))
            buf = io.BytesIO()
            thumb.save(buf, "JPEG", quality=80)
    except MediaRejected:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MediaRejected(f"not a valid {pil_format} image: {exc}") from None
    return Sniffed("photo", PHOTO_MIME[pil_format], width=w, height=h, thumbnail=buf.getvalue())


def audio_duration(path: Path) -> tuple[str, float]:
    """(av container name, duration in seconds) of the first audio stream; MediaRejected if none.

    Demuxes every packet, so it works for MediaRecorder WebM, which has no duration header.
    """
    try:
        with av.open(str(path), mode="r") as container:
            name = container.format.name
            audio = [s for s in container.streams if s.type == "audio"]
            video = [s for s in container.streams
                     if s.type == "video" and not (s.disposition & av.stream.Disposition.attached_pic)]
            if not audio:
                raise MediaRejected("no audio stream")
            if video:
                raise MediaRejected("has a video stream")
            stream = audio[0]
            tb = stream.time_base or Fraction(1, 1000)
            start: int | None = None
            end = 0
            packets = 0
            for pkt in container.demux(stream):
                if pkt.pts is None:
                    continue
                packets += 1
                start = pkt.pts if start is None else min(start, pkt.pts)
                end = max(end, pkt.pts + (pkt.duration or 0))
            if packets and start is not None and end > start:
                return name, float((end - start) * tb)
            if container.duration:
                return name, container.duration / 1_000_000
            raise MediaRejected("no audio data")
    except MediaRejected:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise MediaRejected(f"not playable audio: {exc}") from None


def analyse(path: Path) -> Sniffed:
    """Tell a photo, a voice message and any other file apart by content (blocking: use a thread)."""
    with open(path, "rb") as fh:
        head = fh.read(32)
    fmt = magic(head)
    if fmt in ("png", "jpeg", "gif", "webp"):
        try:
            return _photo(path, fmt)
        except MediaRejected as exc:
            return Sniffed("file", FILE_MIME, note=str(exc))
    if fmt in AUDIO_MIME:
        try:
            name, duration = audio_duration(path)
        except MediaRejected as exc:
            return Sniffed("file", FILE_MIME, note=str(exc))
        if not set(name.split(",")) & AV_FORMATS[fmt]:
            return Sniffed("file", FILE_MIME, note=f"{fmt} magic but {name} content")
        return Sniffed("voice", AUDIO_MIME[fmt], duration_s=round(duration, 3))
    return Sniffed("file", FILE_MIME)


# -- storage ----------------------------------------------------------------------------------
class TempUpload:
    """A temp file under MEDIA/tmp that hashes what is written; `discard()` removes it."""

    def __init__(self, tmp_dir: Path) -> None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.path = tmp_dir / f"up-{secrets.token_hex(8)}"
        self.fh = open(self.path, "xb")  # noqa: SIM115 - closed by finish()/discard()
        self.sha = hashlib.sha256()
        self.size = 0
        self.head = b""

    def write(self, data: bytes) -> None:
        """Blocking: append and hash `data`."""
        self.fh.write(data)
        self.sha.update(data)
        self.size += len(data)
        if len(self.head) < 32:
            self.head = (self.head + data)[:32]

    def finish(self) -> str:
        """Blocking: flush, fsync and close; returns the sha256 hex."""
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        return self.sha.hexdigest()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class MediaFiles:
    """Files under ROOT/ab/abcdef... (sha256 hex), written via ROOT/tmp and an atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def new_upload(self) -> TempUpload:
        return TempUpload(self.tmp)

    def commit(self, tmp: Path, sha256: str) -> Path:
        """Blocking: move a finished temp file to its content address (dropping it if already there)."""
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            tmp.unlink()
        else:
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        return final

    def store_bytes(self, data: bytes) -> str:
        """Blocking: store small content (a thumbnail); returns its sha256."""
        up = self.new_upload()
        try:
            up.write(data)
            sha = up.finish()
            self.commit(up.path, sha)
        except BaseException:
            up.discard()
            raise
        return sha

    def clean_temp(self) -> int:
        """Remove uploads a crash left half-written; returns how many."""
        n = 0
        if self.tmp.is_dir():
            for p in self.tmp.iterdir():
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
        return n


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
