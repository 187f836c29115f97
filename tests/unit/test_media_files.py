"""jego_call/messaging/media.py on its own: the kind of a file comes from its bytes (magic, then
Pillow or av decode it), never its name; storage is content-addressed, written through tmp/
and an atomic rename, deduplicated, and a crash's half-written uploads are cleaned.
"""

from __future__ import annotations

import hashlib
import io
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from jego_call.messaging.media import (
    FILE_MIME,
    THUMB_MAX,
    MediaFiles,
    MediaRejected,
    analyse,
    audio_duration,
    magic,
)


def image_bytes(fmt: str, size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 30, 128) if mode == "RGBA" else (200, 30, 30)).save(buf, fmt)
    return buf.getvalue()


def wav_bytes(seconds: float, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        t = np.arange(int(seconds * rate)) / rate
        w.writeframes((8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes())
    return buf.getvalue()


def written(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize(("head", "fmt"), [
    (b"\x89PNG\r\n\x1a\n....", "png"), (b"\xff\xd8\xff\xe0", "jpeg"), (b"GIF89a", "gif"), (b"GIF87a", "gif"),
    (b"RIFF\0\0\0\0WEBPVP8 ", "webp"), (b"RIFF\0\0\0\0WAVEfmt ", "wav"), (b"OggS\0", "ogg"),
    (b"\x1a\x45\xdf\xa3", "webm"), (b"ID3\x04", "mp3"), (b"\xff\xfb\x90", "mp3"),
    (b"", None), (b"%PDF-1.7", None), (b"RIFF\0\0\0\0AVI ", None), (b"\xff", None), (b"GIF8", None),
])
def test_magic(head: bytes, fmt: str | None) -> None:
    assert magic(head) == fmt


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_magic_never_raises(head: bytes) -> None:
    assert magic(head) in {None, "png", "jpeg", "gif", "webp", "wav", "ogg", "webm", "mp3"}


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"),
                                           ("WEBP", "image/webp")])
def test_photos_get_their_size_and_a_bounded_jpeg_thumbnail(tmp_path: Path, fmt: str, mime: str) -> None:
    got = analyse(written(tmp_path, "any.name", image_bytes(fmt, (800, 600))))
    assert (got.kind, got.mime, got.width, got.height) == ("photo", mime, 800, 600)
    assert got.thumbnail is not None and got.thumbnail.startswith(b"\xff\xd8\xff")
    with Image.open(io.BytesIO(got.thumbnail)) as thumb:
        assert thumb.size == (THUMB_MAX, 240)   # the longer side at THUMB_MAX, the aspect kept


def test_transparency_is_flattened_and_small_images_are_not_enlarged(tmp_path: Path) -> None:
    got = analyse(written(tmp_path, "x", image_bytes("PNG", (40, 20), "RGBA")))
    assert got.kind == "photo" and got.thumbnail is not None
    with Image.open(io.BytesIO(got.thumbnail)) as thumb:
        assert thumb.size == (40, 20) and thumb.mode == "RGB"


def test_the_name_does_not_decide(tmp_path: Path) -> None:
    assert analyse(written(tmp_path, "photo.png", b"just some text")).kind == "file"
    assert analyse(written(tmp_path, "notes.txt", image_bytes("PNG", (10, 10)))).kind == "photo"


def test_a_truncated_photo_is_a_file_with_a_note(tmp_path: Path) -> None:
    data = image_bytes("PNG", (300, 300))
    got = analyse(written(tmp_path, "cut.png", data[: len(data) // 2]))
    assert (got.kind, got.mime) == ("file", FILE_MIME) and "PNG" in got.note and got.thumbnail is None


def test_voice_gets_its_duration(tmp_path: Path) -> None:
    got = analyse(written(tmp_path, "v", wav_bytes(2.5)))
    assert (got.kind, got.mime) == ("voice", "audio/wav") and got.duration_s == pytest.approx(2.5, abs=0.01)
    name, seconds = audio_duration(tmp_path / "v")
    assert "wav" in name and seconds == pytest.approx(2.5, abs=0.01)


def test_audio_magic_without_audio_is_a_file(tmp_path: Path) -> None:
    got = analyse(written(tmp_path, "w", b"RIFF\x24\0\0\0WAVEfmt " + b"\0" * 40))
    assert got.kind == "file" and got.note
    with pytest.raises(MediaRejected):
        audio_duration(tmp_path / "w")


# --- storage -----------------------------------------------------------------------------------

def test_uploads_are_hashed_and_stored_by_content(tmp_path: Path) -> None:
    files = MediaFiles(tmp_path / "media")
    up = files.new_upload()
    assert up.path.parent == files.tmp
    for chunk in (b"hello ", b"world", b"!" * 50):
        up.write(chunk)
    data = b"hello world" + b"!" * 50
    sha = up.finish()
    assert sha == hashlib.sha256(data).hexdigest() and up.size == len(data) and up.head == data[:32]
    final = files.commit(up.path, sha)
    assert final == files.root / sha[:2] / sha and final.read_bytes() == data
    assert not up.path.exists() and list(files.tmp.iterdir()) == []


def test_the_same_content_is_stored_once(tmp_path: Path) -> None:
    files = MediaFiles(tmp_path / "media")
    a = files.store_bytes(b"thumbnail")
    b = files.store_bytes(b"thumbnail")
    assert a == b
    stored = [p for p in files.root.rglob("*") if p.is_file()]
    assert stored == [files.path(a)] and list(files.tmp.iterdir()) == []


def test_discard_and_clean_temp(tmp_path: Path) -> None:
    files = MediaFiles(tmp_path / "media")
    assert files.clean_temp() == 0          # no tmp/ yet
    up = files.new_upload()
    up.write(b"half")
    up.discard()
    up.discard()                             # twice is fine
    assert not up.path.exists()
    left = [files.new_upload() for _ in range(3)]   # a crash leaves these half-written
    for u in left:
        u.write(b"x")
        u.fh.close()
    assert files.clean_temp() == 3 and list(files.tmp.iterdir()) == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6))
def test_store_is_content_addressed_for_any_bytes(tmp_path_factory: pytest.TempPathFactory,
                                                  blobs: list[bytes]) -> None:
    files = MediaFiles(tmp_path_factory.mktemp("m"))
    shas = [files.store_bytes(b) for b in blobs]
    for blob, sha in zip(blobs, shas, strict=True):
        assert sha == hashlib.sha256(blob).hexdigest() and files.path(sha).read_bytes() == blob
    assert len({p for p in files.root.rglob("*") if p.is_file()}) == len(set(blobs))
