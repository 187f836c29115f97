"""`[signalling] gc_*` config and jego_call/signalling/gc_tuning.py (what `jego serve` applies;
tests/integration/test_token_resume.py checks a served process)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from jego_call.config import SignallingConfig, load_config
from jego_call.errors import ConfigError
from jego_call.signalling.gc_tuning import GcTuner, GcWatch


@pytest.mark.parametrize(("env", "key"), [
    ({"JEGO_SIGNALLING_GC_FREEZE_S": "-1"}, "signalling.gc_freeze_s"),
    ({"JEGO_SIGNALLING_GC_FULL_S": "0.5"}, "signalling.gc_full_s"),        # shorter than gc_freeze_s (1)
    ({"JEGO_SIGNALLING_GC_THRESHOLD": "[10, 10, 10]"}, "signalling.gc_threshold"),
    ({"JEGO_SIGNALLING_GC_THRESHOLD": "[700, 0]"}, "signalling.gc_threshold"),
    ({"JEGO_SIGNALLING_GC_THRESHOLD": "[700, 10, 10, 10]"}, "signalling.gc_threshold"),
    ({"JEGO_SIGNALLING_GC_THRESHOLD": '["many"]'}, "signalling.gc_threshold"),
])
def test_bad_gc_settings_name_their_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(environ=env)


def test_gc_defaults_and_overrides() -> None:
    sc = load_config(environ={}).signalling
    assert (sc.gc_freeze_s, sc.gc_full_s, sc.gc_threshold) == (1.0, 3600.0, ())
    sc = load_config(environ={"JEGO_SIGNALLING_GC_THRESHOLD": "[7000, 10, 10]", "JEGO_SIGNALLING_GC_FREEZE_S": "0"}
                     ).signalling
    assert sc.gc_threshold == (7000, 10, 10) and sc.gc_freeze_s == 0


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_watch_times_every_collection_by_generation() -> None:
    w = GcWatch()
    w.install()
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        w.uninstall()
    assert w.count[0] >= 1 and w.count[2] >= 1 and w.total_s[2] > 0 and w.max_s[2] <= w.total_s[2]
    n = w.count[2]
    gc.collect()
    assert w.count[2] == n and w not in gc.callbacks                 # uninstalled: no more counting
    names = {m.name for m in w.collect()}
    assert {"jego_gc_collections", "jego_gc_pause_seconds", "jego_gc_frozen_objects", "jego_gc_threshold"} <= names


def test_tuner_freezes_survivors_and_full_collection_frees_frozen_cycles(restore_gc: None) -> None:
    t = GcTuner(SignallingConfig(gc_threshold=(5000, 15, 10)))
    t.apply_threshold()
    assert gc.get_threshold() == (5000, 15, 10)

    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    a, b = Node(), Node()
    a.other, b.other = b, a                                         # a cycle, alive when frozen ...
    gone = weakref.ref(a)
    t.freeze()
    assert gc.get_freeze_count() > 2 and t.freezes == 1
    del a, b                                                        # ... garbage now, but frozen:
    gc.collect()
    assert gone() is not None                                       # the collector does not see it
    freed = t.full()                                                # until the full collection
    assert gone() is None and freed >= 2
    assert gc.get_freeze_count() > 0 and t.full_collections == 1
