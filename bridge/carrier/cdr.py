"""Call detail records of the simulated carrier: one JSON object per line in cdr.jsonl.

Build a `CallRecord` when a call ends (`CallRecord.make(...)` fills times and duration), then
`CdrWriter(cdr_path(data_dir)).append(record)`. Read them back with `read_records(path)`
(tests, `jego carrier cdr`). Each append is one `os.write` of one complete line on an O_APPEND
descriptor under an exclusive `flock`, so concurrent calls, threads and processes never
interleave lines; `fsync=True` also makes each line durable before `append` returns.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["CallRecord", "CdrWriter", "cdr_path", "iso_utc", "iter_records", "read_records"]

# JSON key -> attribute, where they differ ("from" is a Python keyword).
_RENAME = {"from": "from_"}
_FIELDS = ("call_id", "from", "to", "number_type", "operator", "area", "start", "answer", "end",
           "sip_code", "q850_cause", "duration_s", "codec", "dtmf", "recording", "outcome", "behaviour",
           "reason_text")


def cdr_path(data_dir: str | os.PathLike[str], cdr_dir: str = "") -> Path:
    """`<data>/carrier/cdr.jsonl`, or `<cdr_dir>/cdr.jsonl` when [cdr].dir is set."""
    return (Path(cdr_dir) if cdr_dir else Path(data_dir) / "carrier") / "cdr.jsonl"


def iso_utc(t: float | datetime | None) -> str | None:
    """Epoch seconds or an aware datetime -> "2024-05-01T12:00:00.123Z" (millisecond precision)."""
    if t is None:
        return None
    dt = t if isinstance(t, datetime) else datetime.fromtimestamp(t, UTC)
    if dt.tzinfo is None:
        raise ValueError("naive datetime: pass an aware UTC datetime or epoch seconds")
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_iso(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call as the carrier saw it. Times are ISO 8601 UTC strings; `answer` is None if the
    call was never answered, and then `duration_s` is 0."""

    call_id: str
    from_: str
    to: str
    number_type: str                 # classify(to).kind: mobile, fixed, unallocated, ...
    operator: str | None             # original operator for mobiles
    area: str | None                 # "10 Beijing" for fixed lines
    start: str                       # INVITE received
    answer: str | None               # 200 OK sent
    end: str                         # final response / BYE
    sip_code: int                    # final response code (200 for answered calls)
    q850_cause: int | None           # cause sent or received at the end (16 = normal clearing)
    duration_s: float                # answer -> end
    codec: str | None = None         # "PCMU" / "PCMA"
    dtmf: str = ""                   # RFC 4733 digits received, in order
    recording: str | None = None     # path of the WAV recording
    outcome: str = ""                # a jego_call.call.reasons.EndReason: hangup, busy, no_answer, not_found ...
    behaviour: str = ""              # Behaviour.matched, e.g. "number:+8613900000486"
    reason_text: str = ""            # the Q.850 Reason text of the BYE/CANCEL that ended it (RFC 3326)

    @classmethod
    def make(cls, *, call_id: str, from_: str, to: str, start: float | datetime, end: float | datetime,
             answer: float | datetime | None = None, sip_code: int, q850_cause: int | None = None,
             number_type: str = "", operator: str | None = None, area: str | None = None,
             codec: str | None = None, dtmf: str = "", recording: str | os.PathLike[str] | None = None,
             outcome: str = "", behaviour: str = "", reason_text: str = "") -> CallRecord:
        """Build a record from epoch seconds or aware datetimes; computes duration_s."""
        s, e = iso_utc(start), iso_utc(end)
        a = iso_utc(answer)
        assert s is not None and e is not None
        ts, te = _parse_iso(s), _parse_iso(e)
        if te < ts:
            raise ValueError(f"end {e} is before start {s}")
        duration = 0.0
        if a is not None:
            ta = _parse_iso(a)
            if not ts <= ta <= te:
                raise ValueError(f"answer {a} is not between start {s} and end {e}")
            duration = round((te - ta).total_seconds(), 3)
        return cls(call_id=call_id, from_=from_, to=to, number_type=number_type, operator=operator,
                   area=area, start=s, answer=a, end=e, sip_code=sip_code, q850_cause=q850_cause,
                   duration_s=duration, codec=codec, dtmf=dtmf,
                   recording=os.fspath(recording) if recording is not None else None,
                   outcome=outcome, behaviour=behaviour, reason_text=reason_text)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: d[_RENAME.get(k, k)] for k in _FIELDS}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CallRecord:
        missing = [k for k in _FIELDS[:15] if k not in d]
        if missing:
            raise ValueError(f"call record without {', '.join(missing)}")
        return cls(**{_RENAME.get(k, k): d[k] for k in _FIELDS if k in d})

    def to_line(self) -> bytes:
        """One JSON line, UTF-8, ending in exactly one newline (no newline inside)."""
        return (json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n").encode()


class CdrWriter:
    """Appends CallRecords to one cdr.jsonl. Thread- and process-safe; cheap to construct."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()

    def append(self, record: CallRecord) -> None:
        """Write one line atomically (blocking; from asyncio use `loop.run_in_executor`)."""
        line = record.to_line()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                view = memoryview(line)
                while view:  # a regular-file write is only short on errors like ENOSPC
                    n = os.write(fd, view)
                    view = view[n:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)  # also releases the flock


def iter_records(path: str | os.PathLike[str], *, strict: bool = False) -> Iterator[CallRecord]:
    """Yield the records in `path` in order. A torn or malformed line (e.g. after a crash) is
    skipped, or raises ValueError with its line number if `strict`."""
    p = Path(path)
    if not p.exists():
        return
    with p.open("rb") as f:
        for no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("no newline at the end (torn write)")
                yield CallRecord.from_json(json.loads(raw))
            except (ValueError, TypeError) as exc:
                if strict:
                    raise ValueError(f"{p}:{no}: {exc}") from None


def read_records(path: str | os.PathLike[str], *, strict: bool = False) -> list[CallRecord]:
    """All records in `path` (missing file: []). See `iter_records`."""
    return list(iter_records(path, strict=strict))
