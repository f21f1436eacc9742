"""`idiolect report`: a static page built from stored evaluations of a tiny two-user cohort."""

from __future__ import annotations

import json
import struct

import pytest

from conftest import synthetic_messages, write_jsonl

RECIPE = {"rank": 4, "alpha": 8, "epochs": 1, "max_tokens": 96, "batch_tokens": 384}
SCRIPT = "<script>alert('x')</script>"


def _invoke(*args):
    """`idiolect report ARGS` through the real CLI (one-line errors, exit codes)."""
    from click.testing import CliRunner

    from idiolect.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def evaluated(tmp_path, tiny_base, cli_run):
    """ada (plain prose, every body ends with a <script>) and bo (shouting), compiled, evaluated."""
    from idiolect.evaluate.report import save_result
    from idiolect.evaluate.run import EvalConfig, evaluate
    from idiolect.generate import GenerationConfig
    from conftest import force_promote, open_home

    home = open_home()
    (tmp_path / "r.json").write_text(json.dumps(RECIPE))
    for user, style in (("ada", "plain"), ("bo", "shout")):
        rows = synthetic_messages(user, 30, style=style)
        if user == "ada":
            for r in rows:
                r["body"] += "\n" + SCRIPT
                r["subject"] += " <b>&"
        assert cli_run("user", "import", user, write_jsonl(tmp_path / f"{user}.jsonl", rows)
                       ).exit_code == 0
        assert cli_run("user", "freeze-eval", user, "--size", "6").exit_code == 0
    for user in ("ada", "bo"):
        r = cli_run("compile", user, "--base", "tiny", "--recipe", tmp_path / "r.json",
                    "--candidate", "--json")
        assert r.exit_code == 0, r.stderr
        force_promote(home, json.loads(r.stdout)["id"])
    cfg = EvalConfig(generation=GenerationConfig(max_new_tokens=12, batch_size=6, seed=3))
    results = {u: evaluate(home, u, base="tiny", cfg=cfg) for u in ("ada", "bo")}
    for r in results.values():
        path = save_result(home, r)
        assert path.name == f"eval-{r['adapter']}.json"
    return results


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_report_page_tables_escaping_plots(evaluated, tmp_path):
    from idiolect.evaluate.report import build_report, load_result
    from conftest import open_home

    home = open_home()
    out = tmp_path / "site"
    index = build_report(home, None, out)
    assert index == out / "index.html"
    page = index.read_text()
    for user, r in evaluated.items():
        assert load_result(home, r["adapter"])["adapter_scores"] == r["adapter_scores"]
        assert f'id="u-{r["adapter"]}"' in page and r["eval_digest"][:12] in page
        for m in ("fingerprint_distance", "authorship_probability"):
            for v in (r["adapter_scores"][m], r["base_scores"][m],
                      r["calibration"][m]["ceiling"], r["calibration"][m]["floor"]):
                assert f"{v:.3f}" in page, (user, m, v)
        for v in (r["adapter_scores"]["perplexity"], r["base_scores"]["perplexity"]):
            assert f"{v:.2f}" in page
        for s in r["samples"]:
            assert s["real"].split("\n")[0] in page
    # personal text is escaped, never live markup; the page reaches nothing outside itself
    assert SCRIPT not in page and "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;&amp;" in page and "<b>&" not in page
    assert "http://" not in page and "https://" not in page
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(["cohort.png"] + [f"user-{r['adapter']}.png" for r in evaluated.values()])
    for name in pngs:
        assert f'src="{name}"' in page
        w, h = _png_size(out / name)
        assert w > 300 and h > 100

    # without the saved full result: the stored metrics still make a page, samples are missing
    bo = evaluated["bo"]["adapter"]
    (home.reports_dir / f"eval-{bo}.json").unlink()
    r = _invoke("report", "bo", "--out", tmp_path / "bo", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["adapters"] == [{"user": "bo", "adapter": bo, "base": "tiny", "full_result": False}]
    page = (tmp_path / "bo" / "index.html").read_text()
    assert f"{evaluated['bo']['adapter_scores']['fingerprint_distance']:.3f}" in page
    assert "were not saved" in page and "no saved evaluation result" in r.stderr
    assert _invoke("report", "ada", "--out", tmp_path / "a").stdout.strip() == str(
        tmp_path / "a" / "index.html")


def test_report_refuses_users_without_eval_metrics(tmp_path, cli_run):
    from idiolect import adapters
    from idiolect.errors import IdiolectError
    from idiolect.evaluate.report import build_report
    from idiolect.manifest import Manifest
    from conftest import open_home

    src = write_jsonl(tmp_path / "cy.jsonl", synthetic_messages("cy", 10))
    assert cli_run("user", "import", "cy", src).exit_code == 0
    home = open_home()
    conn = home.conn
    with pytest.raises(IdiolectError, match="no user has an evaluated active adapter"):
        build_report(home, None, tmp_path / "out")
    with pytest.raises(IdiolectError, match="'cy' has no active adapter"):
        build_report(home, ["cy"], tmp_path / "out")
    manifest = Manifest(id="01TESTADAPTER", user="cy", created_at="2026-01-01T00:00:00+00:00",
                        base={"name": "tiny", "fingerprint": {"digest": "d"}},
                        snapshot={"digest": "s"}, recipe={})
    adapters.register(conn, manifest, tmp_path / "nowhere")
    conn.execute("UPDATE adapters SET state='active' WHERE id='01TESTADAPTER'")  # a bare row
    r = _invoke("report", "cy", "--out", tmp_path / "out")
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.strip() == ("error: user 'cy': active adapter 01TESTADAPTER on base 'tiny'"
                                " has no stored eval metrics: run `idiolect eval cy --base tiny`"
                                " first")
    assert not (tmp_path / "out" / "index.html").exists()
    assert _invoke("report", "nobody").exit_code == 3
