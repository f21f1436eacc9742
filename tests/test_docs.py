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
