"""bridge.carrier.scenarios + bridge.sip.causes: carrier.toml, behaviour programmes, URI numbers."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from bridge.carrier.config import DEFAULT_CARRIER_CONFIG, load_carrier_config
from bridge.carrier.scenarios import (
    Answer,
    Behaviour,
    CarrierConfig,
    Drop,
    EarlyMedia,
    Media,
    NeverAnswer,
    NoResponse,
    Reject,
    Ring,
    behaviour_for,
    behaviour_for_uri,
    number_from_uri,
    parse_carrier_config,
    parse_media,
    presets,
)
from bridge.sip.causes import (
    CAUSE_TEXT,
    cause_for_sip,
    parse_reason_header,
    reason_header,
    sip_for_cause,
)
from jego_call.errors import ConfigError
from jego_call.numbering import NumberError


@pytest.fixture(scope="module")
def cfg() -> CarrierConfig:
    return load_carrier_config()


def _raw() -> dict[str, Any]:
    return tomllib.loads(DEFAULT_CARRIER_CONFIG.read_text(encoding="utf-8"))


def _ops(b: Behaviour) -> list[str]:
    return [s.op for s in b.steps]


# --------------------------------------------------------------------------------------------
# the shipped config/carrier.toml


def test_sip_section_defaults(cfg: CarrierConfig) -> None:
    s = cfg.sip
    assert (s.host, s.port, s.transports) == ("127.0.0.1", 5060, ("udp", "tcp"))
    assert (s.ring_timeout_s, s.media_timeout_s, s.early_media_s) == (60.0, 30.0, 1.0)
    assert (s.max_auth_failures, s.auth_window_s) == (20, 60.0)
    assert s.realm and s.rtp_port_min < s.rtp_port_max


def test_trunk_account(cfg: CarrierConfig) -> None:
    t = cfg.trunk("jego")
    assert t is not None and t.password == "jego-trunk-secret"
    assert t.allows("127.0.0.1")
    assert not t.allows("10.0.0.1")
    assert not t.allows("not-an-ip")
    assert cfg.trunk("nobody") is None
    assert cfg.inbound.account == "jego"


def test_every_key_in_carrier_toml_is_commented() -> None:
    lines = DEFAULT_CARRIER_CONFIG.read_text(encoding="utf-8").splitlines()
    section = ""
    for line in lines:
        if line.startswith("["):
            section = line
        elif section in ("[sip]", "[[trunk]]", "[inbound]", "[cdr]") and "=" in line:
            assert "#" in line, f"undocumented key in {section}: {line}"


BUILT_IN = [
    # number, final code, q850, ops
    ("+8613800138000", 200, None, ["ring", "early_media", "answer"]),
    ("+861065529988", 200, None, ["ring", "early_media", "answer"]),
    ("+8613900000486", 486, 17, ["early_media", "reject"]),
    ("+8613900000480", 480, 19, ["ring", "never_answer"]),
    ("+8613900000408", 408, 18, ["no_response"]),
    ("+8613900000404", 404, 1, ["early_media", "reject"]),
    ("+8613900000503", 503, 34, ["reject"]),
    ("+8613900000020", 480, 20, ["reject"]),
]


@pytest.mark.parametrize(("number", "code", "q850", "ops"), BUILT_IN)
def test_built_in_numbers(cfg: CarrierConfig, number: str, code: int, q850: int | None, ops: list[str]) -> None:
    b = behaviour_for(number, cfg)
    assert b.matched == f"number:{number}"
    assert (b.final_code, b.q850, _ops(b)) == (code, q850, ops)


def test_built_in_details(cfg: CarrierConfig) -> None:
    echo = behaviour_for("+8613800138000", cfg)
    assert echo.steps[1] == EarlyMedia(Media("ringback"), 1.0)
    assert echo.final == Answer((Media("echo"),))
    tone = behaviour_for("+861065529988", cfg).final
    assert isinstance(tone, Answer)
    assert tone.media == (Media("tone", 2.0, 440.0), Media("echo"))
    busy = behaviour_for("+8613900000486", cfg)
    assert busy.steps[0] == EarlyMedia(Media("announcement"), 1.0)
    assert busy.announcement_zh == "您拨打的用户正忙，请稍后再拨"
    ring = behaviour_for("+8613900000480", cfg).final
    assert isinstance(ring, NeverAnswer) and ring.seconds == 60.0
    assert behaviour_for("+8613900000404", cfg).steps[0].op == "early_media"
    congestion = behaviour_for("+8613900000503", cfg).final
    assert isinstance(congestion, Reject) and congestion.retry_after == 30
    assert isinstance(behaviour_for("+8613900000408", cfg).final, NoResponse)


def test_ring_timeout_is_configurable() -> None:
    c = load_carrier_config(overrides={"sip": {"ring_timeout_s": 2.5, "early_media_s": 0.2}})
    final = behaviour_for("+8613900000480", c).final
    assert isinstance(final, NeverAnswer) and final.seconds == 2.5
    assert behaviour_for("+8613900000486", c).steps[0] == EarlyMedia(Media("announcement"), 0.2)


# --------------------------------------------------------------------------------------------
# resolution order: number > longest prefix > classification > default


@pytest.mark.parametrize(("number", "matched", "code", "q850"), [
    ("+8613912345678", "default", 200, None),          # allocated mobile
    ("+862165529988", "default", 200, None),           # Shanghai landline
    ("+8613492012345", "default", 200, None),          # satellite (allocated)
    ("+8610000000001", "kind:unallocated", 404, 1),
    ("+8614012345678", "kind:unallocated", 404, 1),
    ("+86110", "kind:emergency", 404, 1),
    ("+86122", "kind:emergency", 404, 1),
    ("+8610086", "kind:short", 404, 1),
    ("+868008108888", "kind:toll_free", 403, 21),
    ("+864008108888", "kind:shared_cost", 403, 21),
    ("+8695588", "kind:shared_cost", 403, 21),
    ("+861380013800", "kind:incomplete", 484, 28),
    ("+86138001380001", "kind:invalid", 484, 28),
    ("+865711234567", "kind:incomplete", 484, 28),     # Hangzhou has 8-digit numbers
    ("+8689165529988", "kind:invalid", 484, 28),       # Lhasa has 7-digit numbers
    ("+862612345678", "kind:invalid", 484, 28),
    ("garbage", "kind:invalid", 484, 28),
    ("+12025550123", "kind:foreign", 403, 21),
])
def test_classification_fallback(cfg: CarrierConfig, number: str, matched: str, code: int,
                                 q850: int | None) -> None:
    b = behaviour_for(number, cfg)
    assert (b.matched, b.final_code, b.q850) == (matched, code, q850)


def test_unallocated_has_announcement(cfg: CarrierConfig) -> None:
    b = behaviour_for("+8610000000001", cfg)
    assert _ops(b) == ["early_media", "reject"]
    assert b.steps[0] == EarlyMedia(Media("announcement"), 1.0)
    assert _ops(behaviour_for("+86110", cfg)) == ["reject"]


def test_default_programme(cfg: CarrierConfig) -> None:
    b = behaviour_for("+8613912345678", cfg)
    assert b.steps == (Ring(180), EarlyMedia(Media("ringback"), 1.0), Answer((Media("echo"),)))
    no_default = parse_carrier_config({})
    assert behaviour_for("+8613912345678", no_default).steps == b.steps


def test_prefix_beats_classification_and_number_beats_prefix() -> None:
    data = _raw()
    data["prefixes"] = {"+86139": {"preset": "congestion"}, "+861391": {"preset": "switched_off"},
                        "+86110": {"preset": "answer"}}
    c = parse_carrier_config(data)
    assert behaviour_for("+8613912345678", c).matched == "prefix:+861391"
    assert behaviour_for("+8613912345678", c).q850 == 20
    assert behaviour_for("+8613812345678", c).matched == "default"
    assert behaviour_for("+8613900000486", c).matched == "number:+8613900000486"
    assert behaviour_for("+8613955555555", c).final_code == 503
    assert behaviour_for("+86110", c).final_code == 200  # an explicit override wins even for 110


def test_unreachable_is_configurable() -> None:
    c = parse_carrier_config({"unreachable": {"toll_free": {"code": 404, "q850": 1},
                                              "emergency": {"announcement_s": 2}}})
    assert (behaviour_for("+868008108888", c).final_code, behaviour_for("+868008108888", c).q850) == (404, 1)
    em = behaviour_for("+86110", c)
    assert _ops(em) == ["early_media", "reject"] and em.final_code == 404  # kind default kept
    assert behaviour_for("+864008108888", c).final_code == 403


def test_presets_are_valid() -> None:
    from bridge.carrier.scenarios import validate_steps

    table = presets(CarrierConfig().sip)
    assert {"answer", "busy", "no_answer", "not_responding", "unallocated", "congestion",
            "switched_off", "invalid", "drop"} <= set(table)
    for b in table.values():
        validate_steps(b.steps)
    assert table["drop"].final_code is None and table["drop"].steps == (Drop(),)


# --------------------------------------------------------------------------------------------
# config errors name the key


def _with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = _raw()
    d = data
    for k in path[:-1]:
        d = d.setdefault(k, {}) if isinstance(d, dict) else d[int(k)]
    if isinstance(d, list):
        d[int(path[-1])] = value
    else:
        d[path[-1]] = value
    return data


@pytest.mark.parametrize(("path", "value", "key"), [
    (("sip", "port"), 70000, "sip.port"),
    (("sip", "port"), "5060", "sip.port"),
    (("sip", "host"), "localhost:5060", "sip.host"),
    (("sip", "transports"), ["udp", "sctp"], "sip.transports"),
    (("sip", "ring_timeout_s"), 0, "sip.ring_timeout_s"),
    (("sip", "ring_timeout_s"), True, "sip.ring_timeout_s"),
    (("sip", "early_media_s"), -1, "sip.early_media_s"),
    (("sip", "rtp_port_min"), 31001, "sip.rtp_port_min"),
    (("sip", "rtp_port_max"), 30000, "sip.rtp_port_max"),
    (("sip", "max_auth_failures"), 0, "sip.max_auth_failures"),
    (("sip", "codecs"), ["G729"], "sip.codecs"),
    (("sip", "bogus"), 1, "sip.bogus"),
    (("bogus",), {}, "bogus"),
    (("trunk",), [], "trunk"),
    (("trunk", "0", "allowed_sources"), ["127.0.0.1", "nope"], "trunk[0].allowed_sources[1]"),
    (("trunk", "0", "password"), "", "trunk[0].password"),
    (("trunk", "0", "username"), "a b", "trunk[0].username"),
    (("trunk", "0", "pasword"), "x", "trunk[0].pasword"),
    (("inbound", "account"), "nobody", "inbound.account"),
    (("inbound", "contact"), "http://x", "inbound.contact"),
    (("unreachable", "toll_free"), {"code": 200}, "unreachable.toll_free.code"),
    (("unreachable", "toll_free"), {"q850": 300}, "unreachable.toll_free.q850"),
    (("unreachable", "toll_free"), {"cause": 1}, "unreachable.toll_free.cause"),
    (("unreachable", "premium"), {"code": 403}, "unreachable.premium"),
    (("cdr", "fsync"), "yes", "cdr.fsync"),
    (("numbers", "13900000486"), {"preset": "busy"}, 'numbers."13900000486"'),
    (("numbers", "+8613900000486"), {"preset": "bizzy"}, 'numbers."+8613900000486".preset'),
    (("numbers", "+8613900000486"), {"preset": "busy", "steps": []}, 'numbers."+8613900000486"'),
    (("numbers", "+8613900000486"), {"steps": []}, 'numbers."+8613900000486".steps'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "reject", "code": 486, "q850": 200}]},
     'numbers."+8613900000486".steps[0].q850'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "reject", "code": 200}]},
     'numbers."+8613900000486".steps[0].code'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "reject"}]}, 'numbers."+8613900000486".steps[0].code'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "reject", "code": 407}]},
     'numbers."+8613900000486".steps[0].code'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "explode"}]}, 'numbers."+8613900000486".steps[0].op'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "ring", "volume": 3}, {"op": "drop"}]},
     'numbers."+8613900000486".steps[0].volume'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "ring"}]}, 'numbers."+8613900000486".steps[0]'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "reject", "code": 486}, {"op": "ring"}]},
     'numbers."+8613900000486".steps[0]'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "ring", "code": 183}, {"op": "drop"}]},
     'numbers."+8613900000486".steps[0].code'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "ring"}, {"op": "drop"}]},
     'numbers."+8613900000486".steps[1]'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "early_media", "source": "echo"}, {"op": "drop"}]},
     'numbers."+8613900000486".steps[0].source'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "answer", "media": ["tone:9000:1"]}]},
     'numbers."+8613900000486".steps[0].media[0]'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "answer", "media": []}]},
     'numbers."+8613900000486".steps[0].media'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "answer", "hangup_after_s": 0}]},
     'numbers."+8613900000486".steps[0].hangup_after_s'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "never_answer", "seconds": -5}]},
     'numbers."+8613900000486".steps[0].seconds'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "reject", "code": 503, "retry_after": 0}]},
     'numbers."+8613900000486".steps[0].retry_after'),
    (("numbers", "+8613900000486"), {"steps": [{"op": "reject", "code": 486, "text": "a\r\nX: y"}]},
     'numbers."+8613900000486".steps[0].text'),
    (("prefixes", "+86139x"), {"preset": "busy"}, 'prefixes."+86139x"'),
    (("default",), {"preset": "nope"}, "default.preset"),
    (("media", "impair"), "loss=150", "media.impair"),
    (("media", "impair"), "drop=5", "media.impair"),
    (("media", "nope"), 1, "media.nope"),
])
def test_config_errors_name_the_key(path: tuple[str, ...], value: Any, key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_carrier_config(_with(path, value))
    assert ei.value.key == key, ei.value
    assert key in str(ei.value)


def test_media_impair_is_off_by_default_and_parsed_when_set() -> None:
    assert parse_carrier_config({}).media.impairment is None
    spec = parse_carrier_config({"media": {"impair": "loss=5,burst=2,seed=1"}}).media.impairment
    assert spec is not None and (spec.loss, spec.burst, spec.seed) == (5.0, 2.0, 1)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_carrier_config(tmp_path / "missing.toml")
    assert "no such file" in str(ei.value)
    bad = tmp_path / "bad.toml"
    bad.write_text("[sip\nport = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_carrier_config(bad)


def test_minimal_config(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[sip]\nport = 0\n[numbers."+8613700000000"]\nsteps = [{ op = "drop" }]\n', encoding="utf-8")
    c = load_carrier_config(p)
    assert c.sip.port == 0 and c.trunks[0].username == "jego"
    assert behaviour_for("+8613700000000", c).steps == (Drop(),)


# --------------------------------------------------------------------------------------------
# media specs


@pytest.mark.parametrize(("spec", "media"), [
    ("echo", Media("echo")),
    ("tone:440:2", Media("tone", 2.0, 440.0)),
    ("tone:450", Media("tone", None, 450.0)),
    ("silence:1.5", Media("silence", 1.5)),
    ("ringback", Media("ringback")),
    ("announcement:3", Media("announcement", 3.0)),
    ("file:tests/data/speech_en_48k.wav", Media("file", path="tests/data/speech_en_48k.wav")),
])
def test_parse_media(spec: str, media: Media) -> None:
    assert parse_media(spec) == media
    assert parse_media(media.spec) == media


@pytest.mark.parametrize("spec", ["", "noise", "tone", "tone:abc", "tone:440:0", "tone:440:2:3", "echo:3",
                                  "file:", "silence:-1", "tone:0:1"])
def test_parse_media_errors(spec: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_media(spec, "k")
    assert ei.value.key == "k"


# --------------------------------------------------------------------------------------------
# Request-URI numbers


@pytest.mark.parametrize(("uri", "number"), [
    ("sip:+8613800138000@127.0.0.1", "+8613800138000"),
    ("sip:+8613800138000@127.0.0.1:5060;user=phone", "+8613800138000"),
    ("<sip:+8613800138000@127.0.0.1;user=phone>", "+8613800138000"),
    ("SIP:008613800138000@carrier", "+8613800138000"),
    ("sip:8613800138000@carrier", "+8613800138000"),
    ("sip:861065529988@carrier", "+861065529988"),
    ("sip:+86-10-6552-9988@carrier;user=phone", "+861065529988"),
    ("sip:%2B8613800138000@carrier", "+8613800138000"),
    ("sip:+8613800138000;isub=12@carrier;user=phone", "+8613800138000"),
    ("sips:+8613800138000@carrier", "+8613800138000"),
    ("tel:+86-138-0013-8000", "+8613800138000"),
    ("tel:+8613800138000;phone-context=+86", "+8613800138000"),
    ("sip:13800138000@carrier", "+8613800138000"),
    ("sip:01065529988@carrier", "+861065529988"),
    ("sip:110@carrier", "+86110"),
    ("sip:+12025550123@carrier", "+12025550123"),
])
def test_number_from_uri(uri: str, number: str) -> None:
    assert number_from_uri(uri) == number


@pytest.mark.parametrize("uri", ["sip:alice@carrier", "sip:carrier", "http://x/+8613800138000",
                                 "sip:@carrier", "sip:1380@carrier", "+8613800138000", "sip:+86 138abc@h"])
def test_number_from_uri_rejects(uri: str) -> None:
    with pytest.raises(NumberError):
        number_from_uri(uri)


def test_behaviour_for_uri(cfg: CarrierConfig) -> None:
    number, b = behaviour_for_uri("sip:008613900000486@127.0.0.1;user=phone", cfg)
    assert number == "+8613900000486" and b.final_code == 486
    raw, bad = behaviour_for_uri("sip:alice@127.0.0.1", cfg)
    assert raw == "sip:alice@127.0.0.1"
    assert (bad.final_code, bad.q850) == (484, 28)
    _, short = behaviour_for_uri("sip:1380@127.0.0.1", cfg)
    assert (short.final_code, short.q850, short.matched) == (484, 28, "kind:incomplete")


# --------------------------------------------------------------------------------------------
# causes


def test_reason_header() -> None:
    assert reason_header(17, "User busy") == 'Q.850;cause=17;text="User busy"'
    assert reason_header(19) == 'Q.850;cause=19;text="No answer from user (user alerted)"'
    assert reason_header(16, "") == "Q.850;cause=16"
    assert reason_header(21, 'say "no"\r\n') == 'Q.850;cause=21;text="say \\"no\\""'
    for bad in (0, 128, -1):
        with pytest.raises(ValueError, match="Q.850 cause must be 1..127"):
            reason_header(bad)


def test_parse_reason_header_round_trip() -> None:
    for cause, text in [(17, "User busy"), (21, 'say "no" \\ now'), (34, "")]:
        assert parse_reason_header(reason_header(cause, text)) == [("Q.850", cause, text)]
    two = parse_reason_header('SIP ;cause=200;text="Call completed elsewhere", Q.850;cause=16')
    assert two == [("SIP", 200, "Call completed elsewhere"), ("Q.850", 16, "")]
    assert parse_reason_header("") == []
    assert parse_reason_header("Q.850;cause=abc") == [("Q.850", None, "")]


@pytest.mark.parametrize(("cause", "code"), [(1, 404), (17, 486), (18, 408), (19, 480), (20, 480), (21, 403),
                                         (22, 410), (27, 502), (28, 484), (34, 503), (41, 503), (16, 0)])
def test_cause_to_sip(cause: int, code: int) -> None:
    assert sip_for_cause(cause) == code
    assert cause in CAUSE_TEXT


@pytest.mark.parametrize(("code", "cause"), [(486, 17), (404, 1), (484, 28), (408, 102), (480, 20), (503, 41),
                                         (603, 21), (410, 22), (600, 17), (499, 31), (599, 41)])
def test_sip_to_cause(code: int, cause: int) -> None:
    assert cause_for_sip(code) == cause
