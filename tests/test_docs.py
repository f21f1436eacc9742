"""The CLI reference in docs/cli.md is generated from --help and must not drift."""

from pathlib import Path

from idiolect.clidoc import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_reference_is_up_to_date():
    assert DOC.read_text() == render(), "run: python -m idiolect.clidoc > docs/cli.md"


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    root = DOC.parents[1]
    readme = (root / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    ci = [l for l in (root / ".ci" / "run").read_text().splitlines()
          if l.strip() and not l.startswith(("#", "set ", "cd "))]
    assert ci == ["make test"]


def test_readme_measured_tables_are_generated_from_the_results():
    """No measured number in a generated block is typed by hand (bench/readme_tables.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_tables", DOC.parents[1] / "bench"
                                                  / "readme_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    readme = (DOC.parents[1] / "README.md").read_text()
    details = (DOC.parents[1] / "bench" / "README.md").read_text()
    assert "<!-- generated: summary -->" in readme
    assert "<!-- generated: honest-scores -->" in details
    assert "<!-- generated: metrics-reference -->" in DOC.with_name("metrics.md").read_text()
    for doc in tables.DOCS:
        assert tables.render(doc.read_text()) == doc.read_text(), \
            f"{doc.name}: run python bench/readme_tables.py"


def test_levers_wall_time_counts_a_compile_by_its_own_threads(tmp_path):
    """A compile on 1 thread of 2 cores that had its thread to itself shows its wall time."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("readme_tables", DOC.parents[1] / "bench"
                                                  / "readme_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    d = json.loads((tables.RESULTS / "levers_default-bf16-500.json").read_text())
    d["rows"] = [r for r in d["rows"] if r.get("compile")][:1]
    d["rows"][0]["compile"] = {"cpu_s": 600.0, "wall_s": 610.0}
    d["meta_info"]["cpu"]["cores"] = 2
    tables.RESULTS = tmp_path
    for threads, shown in ((None, "no wall time"), (1, "10.2 min wall")):
        d["recipe"]["over_defaults"]["threads"] = threads
        (tmp_path / "x.json").write_text(json.dumps(d))
        assert shown in tables.levers("x")
