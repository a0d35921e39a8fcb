"""The artifact store (craftlab.cache): the one atomic writer, the one fingerprint, a Store of spec-keyed records,
and that no other module writes files its own way."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from craftlab import cache

ROOT = Path(__file__).resolve().parent.parent


def test_atomic_write_replaces_whole_and_a_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "sub" / "a.json"
    cache.atomic_write_json(p, {"v": 1})
    assert json.loads(p.read_text()) == {"v": 1}
    mode = stat.S_IMODE(p.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_text('{"v": 2')  # half a file ...
        raise OSError("disk full")  # ... then the writer dies

    with pytest.raises(OSError, match="disk full"):
        cache.atomic_write(p, half_then_fail)
    assert json.loads(p.read_text()) == {"v": 1}
    assert sorted(f.name for f in p.parent.iterdir()) == ["a.json"]  # no temp file left behind
    cache.atomic_write(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"


def test_fingerprint_of_text_bytes_and_records_is_sha256_of_their_canonical_bytes():
    assert cache.fingerprint(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert cache.fingerprint("é") == hashlib.sha256("é".encode()).hexdigest()
    record = {"b": [1, 2.5, None], "a": "x"}
    canonical = '{"a": "x", "b": [1, 2.5, null]}'
    assert cache.fingerprint(record) == hashlib.sha256(canonical.encode()).hexdigest()
    assert cache.fingerprint(record, salt="v2") == hashlib.sha256(b"v2" + canonical.encode()).hexdigest()


def test_fingerprint_of_tensors_is_their_names_dtypes_shapes_and_bytes():
    a = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)}
    by_hand = hashlib.sha256()
    for name in ("b", "w"):  # name order
        t = a[name]
        by_hand.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        by_hand.update(t.numpy().tobytes())
    assert cache.fingerprint(a) == by_hand.hexdigest()
    lin = torch.nn.Linear(3, 2)
    assert cache.fingerprint(lin) == cache.fingerprint(dict(lin.state_dict()))
    assert cache.fingerprint({**a, "w": a["w"].reshape(3, 2)}) != cache.fingerprint(a)  # shape is content
    assert cache.fingerprint({**a, "w": a["w"].double()}) != cache.fingerprint(a)  # dtype too
    assert cache.fingerprint(a, skip=lambda n: n == "b") == cache.fingerprint({"w": a["w"]})


def test_slug_and_num_spell_keys():
    assert cache.slug("vit-tiny") == "vit-tiny"
    assert cache.slug("imagefolder:/a/b") != cache.slug("imagefolder:/a_b")  # the hash keeps them apart
    want = "expand_rate=4-" + hashlib.sha256(b"expand:rate=4").hexdigest()[:8]
    assert cache.slug("expand:rate=4", keep="._+=-") == want
    assert [cache.num(x) for x in (0.05, 1e-5, 2.0, 0.1 + 0.2)] == ["0.05", "1e-05", "2", "0.30000000000000004"]


class _Spec:
    def __init__(self, key: str, x: int) -> None:
        self.key, self.x, self.label = key, x, f"x={x}"

    def record(self) -> dict:
        return {"x": self.x}


def test_store_makes_once_remakes_for_another_spec_or_a_damaged_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CRAFTLAB_HOME", str(tmp_path))
    made = []

    def make(v):
        return lambda: made.append(v) or {"value": v, "t": (1, 2)}

    store = cache.Store("things")
    assert isinstance(_Spec("k", 1), cache.Spec)
    first = store.get_json(_Spec("k", 1), make(1))
    assert first == {"value": 1, "t": [1, 2]}  # what a later call reads back (JSON), from the first call on
    assert store.get_json(_Spec("k", 1), make(99)) == first and made == [1]
    assert store.get_json(_Spec("k", 2), make(2))["value"] == 2 and made == [1, 2]  # same key, other spec
    store.path("k", ".json").write_text("{half")
    assert store.get_json(_Spec("k", 2), make(3))["value"] == 3 and made == [1, 2, 3]
    assert (tmp_path / "things" / "k.json").exists()
    for bad in ("", "../x", ".hidden"):
        with pytest.raises(ValueError, match="store key"):
            store.path(bad)


def _writes_by_rename(path: Path) -> list[int]:
    """Lines where `path` renames a temp file over a target (os.replace / Path.replace / os.rename)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("replace",
                                                                                                        "rename"):
            base = node.func.value
            if isinstance(base, ast.Name) and base.id == "os":
                out.append(node.lineno)
    return out


def _sources() -> list[Path]:
    return sorted(p for folder in ("craftlab", "app", "benchmarks") for p in (ROOT / folder).rglob("*.py")
                  if p != ROOT / "craftlab" / "cache.py")


def test_one_atomic_writer_and_one_fingerprint_in_the_repository():
    """Every atomic write goes through cache.atomic_write (no other module renames temp files) and every content
    hash through cache.fingerprint / cache.file_sha256 (no other module imports hashlib)."""
    renames = {str(p.relative_to(ROOT)): lines for p in _sources() if (lines := _writes_by_rename(p))}
    assert renames == {}, f"write through craftlab.cache.atomic_write instead: {renames}"
    hashers = [str(p.relative_to(ROOT)) for p in _sources()
               if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "hashlib" in ast.dump(n)
                      for n in ast.walk(ast.parse(p.read_text())))]
    assert hashers == [], f"hash through craftlab.cache.fingerprint instead: {hashers}"


def test_doctests(monkeypatch, tmp_path):
    import doctest

    monkeypatch.setenv("CRAFTLAB_HOME", str(tmp_path))  # the Store example sets it; restored after the test
    assert doctest.testmod(cache).failed == 0
