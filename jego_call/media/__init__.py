"""aiortc media endpoint for Jego Call: one `MediaEndpoint` per call leg, paced audio sources,
sinks (WAV recorder, live analyser) and offline analysis (`analysis`: level, frequency, PESQ).

Start with `endpoint.MediaEndpoint`; pick a source from `tracks.source_from_spec` and sinks
from `sinks`.
"""
