"""Prometheus metrics of the simulated carrier, read from the running `Carrier` at scrape time.

    registry = carrier_registry(carrier)      # control.ControlServer serves it on GET /metrics

Series (Prometheus naming, no number or account name as a label): calls in progress, calls
ended by direction (`in`: to the carrier's numbers, `out`: originated towards the app) and
outcome (EndReason), SIP events by kind (requests, REGISTERs, INVITEs, challenges, auth
failures, ...), current registrations, and the RTP totals of ended calls (packets sent,
received, lost; send ticks on time and skipped). Plus the library's process collectors. Nothing
is counted on the media path: every value is a counter the carrier keeps anyway.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from jego_call.metrics import Live, counter, gauge, new_registry

if TYPE_CHECKING:
    from .trunk import Carrier

# Carrier.stats keys exported as jego_carrier_sip_events_total{event=...}
SIP_EVENTS = ("requests", "options", "registers", "invites", "challenges", "auth_failures", "auth_blocked",
              "bad_acks", "ack_timeouts", "session_expired", "rejected_by_endpoint", "dropped")


def carrier_registry(carrier: Carrier) -> CollectorRegistry:
    """A registry with the process collectors and the carrier's series (read at scrape)."""
    reg = new_registry()

    def collect() -> Iterator[Metric]:
        yield gauge("jego_carrier_calls_active", "Calls to the carrier's numbers in progress",
                    values=[([], float(len(carrier._calls)))])
        yield gauge("jego_carrier_calls_originating", "Calls the carrier is placing towards the app",
                    values=[([], float(len(carrier._out)))])
        ended = dict(carrier.ended)
        yield counter("jego_carrier_calls_ended", "Calls ended, by direction (in: to the carrier, out: "
                      "originated by it) and outcome (EndReason)", ["direction", "outcome"],
                      (([d, o], float(n)) for (d, o), n in sorted(ended.items())))
        yield counter("jego_carrier_calls_answered", "Calls the carrier's numbers answered",
                      values=[([], float(carrier.stats["answered"]))])
        yield counter("jego_carrier_sip_events", "SIP events the carrier handled, by kind", ["event"],
                      (([e], float(carrier.stats.get(e, 0))) for e in SIP_EVENTS))
        yield counter("jego_carrier_media_timeouts", "Answered calls ended for lack of RTP",
                      values=[([], float(carrier.stats["media_timeouts"]))])
        yield counter("jego_carrier_call_records", "Call records written to cdr.jsonl",
                      values=[([], float(carrier.stats["cdr_written"]))])
        now = carrier.now()
        bindings = sum(len(carrier.registrar.bindings(t.username, now)) for t in carrier.cfg.trunks)
        yield gauge("jego_carrier_registrations", "Current REGISTER bindings of the trunk accounts",
                    values=[([], float(bindings))])
        t = carrier.media_totals
        yield counter("jego_carrier_rtp_packets", "RTP packets of ended calls, by direction", ["direction"],
                      [(["sent"], float(t["packets_sent"])), (["received"], float(t["packets_received"]))])
        yield counter("jego_carrier_rtp_lost_packets", "RTP packets lost on the way to the carrier (ended calls)",
                      values=[([], float(t["packets_lost"]))])
        yield counter("jego_carrier_rtp_impaired_dropped_packets", "RTP packets the lab impairment ([media] "
                      "impair) dropped on the carrier's receive path (ended calls)",
                      values=[([], float(t.get("impaired_dropped", 0)))])
        yield counter("jego_carrier_rtp_send_ticks", "20 ms send slots of ended calls: on time, late, skipped",
                      ["timing"], [(["on_time"], float(t["on_time"])),
                                   (["late"], float(max(0.0, t["send_ticks"] - t["on_time"]))),
                                   (["skipped"], float(t["skipped_ticks"]))])

    reg.register(Live(collect))
    return reg


__all__ = ["SIP_EVENTS", "carrier_registry"]
