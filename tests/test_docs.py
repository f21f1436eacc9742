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
    for text in (readme, details):
        assert tables.render(text) == text, "run: python bench/readme_tables.py"
