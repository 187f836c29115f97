"""bridge.carrier.cdr: one JSON line per call, atomic under concurrency, readable back."""

from __future__ import annotations

import json
import multiprocessing
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from bridge.carrier.cdr import CallRecord, CdrWriter, cdr_path, iso_utc, read_records

FIELDS = {"call_id", "from", "to", "number_type", "operator", "area", "start", "answer", "end", "sip_code",
          "q850_cause", "duration_s", "codec", "dtmf", "recording"}
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def _answered(call_id: str = "c1", dtmf: str = "123#") -> CallRecord:
    return CallRecord.make(call_id=call_id, from_="+4930123456", to="+8613800138000", start=T0,
                           answer=T0 + 1.25, end=T0 + 61.75, sip_code=200, q850_cause=16,
                           number_type="mobile", operator="China Mobile", codec="PCMU", dtmf=dtmf,
                           recording=Path("/data/carrier/rec/c1.wav"), outcome="hangup",
                           behaviour="number:+8613800138000")


def test_cdr_path(tmp_path: Path) -> None:
    assert cdr_path(tmp_path) == tmp_path / "carrier" / "cdr.jsonl"
    assert cdr_path(tmp_path, str(tmp_path / "x")) == tmp_path / "x" / "cdr.jsonl"


def test_iso_utc() -> None:
    assert iso_utc(T0) == "2023-11-14T22:13:20.000Z"
    assert iso_utc(T0 + 0.5) == "2023-11-14T22:13:20.500Z"
    east8 = datetime(2023, 11, 15, 6, 13, 20, tzinfo=timezone(timedelta(hours=8)))
    assert iso_utc(east8) == "2023-11-14T22:13:20.000Z"
    assert iso_utc(None) is None
    with pytest.raises(ValueError, match="naive"):
        iso_utc(datetime(2023, 1, 1))  # naive


def test_line_has_all_fields_and_is_one_line(tmp_path: Path) -> None:
    path = cdr_path(tmp_path)
    CdrWriter(path).append(_answered())
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    d = json.loads(raw)
    assert FIELDS <= set(d)
    assert d["from"] == "+4930123456" and d["to"] == "+8613800138000"
    assert (d["start"], d["answer"], d["end"]) == ("2023-11-14T22:13:20.000Z", "2023-11-14T22:13:21.250Z",
                                                   "2023-11-14T22:14:21.750Z")
    assert d["duration_s"] == 60.5
    assert (d["sip_code"], d["q850_cause"], d["codec"], d["dtmf"]) == (200, 16, "PCMU", "123#")
    assert d["recording"] == "/data/carrier/rec/c1.wav"
    for key in ("start", "answer", "end"):
        assert datetime.fromisoformat(d[key].replace("Z", "+00:00")).tzinfo == UTC


def test_unanswered_call(tmp_path: Path) -> None:
    rec = CallRecord.make(call_id="busy-1", from_="+4930123456", to="+8613900000486", start=T0, end=T0 + 1.5,
                          sip_code=486, q850_cause=17, number_type="mobile", outcome="busy")
    path = tmp_path / "cdr.jsonl"
    CdrWriter(path, fsync=True).append(rec)
    (back,) = read_records(path)
    assert back == rec
    assert back.answer is None and back.duration_s == 0.0 and back.recording is None


def test_round_trip_unicode_and_newlines_in_values(tmp_path: Path) -> None:
    rec = CallRecord.make(call_id="id\nwith-newline", from_="+8613800138000", to="+861065529988", start=T0,
                          end=T0 + 2, sip_code=404, q850_cause=1, number_type="fixed", area="10 北京市")
    path = tmp_path / "cdr.jsonl"
    w = CdrWriter(path)
    w.append(rec)
    w.append(_answered())
    assert path.read_bytes().count(b"\n") == 2
    assert read_records(path) == [rec, _answered()]


def test_make_rejects_inconsistent_times() -> None:
    with pytest.raises(ValueError, match="is before start"):
        CallRecord.make(call_id="x", from_="a", to="b", start=T0, end=T0 - 1, sip_code=200)
    with pytest.raises(ValueError, match="is not between"):
        CallRecord.make(call_id="x", from_="a", to="b", start=T0, answer=T0 + 5, end=T0 + 2, sip_code=200)


def test_reader_skips_torn_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "cdr.jsonl"
    CdrWriter(path).append(_answered("a"))
    with path.open("ab") as f:
        f.write(b"not json\n")
        f.write(b'{"call_id": "no-fields"}\n')
    CdrWriter(path).append(_answered("b"))
    with path.open("ab") as f:
        f.write(_answered("torn").to_line()[:40])  # crash in the middle of a write
    assert [r.call_id for r in read_records(path)] == ["a", "b"]
    with pytest.raises(ValueError, match=r"cdr.jsonl:2"):
        read_records(path, strict=True)
    assert read_records(tmp_path / "missing.jsonl") == []


def test_concurrent_threads_do_not_interleave(tmp_path: Path) -> None:
    path = tmp_path / "carrier" / "cdr.jsonl"
    writers = [CdrWriter(path) for _ in range(4)]  # separate writers, like separate calls
    big = "0123456789*#" * 2000  # ~24 KB lines: far above PIPE_BUF, so atomicity is ours
    n_threads, per_thread = 8, 40

    def work(t: int) -> None:
        for i in range(per_thread):
            writers[t % 4].append(_answered(f"t{t}-{i}", dtmf=big))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    ids = [json.loads(line)["call_id"] for line in lines[:-1]]  # each line parses on its own
    assert sorted(ids) == sorted(f"t{t}-{i}" for t in range(n_threads) for i in range(per_thread))
    assert all(r.dtmf == big for r in read_records(path, strict=True))


def _proc_work(path: str, tag: str) -> None:
    w = CdrWriter(path)
    for i in range(25):
        w.append(_answered(f"{tag}-{i}", dtmf="5" * 20000))


def test_concurrent_processes_do_not_interleave(tmp_path: Path) -> None:
    path = tmp_path / "cdr.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_proc_work, args=(str(path), f"p{k}")) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    records = read_records(path, strict=True)
    assert len(records) == 100
    assert len({r.call_id for r in records}) == 100
