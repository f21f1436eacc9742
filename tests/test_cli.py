"""The CLI contract: instant --help, --json on stdout only, one-line errors, home unchanged."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import synthetic_messages, write_jsonl


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from idiolect.cli import cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_documented_command_has_help(cli_run):
    for args in (["--help"], ["user", "import", "--help"], ["user", "freeze-eval", "--help"],
                 ["base", "list", "--help"], ["compile", "--help"], ["adapter", "rollback", "--help"],
                 ["draft", "--help"], ["path"]):
        r = cli_run(*args)
        assert r.exit_code == 0, (args, r.stderr)


def _db_dump(home):
    import sqlite3

    conn = sqlite3.connect(home / "idiolect.db")
    return [list(conn.execute(f"SELECT * FROM {t} ORDER BY 1")) for t in
            ("users", "messages", "imports", "eval_sets", "adapters")]


@pytest.mark.parametrize("case", ["missing", "empty", "binary", "bad_json", "non_utf8",
                                  "truncated_mbox"])
def test_bad_input_is_one_line_and_leaves_home_unchanged(case, tmp_path, cli_run, isolated_home):
    good = write_jsonl(tmp_path / "good.jsonl", synthetic_messages("bob", 5))
    assert cli_run("user", "import", "bob", good).exit_code == 0
    before = _db_dump(isolated_home)
    bad = {
        "missing": tmp_path / "nope.jsonl",
        "empty": tmp_path / "empty.jsonl",
        "binary": tmp_path / "blob.jsonl",
        "bad_json": tmp_path / "bad.jsonl",
        "non_utf8": tmp_path / "latin.txt",
        "truncated_mbox": tmp_path / "cut.mbox",
    }[case]
    if case == "empty":
        bad.write_bytes(b"")
    elif case == "binary":
        bad.write_bytes(b"\x00\x01\x02" * 100)
    elif case == "bad_json":
        bad.write_text(json.dumps(synthetic_messages("bob", 1)[0]) + "\n{not json\n")
    elif case == "non_utf8":
        bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    elif case == "truncated_mbox":
        bad.write_bytes(b"From bob@example.org Mon Jan  3 10:00:00 2022\nFrom: bob@example.org\n"
                        b"Subject: hello\nTo: x@y.z")
    # the good file comes first: nothing of it may be written when a later source is bad
    r = cli_run("user", "import", "bob", write_jsonl(tmp_path / "more.jsonl",
                                                      synthetic_messages("bob2", 3)), bad)
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and bad.name in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert _db_dump(isolated_home) == before


def test_unknown_user_and_base(cli_run, tmp_path):
    r = cli_run("user", "show", "ghost")
    assert r.exit_code != 0 and "unknown user 'ghost'" in r.stderr
    r = cli_run("base", "show", "gpt-17")
    assert r.exit_code != 0 and "unknown base 'gpt-17'" in r.stderr
    write = write_jsonl(tmp_path / "a.jsonl", synthetic_messages("al", 10))
    assert cli_run("user", "import", "al", write).exit_code == 0
    r = cli_run("compile", "al", "--base", "gpt-17")
    assert r.exit_code != 0 and "unknown base" in r.stderr
    r = cli_run("compile", "al")
    assert r.exit_code != 0 and "no frozen eval set" in r.stderr


def test_import_twice_adds_nothing_and_eval_set_is_frozen(cli_run, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", synthetic_messages("cy", 30))
    first = json.loads(cli_run("user", "import", "cy", src, "--json").stdout)
    second = json.loads(cli_run("user", "import", "cy", src, "--json").stdout)
    assert first[0]["added"] == 30 and second[0]["added"] == 0 and second[0]["duplicates"] == 30
    ev = json.loads(cli_run("user", "freeze-eval", "cy", "--size", "5", "--json").stdout)
    again = cli_run("user", "freeze-eval", "cy", "--size", "6")
    assert again.exit_code != 0 and "already has a frozen eval set" in again.stderr
    more = write_jsonl(tmp_path / "d.jsonl", synthetic_messages("cy", 40, seed=1))
    assert cli_run("user", "import", "cy", more).exit_code == 0
    show = json.loads(cli_run("user", "show", "cy", "--json").stdout)
    assert show["eval_set"]["digest"] == ev["digest"] and show["messages"] == 70


def test_base_list_and_show_json(cli_run, tiny_base):
    rows = json.loads(cli_run("base", "list", "--json").stdout)
    names = {r["name"]: r for r in rows}
    assert {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "gemma3-270m",
            "tiny"} <= set(names)
    assert names["smollm2-135m"]["default"] is True
    assert all(len(r["sha256"]) == 64 for r in rows if r["kind"] == "packaged")
    info = json.loads(cli_run("base", "show", "tiny", "--json").stdout)
    fp = info["fingerprint"]
    assert fp["architecture"] == "LlamaForCausalLM" and fp["num_layers"] == 2
    assert len(fp["modules"]) == 2 * 7 and fp["digest"]
