"""Every key of jego.toml, checked one by one: a value of the wrong type, from the file or from a
JEGO_<SECTION>_<KEY> variable, is a ConfigError that names the dotted key and says what was
expected; positive keys refuse 0 and below; keys with choices refuse anything else. And the
shared builder (jego_call/schema.py) on a small dataclass of its own.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jego_call import config as config_module
from jego_call import schema
from jego_call.config import Config, env_overrides, load_config
from jego_call.errors import ConfigError


def refusal(fn: Callable[[], object]) -> ConfigError | None:
    """The ConfigError `fn()` raises, or None; any other exception fails the test."""
    try:
        fn()
    except ConfigError as exc:
        return exc
    return None


def every_key() -> list[tuple[str, str, Any]]:
    """(section, key, annotation) for every key of every section of Config."""
    out = []
    for section in dataclasses.fields(Config):
        sub = typing.get_type_hints(Config)[section.name]
        for name, tp in typing.get_type_hints(sub).items():
            out.append((section.name, name, tp))
    return out


KEYS = every_key()
IDS = [f"{s}.{k}" for s, k, _ in KEYS]

# a value of the wrong type for each annotation, and the words the error must use
WRONG: dict[Any, tuple[Any, str]] = {bool: ("yes", "true or false"), int: ("ten", "an integer"),
                                     float: ("fast", "a number"), str: (12, "a string")}


def wrong_for(tp: Any) -> tuple[Any, str]:
    if tp in WRONG:
        return WRONG[tp]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "not-a-list", "a list"
    if origin is dict or tp is dict:
        return "not-a-table", "a table"
    return None, ""


def test_the_key_list_covers_every_section() -> None:
    sections = {s for s, _, _ in KEYS}
    assert sections == {f.name for f in dataclasses.fields(Config)}
    assert len(KEYS) > 60   # every section contributes; a refactor that loses a section shows here


@pytest.mark.parametrize(("section", "key", "tp"), KEYS, ids=IDS)
def test_a_wrong_type_in_the_file_names_the_key(section: str, key: str, tp: Any) -> None:
    value, words = wrong_for(tp)
    if value is None:
        pytest.fail(f"no wrong value known for {section}.{key}: {tp!r}")   # a new kind of key: add it above
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={}, overrides={section: {key: value}})
    assert info.value.key == f"{section}.{key}"
    assert f"expected {words}" in info.value.message and repr(value) in info.value.message
    assert str(info.value).startswith(f"config error: {section}.{key}: ")


SCALARS = [(s, k, tp) for s, k, tp in KEYS if tp in (bool, int, float)]


@pytest.mark.parametrize(("section", "key", "tp"), SCALARS, ids=[f"{s}.{k}" for s, k, _ in SCALARS])
def test_a_wrong_environment_value_names_the_key_and_the_variable(section: str, key: str, tp: Any) -> None:
    var = f"JEGO_{section.upper()}_{key.upper()}"
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={var: "not-a-value"})
    assert info.value.key == f"{section}.{key}" and "'not-a-value'" in info.value.message


@pytest.mark.parametrize(("section", "key", "tp"), SCALARS, ids=[f"{s}.{k}" for s, k, _ in SCALARS])
def test_a_good_environment_value_lands_on_the_key(section: str, key: str, tp: Any) -> None:
    default = getattr(getattr(Config(), section), key)
    raw, want = {bool: ("off" if default else "on", not default), int: ("7", 7), float: ("7.5", 7.5)}[tp]
    if f"{section}.{key}" in config_module._CHOICES:
        pytest.skip("a key with choices is a string")
    environ = {f"JEGO_{section.upper()}_{key.upper()}": raw}
    error = refusal(lambda: load_config(None, environ=environ))
    if error is not None:   # a check across keys refused the new value: it names this key and says why
        assert error.key == f"{section}.{key}" and error.message
        return
    assert getattr(getattr(load_config(None, environ=environ), section), key) == want


POSITIVE = sorted(config_module._POSITIVE)


@pytest.mark.parametrize("dotted", POSITIVE)
@pytest.mark.parametrize("bad", [0, -1])
def test_positive_keys_refuse_zero_and_below(dotted: str, bad: int) -> None:
    section, key = dotted.split(".")
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={}, overrides={section: {key: bad}})
    assert info.value.key == dotted and "greater than 0" in info.value.message


def test_every_positive_and_choice_key_exists() -> None:
    known = {f"{s}.{k}" for s, k, _ in KEYS}
    assert set(config_module._POSITIVE) <= known
    assert set(config_module._CHOICES) <= known


@pytest.mark.parametrize(("dotted", "choices"), sorted(config_module._CHOICES.items()))
def test_choice_keys_refuse_other_words_and_take_their_own(dotted: str, choices: tuple[str, ...]) -> None:
    section, key = dotted.split(".")
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={}, overrides={section: {key: "klingon"}})
    assert info.value.key == dotted and all(c in info.value.message for c in choices)
    for choice in choices:
        assert getattr(getattr(load_config(None, environ={}, overrides={section: {key: choice}}), section),
                       key) == choice


@pytest.mark.parametrize(("raw", "want"), [("1", True), ("true", True), ("YES", True), (" on ", True),
                                           ("0", False), ("false", False), ("No", False), ("off", False)])
def test_environment_booleans(raw: str, want: bool) -> None:
    assert load_config(None, environ={"JEGO_CARRIER_ENABLED": raw}).carrier.enabled is want


def test_environment_unknown_key_and_bad_toml_name_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        env_overrides(Config, {"JEGO_CALLS_RING_TIMOUT_S": "3"})
    assert info.value.key == "calls.ring_timout_s" and "JEGO_CALLS_RING_TIMOUT_S" in info.value.message
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"JEGO_ICE_SERVERS": "[{urls = "})
    assert info.value.key == "ice.servers" and "TOML" in info.value.message
    # other variables and other prefixes are left alone
    assert env_overrides(Config, {"PATH": "/bin", "JEGOX_HTTP_PORT": "1", "JEGO_NOSECTION": "1"}) == {}


def test_a_section_that_is_not_a_table_and_an_unknown_section(tmp_path: Any) -> None:
    p = tmp_path / "c.toml"
    p.write_text("http = 5\n")
    with pytest.raises(ConfigError) as info:   # the environment cannot add a key to it either
        load_config(p, environ={"JEGO_HTTP_PORT": "1"})
    assert info.value.key == "http" and "table" in info.value.message
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={}, overrides={"htp": {"port": 1}})
    assert info.value.key == "htp" and info.value.message == "unknown key"


def test_the_file_then_the_environment_then_overrides(tmp_path: Any) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[http]\nport = 1000\nhost = \"127.0.0.1\"\n[calls]\nring_timeout_s = 3\n")
    cfg = load_config(p, environ={"JEGO_HTTP_PORT": "2000"}, overrides={"calls": {"ring_timeout_s": 4.5}})
    assert (cfg.http.port, cfg.http.host, cfg.calls.ring_timeout_s) == (2000, "127.0.0.1", 4.5)
    assert isinstance(cfg.calls.ring_timeout_s, float)
    p.write_text("[http\nport = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        load_config(p, environ={})
    assert info.value.key == str(p)


# --- the builder itself ------------------------------------------------------------------------

@dataclass(frozen=True)
class Inner:
    level: int = 1
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    ratio: float = 0.5
    table: dict[str, str] = field(default_factory=dict)
    on: bool = False
    mode: str = "a"


def build_outer(data: dict[str, Any]) -> Outer:
    out: Outer = schema.build(Outer, data, "", positive={"inner.level"}, choices={"mode": ("a", "b")})
    return out


def test_builder_nests_and_converts() -> None:
    got = build_outer({"inner": {"level": 3, "names": ["x", "y"]}, "ratio": 2, "table": {"k": "v"}, "on": True,
                       "mode": "b"})
    assert got == Outer(Inner(3, ("x", "y")), 2.0, {"k": "v"}, True, "b") and isinstance(got.ratio, float)
    assert build_outer({}) == Outer()


@pytest.mark.parametrize(("data", "key", "words"), [
    ({"inner": {"names": ["x", 2]}}, "inner.names[1]", "a string"),
    ({"inner": {"names": "x"}}, "inner.names", "a list"),
    ({"inner": 3}, "inner", "a table [inner]"),
    ({"inner": {"levle": 3}}, "inner.levle", "unknown key"),
    ({"inner": {"level": 0}}, "inner.level", "greater than 0"),
    ({"inner": {"level": True}}, "inner.level", "an integer"),
    ({"ratio": "1"}, "ratio", "a number"),
    ({"ratio": False}, "ratio", "a number"),
    ({"table": ["k"]}, "table", "a table"),
    ({"on": 1}, "on", "true or false"),
    ({"mode": "c"}, "mode", "one of a, b"),
])
def test_builder_errors_name_the_dotted_key(data: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_outer(data)
    assert info.value.key == key and words in info.value.message


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["inner", "ratio", "table", "on", "mode", "extra"]),
                       st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False),
                                 st.text(max_size=3), st.lists(st.text(max_size=2), max_size=2),
                                 st.dictionaries(st.sampled_from(["level", "names", "x"]),
                                                 st.one_of(st.integers(-2, 2), st.lists(st.text(max_size=2)))))))
def test_builder_builds_or_names_a_key_it_was_given(data: dict[str, Any]) -> None:
    error = refusal(lambda: build_outer(data))
    if error is None:
        assert isinstance(build_outer(data), Outer)
    else:   # the error points into what was given
        assert error.key.split(".")[0].split("[")[0] in data, (error.key, data)
