"""adapters.staging + adapters.install: the one way a new adapter folder enters the home
(compile, catalog pull and merge all use it). No model needed: the files are small stand-ins."""

from __future__ import annotations

import json
import sqlite3

import pytest

from conftest import synthetic_messages


@pytest.fixture
def conn(home):
    from idiolect.vault.message import Message
    from idiolect.vault.store import import_messages

    msgs = [Message(subject=m["subject"], body=m["body"], to=m["to"], date=m["date"],
                    source_id=m["id"]) for m in synthetic_messages("ada", 3)]
    import_messages(home.conn, "ada", msgs, source="test", fmt="jsonl")
    return home.conn


def _manifest(adapter_id: str, user: str = "ada"):
    from idiolect.manifest import Manifest

    return Manifest(id=adapter_id, user=user, created_at="2026-01-01T00:00:00+00:00",
                    base={"name": "tiny", "fingerprint": {"digest": "d" * 64}},
                    snapshot={"digest": "s" * 64}, recipe={})


def _write(folder, manifest) -> None:
    from idiolect import adapters

    for name in adapters.ADAPTER_FILES:
        (folder / name).write_bytes(name.encode())
    (folder / adapters.MANIFEST).write_text(json.dumps(manifest.to_dict()))


def _debris(home):
    """Anything left in the adapters folder besides installed adapters (staging leftovers)."""
    root = home.adapters_dir
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".")) if root.exists() else []


def test_install_publishes_and_registers_candidates(conn, home):
    from idiolect import adapters

    with adapters.staging(home, "01A") as staging:
        _write(staging, _manifest("01A"))
        first = adapters.install(home, staging, _manifest("01A"))
    with adapters.staging(home, "01B") as staging:
        _write(staging, _manifest("01B"))
        second = adapters.install(home, staging, _manifest("01B"))
    assert first == home.adapters_dir / "01A" and (first / "adapter_config.json").is_file()
    assert adapters.get(conn, "01A")["path"] == str(first)
    # installing never activates: only the build pipeline's gate does
    assert {r["id"]: r["state"] for r in adapters.list_adapters(conn)} == {
        "01A": "candidate", "01B": "candidate"}
    assert second.is_dir() and _debris(home) == []


def test_failed_row_write_removes_the_published_folder(conn, home):
    from idiolect import adapters

    # an unknown user violates the adapters.user foreign key: the transaction fails
    with pytest.raises(sqlite3.IntegrityError):
        with adapters.staging(home, "01C") as staging:
            _write(staging, _manifest("01C", user="nobody"))
            adapters.install(home, staging, _manifest("01C", user="nobody"))
    assert not (home.adapters_dir / "01C").exists() and _debris(home) == []
    assert conn.execute("SELECT COUNT(*) FROM adapters").fetchone()[0] == 0


def test_incomplete_folder_or_taken_id_installs_nothing(conn, home):
    from idiolect import adapters
    from idiolect.errors import InputError

    with pytest.raises(InputError, match="missing adapter_model.safetensors"):
        with adapters.staging(home, "01D") as staging:
            _write(staging, _manifest("01D"))
            (staging / "adapter_model.safetensors").unlink()
            adapters.install(home, staging, _manifest("01D"))
    assert not (home.adapters_dir / "01D").exists() and _debris(home) == []

    with adapters.staging(home, "01E") as staging:
        _write(staging, _manifest("01E"))
        kept = adapters.install(home, staging, _manifest("01E"))
    with pytest.raises(OSError):  # the id's folder exists: never replaced, never removed
        with adapters.staging(home, "01E") as staging:
            _write(staging, _manifest("01E", user="other"))
            adapters.install(home, staging, _manifest("01E"))
    assert json.loads((kept / "manifest.json").read_text())["user"] == "ada" and _debris(home) == []
    assert adapters.get(conn, "01E")["path"] == str(kept)
