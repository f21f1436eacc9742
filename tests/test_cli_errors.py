"""The command line's edges (issue #20, items 11-14): one-line errors for click's usage errors,
user names that would read as options, read-only commands that never create the home, unknown
users named as such, `path --json`, a text `user show`, a busy port for `catalog serve`."""

from __future__ import annotations

import json
import socket

from conftest import synthetic_messages, write_jsonl


def test_usage_errors_are_one_line(cli_run):
    for args, where in ((("user", "show", "--bogus"), " user show --help`"),
                        (("compile",), " compile --help`"),
                        (("bogus",), " --help`")):
        r = cli_run(*args)
        assert r.exit_code == 2, args
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and where in lines[0], r.stderr
        assert r.stdout == ""


def test_user_names_that_read_as_options_are_refused(cli_run, tmp_path, isolated_home):
    src = write_jsonl(tmp_path / "x.jsonl", synthetic_messages("x", 3))
    for bad in ("-x", ".x", "x" * 65):
        r = cli_run("user", "import", "--", bad, src)
        assert r.exit_code == 2 and "1 to 64 letters" in r.stderr and "not starting with '-'" \
            in r.stderr, r.stderr
    assert not (isolated_home / "idiolect.db").exists()  # nothing written
    assert cli_run("user", "import", "x" * 64, src).exit_code == 0


def test_read_only_commands_never_create_the_home(cli_run, isolated_home):
    checks = [(("user", "show", "nobody"), 3, "unknown user 'nobody'"),
              (("adapter", "list", "--user", "nobody"), 3, "unknown user 'nobody'"),
              (("adapter", "rollback", "nobody"), 3, "unknown user 'nobody'"),
              (("user", "list"), 0, ""), (("adapter", "list"), 0, ""), (("fleet", "list"), 0, "")]
    for args, code, message in checks:
        r = cli_run(*args)
        assert r.exit_code == code and message in r.stderr, (args, r.stderr)
    assert cli_run("user", "list").stdout.strip() == "(no users)"
    assert not isolated_home.exists()
    doc = json.loads(cli_run("path", "--json").stdout)
    assert doc == {"home": str(isolated_home), "exists": False}


def test_user_show_prints_text_and_json_on_request(cli_run, tmp_path):
    src = write_jsonl(tmp_path / "ada.jsonl", synthetic_messages("ada", 12))
    assert cli_run("user", "import", "ada", src).exit_code == 0
    text = cli_run("user", "show", "ada").stdout
    assert text.startswith("ada: 12 messages") and "eval set: not frozen yet" in text
    assert "{" not in text
    doc = json.loads(cli_run("user", "show", "ada", "--json").stdout)
    assert doc["user"] == "ada" and doc["messages"] == 12 and doc["eval_set"] is None


def test_catalog_serve_on_a_busy_port_is_one_error_line(cli_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = cli_run("catalog", "serve", "--port", port)
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use (another server"
        " there? choose --port)")


def test_draft_sampling_options_out_of_range_are_usage_errors(cli_run):
    for opt, value in (("--temperature", "0"), ("--top-p", "1.5"),
                       ("--repetition-penalty", "0.5")):
        r = cli_run("draft", "alice", "--subject", "x", opt, value)
        assert r.exit_code == 2, (opt, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and opt in lines[0], r.stderr
