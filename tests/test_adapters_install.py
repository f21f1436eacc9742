"""adapters.staging + adapters.install: the one way a new adapter folder enters the home
(compile, catalog pull and merge all use it). No model needed: the files are small stand-ins."""

from __future__ import annotations

import json
import sqlite3

import pytest

from conftest import synthetic_messages


@pytest.fixture
def conn():
    from idiolect.home import connect
    from idiolect.vault.message import Message
    from idiolect.vault.store import import_messages

    c = connect()
    msgs = [Message(subject=m["subject"], body=m["body"], to=m["to"], date=m["date"],
                    source_id=m["id"]) for m in synthetic_messages("ada", 3)]
    import_messages(c, "ada", msgs, source="test", fmt="jsonl")
    return c


def _manifest(adapter_id: str, user: str = "ada") -> dict:
    return {"id": adapter_id, "user": user, "created_at": "2026-01-01T00:00:00+00:00",
            "base": {"name": "tiny", "fingerprint": {"digest": "d" * 64}},
            "snapshot": {"digest": "s" * 64}, "metrics": {}}


def _write(folder, manifest: dict) -> None:
    from idiolect import adapters

    for name in adapters.ADAPTER_FILES:
        (folder / name).write_bytes(name.encode())
    (folder / adapters.MANIFEST).write_text(json.dumps(manifest))


def _debris():
    """Anything left in the adapters folder besides installed adapters (staging leftovers)."""
    from idiolect import adapters

    root = adapters.adapters_dir()
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".")) if root.exists() else []


def test_install_publishes_registers_and_activates(conn):
    from idiolect import adapters

    with adapters.staging("01A") as staging:
        _write(staging, _manifest("01A"))
        first = adapters.install(conn, staging, _manifest("01A"), activate=True)
    with adapters.staging("01B") as staging:
        _write(staging, _manifest("01B"))
        second = adapters.install(conn, staging, _manifest("01B"), activate=True)
    assert first == adapters.adapters_dir() / "01A" and (first / "adapter_config.json").is_file()
    assert adapters.get(conn, "01A")["path"] == str(first)
    assert {r["id"]: r["state"] for r in adapters.list_adapters(conn)} == {
        "01A": "retired", "01B": "active"}
    assert second.is_dir() and _debris() == []


def test_failed_row_write_removes_the_published_folder(conn):
    from idiolect import adapters

    # an unknown user violates the adapters.user foreign key: the transaction fails
    with pytest.raises(sqlite3.IntegrityError):
        with adapters.staging("01C") as staging:
            _write(staging, _manifest("01C", user="nobody"))
            adapters.install(conn, staging, _manifest("01C", user="nobody"))
    assert not (adapters.adapters_dir() / "01C").exists() and _debris() == []
    assert conn.execute("SELECT COUNT(*) FROM adapters").fetchone()[0] == 0


def test_incomplete_folder_or_taken_id_installs_nothing(conn):
    from idiolect import adapters
    from idiolect.errors import InputError

    with pytest.raises(InputError, match="missing adapter_model.safetensors"):
        with adapters.staging("01D") as staging:
            _write(staging, _manifest("01D"))
            (staging / "adapter_model.safetensors").unlink()
            adapters.install(conn, staging, _manifest("01D"))
    assert not (adapters.adapters_dir() / "01D").exists() and _debris() == []

    with adapters.staging("01E") as staging:
        _write(staging, _manifest("01E"))
        kept = adapters.install(conn, staging, _manifest("01E"))
    with pytest.raises(OSError):  # the id's folder exists: never replaced, never removed
        with adapters.staging("01E") as staging:
            _write(staging, _manifest("01E") | {"user": "other"})
            adapters.install(conn, staging, _manifest("01E"))
    assert json.loads((kept / "manifest.json").read_text())["user"] == "ada" and _debris() == []
    assert adapters.get(conn, "01E")["path"] == str(kept)
