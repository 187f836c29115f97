"""The `jego` console script in-process (`jego_call.cli.main.main(argv)`), where no server is
needed: argparse refusals, usage errors with one clear line on stderr and exit 2 (found before
anything goes to a server), the offline commands on a data dir in tmp_path (user, credit, cdr)
with their exit codes, and a server that is not there (exit 1, one line). Also the dialer's pure
helpers: what a target is, and which outcome word a call's end gives.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import aioice.ice
import pytest
from argon2 import PasswordHasher
from hypothesis import given
from hypothesis import strategies as st

from jego_call import accounts as acc
from jego_call.cli import dial
from jego_call.cli.main import build_parser, main
from jego_call.cli.message import split_target
from jego_call.cli.serve import config_from_args
from jego_call.cli.signed_in import UsageError
from jego_call.config import load_config
from jego_call.media import endpoint

NOWHERE = "http://127.0.0.1:9"      # the discard port: nothing listens in the test's namespace
DIAL_LOGIN = ["--user", "alice", "--password", "correct-horse-9", "--server", NOWHERE]
LOGIN = [*DIAL_LOGIN, "--timeout", "5"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No JEGO_* setting of the machine leaks in; cheap argon2; aioice's host list restored."""
    for key in list(os.environ):
        if key.startswith("JEGO_"):
            monkeypatch.delenv(key)
    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    monkeypatch.setattr(acc, "_HASHER", cheap)
    monkeypatch.setattr(acc, "_DUMMY_HASH", cheap.hash("x"))
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    monkeypatch.setattr(endpoint, "_loopback_only", endpoint._loopback_only)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- argparse ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [[], ["credit"], ["user"], ["contact"], ["group"], ["message"], ["dial"],
                                  ["nonsense"], ["serve", "--port", "eighty"], ["cdr", "--limit", "many"],
                                  ["credit", "add", "alice", "5"], ["group", "add", "g1"],
                                  ["dial", "call", "bob", "--codec", "g729"]])
def test_argparse_refuses_with_exit_2_and_says_why(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage: jego" in err and "error:" in err


def test_every_subcommand_is_wired_to_a_function() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert isinstance(sub.choices, dict)
    assert set(sub.choices) == {"carrier", "bridge", "cdr", "contact", "credit", "dial", "group", "message",
                                "serve", "user"}
    for name, p in sub.choices.items():        # every leaf parser has a func to call
        leaves = [p] if p.get_default("func") else [
            q for a in p._actions if isinstance(a.choices, dict) for q in a.choices.values()]
        assert leaves and all(callable(q.get_default("func")) for q in leaves), name


def test_serve_options_override_the_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--port", "0", "--host", "127.0.0.2", "--data-dir", str(tmp_path),
                                      "--no-carrier", "--no-bridge"])
    cfg = config_from_args(args)
    assert (cfg.http.port, cfg.http.host, cfg.data_dir) == (0, "127.0.0.2", tmp_path)
    assert not cfg.carrier.enabled and not cfg.bridge.enabled


def test_a_missing_config_file_is_exit_2_naming_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "cdr", "--config", str(tmp_path / "nope.toml"))
    assert code == 2 and one_line(err).startswith("jego: config error: --config: no such file")


def test_a_bad_config_value_is_exit_2_naming_the_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nport = 'eighty'\n")
    code, _, err = run(capsys, "cdr", "--config", str(bad), "--data-dir", str(tmp_path))
    assert code == 2 and "http.port" in one_line(err)


# --- offline commands on a data dir ----------------------------------------------------------------
def test_user_add_list_and_their_refusals(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    d = ["--data-dir", str(tmp_path)]
    assert run(capsys, "user", "add", "Alice", "--password", "correct-horse-9", *d) == (0, "created user alice\n", "")
    code, _, err = run(capsys, "user", "add", "alice", "--password", "correct-horse-9", *d)
    assert code == 1 and one_line(err) == "jego user add: username 'alice' is taken"
    code, _, err = run(capsys, "user", "add", "bob", "--password", "short", *d)
    assert code == 1 and one_line(err) == "jego user add: password must have at least 8 characters"
    code, _, err = run(capsys, "user", "add", "no way!", "--password", "correct-horse-9", *d)
    assert code == 1 and "username must be 3-32 characters" in one_line(err)
    code, _, err = run(capsys, "user", "add", "carol", "--password", "correct-horse-9", "--display-name", "", *d)
    assert code == 1 and one_line(err) == "jego user add: display name must not be empty"
    assert run(capsys, "user", "add", "bob", "--password", "correct-horse-9", *d)[0] == 0
    assert run(capsys, "user", "list", *d) == (0, "alice\nbob\n", "")


def test_user_add_takes_the_password_from_the_environment(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JEGO_PASSWORD", "correct-horse-9")
    assert run(capsys, "user", "add", "dave", "--data-dir", str(tmp_path))[0] == 0


def test_user_add_with_passwords_that_differ_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["correct-horse-9", "correct-horse-8"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    code, _, err = run(capsys, "user", "add", "erin", "--data-dir", str(tmp_path))
    assert code == 2 and one_line(err) == "jego user add: the passwords do not match"
    assert not (tmp_path / "jego.sqlite3").exists()                # refused before opening anything


def test_user_add_without_a_terminal_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def no_tty(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr("getpass.getpass", no_tty)
    code, _, err = run(capsys, "user", "add", "erin", "--data-dir", str(tmp_path))
    assert code == 2 and "no password given" in err


def test_credit_add_show_and_their_refusals(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    d = ["--data-dir", str(tmp_path)]
    run(capsys, "user", "add", "alice", "--password", "correct-horse-9", *d)
    code, out, _ = run(capsys, "credit", "add", "ALICE", "12,50", "--note", "order 1", *d)
    assert code == 0 and out == "added 12.50 CNY to alice: balance 12.50 CNY\n"
    code, _, err = run(capsys, "credit", "add", "alice", "-20", "--note", "fix", *d)
    assert code == 1 and one_line(err) == "jego credit add: cannot deduct 20.00 CNY: alice has 12.50 CNY available"
    code, out, _ = run(capsys, "credit", "add", "alice", "--note", "fix", *d, "--", "-2.50")
    assert code == 0 and out == "deducted 2.50 CNY from alice: balance 10.00 CNY\n"
    code, _, err = run(capsys, "credit", "add", "alice", "lots", "--note", "x", *d)
    assert code == 2 and one_line(err) == "jego credit add: amount 'lots' is not a number like 5 or 12.50"
    code, _, err = run(capsys, "credit", "add", "alice", "0", "--note", "x", *d)
    assert code == 2 and one_line(err) == "jego credit add: amount must not be zero"
    code, _, err = run(capsys, "credit", "add", "nobody", "5", "--note", "x", *d)
    assert code == 1 and one_line(err) == "jego credit add: no user 'nobody'"
    code, out, _ = run(capsys, "credit", "show", "alice", "--json", *d)
    view = json.loads(out)
    assert code == 0 and (view["balance"], view["available"], view["currency"]) == (1000, 1000, "CNY")
    assert [e["kind"] for e in view["entries"]] == ["adjustment", "topup"]
    code, out, _ = run(capsys, "credit", "show", "alice", "--limit", "1", *d)
    assert code == 0 and "balance 10.00 CNY" in out and "phone calls: allowed" in out
    assert "order 1" not in out and "fix" in out                 # --limit 1: the newest entry only
    code, _, err = run(capsys, "credit", "show", "nobody", *d)
    assert code == 1 and one_line(err) == "jego credit show: no user 'nobody'"


def test_credit_add_needs_a_note_that_says_something(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "credit", "add", "alice", "5", "--note", "   ", "--data-dir", str(tmp_path / "d"))
    assert code == 2 and "--note must say why" in one_line(err)
    assert not (tmp_path / "d").exists()                          # refused before opening anything


def test_unsuspend_a_user_who_is_not_suspended_or_not_there(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:
    d = ["--data-dir", str(tmp_path)]
    run(capsys, "user", "add", "alice", "--password", "correct-horse-9", *d)
    code, _, err = run(capsys, "user", "unsuspend", "alice", *d)
    assert code == 1 and one_line(err) == "jego user unsuspend: the phone calls of alice are not suspended"
    code, _, err = run(capsys, "user", "unsuspend", "nobody", *d)
    assert code == 1 and one_line(err) == "jego user unsuspend: no user 'nobody'"


def test_cdr_without_a_database_says_so_and_creates_nothing(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:
    code, out, _ = run(capsys, "cdr", "--data-dir", str(tmp_path / "d"))
    assert code == 0 and out.startswith("no call records yet")
    assert not (tmp_path / "d" / "jego.sqlite3").exists()


def test_cdr_on_an_empty_database_prints_the_header_only(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    run(capsys, "user", "add", "alice", "--password", "correct-horse-9", "--data-dir", str(tmp_path))
    code, out, _ = run(capsys, "cdr", "--data-dir", str(tmp_path))
    assert code == 0 and out.split()[:3] == ["started", "from", "to"] and len(out.splitlines()) == 1
    assert run(capsys, "cdr", "--json", "--data-dir", str(tmp_path)) == (0, "", "")


# --- signed-in commands: usage errors first, then the server ----------------------------------------
@pytest.mark.parametrize("argv", [["contact", "list"], ["contact", "add", "bob"], ["group", "list"],
                                  ["group", "create", "family"], ["message", "send", "bob", "hi"],
                                  ["message", "list", "bob"]])
def test_without_credentials_it_is_a_usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run(capsys, *argv, "--server", NOWHERE)
    assert code == 2 and "give --user and --password (or set JEGO_USER and JEGO_PASSWORD)" in one_line(err)


@pytest.mark.parametrize(("argv", "words"), [
    (["message", "send", "bob"], "jego message send: the text is empty: give TEXT or --file PATH"),
    (["message", "send", "bob", "   "], "jego message send: the text is empty: give TEXT or --file PATH"),
    (["message", "send", "bob", "hi", "--file", "x.png"], "jego message send: give either TEXT or --file, not both"),
    (["message", "send", "bob", "--file", "/nonexistent/x.png"], "jego message send: no such file: /nonexistent/x.png"),
    (["message", "send", "group:", "hi"], "jego message send: give the group's id after group: (see jego group list)"),
    (["message", "list", "group: "], "jego message list: give the group's id after group: (see jego group list)"),
    (["message", "list", "bob", "--limit", "0"], "jego message list: --limit must be at least 1"),
    (["message", "list", "bob", "--before-seq", "0"], "jego message list: --before-seq must be at least 1"),
    (["group", "create", "  "], "jego group create: the group needs a name"),
    (["group", "add", "group:", "bob"], "jego group add: give the group's id (see jego group list)"),
    (["group", "leave", " "], "jego group leave: give the group's id (see jego group list)"),
])
def test_usage_errors_come_before_the_server(capsys: pytest.CaptureFixture[str], argv: list[str],
                                             words: str) -> None:
    """Credentials given and no server there: a usage error still says what is wrong (exit 2)."""
    code, out, err = run(capsys, *argv, *LOGIN)
    assert (code, out) == (2, "") and one_line(err) == words


@pytest.mark.parametrize("argv", [["contact", "list"], ["contact", "block", "bob"], ["group", "list"],
                                  ["message", "send", "bob", "hi"], ["message", "list", "group:g1"]])
def test_a_server_that_is_not_there_is_exit_1_in_one_line(capsys: pytest.CaptureFixture[str],
                                                          argv: list[str]) -> None:
    code, out, err = run(capsys, *argv, *LOGIN)
    line = one_line(err)
    assert (code, out) == (1, "") and line.startswith(f"jego {argv[0]} {argv[1]}: ")
    assert "127.0.0.1:9" in line


def test_a_group_target_is_split_from_a_username() -> None:
    assert split_target(" Group:G1a ") == ("", "g1a")
    assert split_target(" Bob ") == ("bob", None)
    with pytest.raises(UsageError):
        split_target("group:  ")


# --- jego dial ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "words"), [
    (["dial", "call", "bob", "--duration", "-1"], "--duration must not be negative"),
    (["dial", "call", "bob", "--ring-timeout", "-0.5"], "--ring-timeout must not be negative"),
    (["dial", "call", "bob", "--dtmf", "12X"], "--dtmf takes 1 to 32 of 0-9 * # A-D"),
    (["dial", "call", "bob", "--dtmf", "1" * 33], "--dtmf takes 1 to 32 of 0-9 * # A-D"),
    (["dial", "call", "bob", "--impair", "loss=200"], "--impair: must be a percentage in [0, 100), got 200.0"),
    (["dial", "call", "bob", "--impair", "snow=1"], "--impair: expected key=value with a key of"),
    (["dial", "answer", "--count", "0"], "--count must be at least 1"),
    (["dial", "answer", "--answer-after", "-2"], "--answer-after must not be negative"),
    (["dial", "group", "g1", "--mute-at", "-1"], "--mute-at must not be negative"),
    (["dial", "call", "not valid!"], "not a username or phone number: 'not valid!'"),
    (["dial", "call", "bob", "--record", "/nonexistent/dir/x.wav"], "cannot record to /nonexistent/dir/x.wav"),
    (["dial", "call", "bob", "--play", "/nonexistent.wav"], "--play: "),
    (["dial", "answer", "--echo", "--play", "tone:440"], "--echo and --play cannot be combined"),
])
def test_dial_usage_errors_are_exit_2_before_any_call(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                      words: str) -> None:
    code, out, err = run(capsys, *argv, *DIAL_LOGIN)
    line = one_line(err)
    assert (code, out) == (2, "") and line.startswith("jego dial: ") and words in line


@pytest.mark.parametrize(("argv", "words"), [(["dial", "call", "bob"], "--user (or JEGO_USER) is required"),
                                             (["dial", "answer", "--user", "alice"],
                                              "--password (or JEGO_PASSWORD) is required")])
def test_dial_without_credentials(capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> None:
    code, _, err = run(capsys, *argv, "--server", NOWHERE)
    assert code == 2 and one_line(err) == f"jego dial: {words}"


def test_dial_to_a_server_that_is_not_there_fails_in_json_too(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "dial", "call", "bob", "--json", "-q", *DIAL_LOGIN)
    assert code == 1 and "cannot reach the server" in one_line(err)
    report = json.loads(out)
    assert report["outcome"] == "failed" and report["reason"] == "setup" and report["call_id"] is None


@pytest.mark.parametrize(("target", "kind", "to"), [
    ("+86 138 0013 8000", "phone", "+8613800138000"), ("0086-10-6552-9988", "phone", "00861065529988"),
    ("(010) 6552.9988", "phone", "01065529988"), ("12345", "phone", "12345"), ("Bob", "user", "bob"),
    ("li.wei", "user", "li.wei")])
def test_a_dial_target_is_a_phone_number_or_a_username(target: str, kind: str, to: str) -> None:
    assert dial.classify_target(target) == (kind, to)


@pytest.mark.parametrize("target", ["bo", "no way", "", "_x_", "12", "a" * 33])
def test_a_target_that_is_neither_is_a_usage_error(target: str) -> None:
    with pytest.raises(dial.UsageError, match="not a username or phone number"):
        dial.classify_target(target)


@given(st.text(alphabet="0123456789 -().", min_size=1, max_size=20))
def test_five_digits_or_more_with_separators_are_a_number_without_them(raw: str) -> None:
    compact = "".join(c for c in raw.strip() if c not in " ()-.")
    if not (compact.isdigit() and len(compact) >= 5):
        return
    assert dial.classify_target(raw) == ("phone", compact)


@pytest.mark.parametrize(("reason", "sip", "q850", "answered", "word"), [
    (None, None, None, True, "answered"),
    ("busy", 486, 17, False, "busy"),
    ("declined", None, None, False, "declined"),
    ("no_answer", None, None, False, "no_answer"),
    ("invalid_number", 404, 1, False, "invalid_number"),
    ("made-up-reason", 486, None, False, "busy"),        # unknown: the SIP code decides
    ("made-up-reason", None, None, False, "failed"),
    (None, None, None, False, "failed"),
    ("max_duration", None, None, False, "failed"),      # an answered-only reason on an unanswered call
])
def test_the_outcome_word_of_a_call_end(reason: str | None, sip: int | None, q850: int | None, answered: bool,
                                        word: str) -> None:
    assert dial.outcome_for(reason, sip, q850, answered) == word
    assert dial.OUTCOME_EXIT.get(word, dial.EXIT_FAILED) == {"answered": 0, "busy": 3, "declined": 3,
                                                              "no_answer": 4, "invalid_number": 5}.get(word, 1)


# --- jego bridge ------------------------------------------------------------------------------------
def test_bridge_max_calls_below_one_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "bridge", "--max-calls", "0")
    assert code == 2 and one_line(err) == "jego bridge: --max-calls must be at least 1"


def test_the_bridges_secret_comes_from_the_flag_the_config_or_the_key_file(tmp_path: Path) -> None:
    from bridge.gateway.cli import gateway_secret

    cfg = load_config(environ={}, overrides={"data": {"dir": str(tmp_path)}})
    assert gateway_secret(cfg, "given") == "given"
    with pytest.raises(SystemExit) as e:
        gateway_secret(cfg, None)
    assert "no gateway secret: pass --secret, set bridge.secret, or start `jego serve` once" in str(e.value.code)
    (tmp_path / "bridge.key").write_text("not hex\n")
    with pytest.raises(SystemExit):
        gateway_secret(cfg, None)                                  # a broken key file is no secret
    (tmp_path / "bridge.key").write_text("AB01cd\n")
    assert gateway_secret(cfg, None) == "ab01cd"
    with_secret = load_config(environ={}, overrides={"data": {"dir": str(tmp_path)}, "bridge": {"secret": "s3"}})
    assert gateway_secret(with_secret, None) == "s3"


@pytest.mark.parametrize(("http", "bridge_url", "given", "want"), [
    ({"host": "0.0.0.0", "port": 8080}, "", None, "http://127.0.0.1:8080"),
    ({"host": "127.0.0.5", "port": 9000}, "", None, "http://127.0.0.5:9000"),
    ({"host": "0.0.0.0", "port": 8080}, "http://10.0.0.1:8080", None, "http://10.0.0.1:8080"),
    ({"host": "0.0.0.0", "port": 8080}, "http://10.0.0.1:8080", "http://127.0.0.1:1", "http://127.0.0.1:1"),
])
def test_the_bridges_server_url(http: dict[str, object], bridge_url: str, given: str | None, want: str) -> None:
    from bridge.gateway.cli import server_url

    cfg = load_config(environ={}, overrides={"http": http, "bridge": {"server_url": bridge_url}})
    assert server_url(cfg, given) == want
