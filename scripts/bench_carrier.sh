#!/usr/bin/env bash
# Benchmark of the simulated carrier (`jego carrier`) with sipp at rising call rates.
#
#   scripts/bench_carrier.sh [RATE ...]        default rates: 5 10 20 30 40 50 60
#
# For each rate R, sipp places 10*R calls of tests/sipp/invite_auth_echo.xml (digest-auth INVITE,
# 5 s of speech as PCMA RTP + one RFC 4733 DTMF digit, BYE: ~7.5 s per call) at R calls/s. A rate
# is "held" when sipp reports 0 failed calls AND every call record shows the DTMF digit (the RTP
# got through). It stops at the first rate not held, and prints a Markdown table: calls/s, calls,
# failed, DTMF received, peak concurrent calls (polled from the carrier's control channel), the
# carrier's RTP send-clock on-time share, carrier CPU-seconds per call. As root it runs in a
# private network namespace (loopback only); traffic stays on 127.0.0.1 either way.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
if [ -z "${JEGO_IN_NETNS:-}" ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null 2>&1; then
    export JEGO_IN_NETNS=1
    exec unshare -n -- bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi
command -v sipp >/dev/null || { echo "bench_carrier: sipp is not installed (apt install sip-tester)" >&2; exit 2; }
exec "$ROOT/.venv/bin/python" - "$@" <<'PY'
import csv, io, json, os, re, signal, subprocess, sys, tempfile, threading, time
from pathlib import Path

sys.path.insert(0, os.getcwd())
from bridge.carrier.cdr import read_records
from bridge.carrier.control import control_request

rates = [float(a) for a in sys.argv[1:]] or [5, 10, 20, 30, 40, 50, 60]
work = Path(tempfile.mkdtemp(prefix="bench-carrier-"))
data = work / "data"
log = open(work / "carrier.log", "w")
carrier = subprocess.Popen(
    [sys.executable, "-m", "jego_call.cli.main", "carrier", "--port", "0", "--data-dir", str(data),
     "--max-calls", "5000", "--log-level", "WARNING"], stdout=subprocess.PIPE, stderr=log, text=True)
line = carrier.stdout.readline()
m = re.search(r"udp:127\.0\.0\.1:(\d+)", line)
if not m:
    sys.exit(f"carrier did not start: {line}{(work / 'carrier.log').read_text()}")
port = int(m.group(1))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


rows = []
held = None
done_records = 0
print(f"carrier on 127.0.0.1:{port}; work dir {work}", file=sys.stderr)
try:
    for rate in rates:
        calls = int(rate * 10)
        stat = work / f"r{rate:g}.csv"
        peak = [0]
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], control_request(data, "GET", "/status", timeout=5)["calls"])
                except Exception:
                    pass
                stop.wait(0.5)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        cpu0, media0 = cpu_seconds(carrier.pid), control_request(data, "GET", "/status")["media"]
        mp = 20000 + (int(rate) * 8) % 20000
        cmd = ["sipp", f"127.0.0.1:{port}", "-sf", "tests/sipp/invite_auth_echo.xml", "-s", "+8613800138000",
               "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(free_port()), "-mp", str(mp),
               "-au", "jego", "-ap", "jego-trunk-secret", "-r", f"{rate:g}", "-m", str(calls),
               "-l", str(calls), "-nostdin", "-recv_timeout", "30000", "-trace_stat", "-stf", str(stat),
               "-fd", "600", "-trace_err", "-error_file", str(work / f"r{rate:g}.err")]
        t0 = time.monotonic()
        rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            timeout=calls / rate + 120).returncode
        stop.set()
        poller.join()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            records = read_records(data / "carrier" / "cdr.jsonl")
            if len(records) >= done_records + calls or carrier.poll() is not None:
                break
            time.sleep(0.2)
        new = records[done_records:]
        done_records = len(records)
        status = control_request(data, "GET", "/status")
        media = status["media"]
        ticks = media["send_ticks"] - media0["send_ticks"]
        on_time = (media["on_time"] - media0["on_time"]) / ticks if ticks else 1.0
        cpu = cpu_seconds(carrier.pid) - cpu0
        rows_csv = list(csv.reader(io.StringIO(stat.read_text()), delimiter=";")) if stat.exists() else []
        st = dict(zip(rows_csv[0], rows_csv[-1])) if len(rows_csv) >= 2 else {}
        failed = int(st.get("FailedCall(C)", calls))
        ok = int(st.get("SuccessfulCall(C)", 0))
        dtmf = sum(1 for r in new if r.dtmf == "1")
        good = rc == 0 and failed == 0 and ok == calls and dtmf == calls
        rows.append((rate, calls, ok, failed, dtmf, peak[0], on_time, cpu / calls, time.monotonic() - t0, good))
        print(f"rate {rate:g}/s: ok {ok}/{calls}, failed {failed}, dtmf {dtmf}, peak {peak[0]} concurrent, "
              f"on-time {on_time:.1%}, {cpu / calls:.2f} CPU-s/call -> {'held' if good else 'NOT held'}",
              file=sys.stderr)
        if not good:
            break
        held = rows[-1]
finally:
    carrier.send_signal(signal.SIGTERM)
    carrier.wait(20)

print("| calls/s | calls | successful | failed | DTMF received | peak concurrent calls (RTP) | carrier RTP on time | carrier CPU-s per call | held |")
print("|---|---|---|---|---|---|---|---|---|")
for rate, calls, ok, failed, dtmf, peak, on_time, cpu, _, good in rows:
    print(f"| {rate:g} | {calls} | {ok} | {failed} | {dtmf} | {peak} | {on_time:.1%} | {cpu:.3f} | {'yes' if good else 'no'} |")
if held:
    print(f"\nHeld with 0 failures: {held[0]:g} calls/s, {held[5]} concurrent calls with RTP.")
else:
    print("\nNo rate was held.")
PY
