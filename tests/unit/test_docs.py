"""The documentation in the repository: the configuration reference matches the settings model, every link resolves
inside the repository (to a file that exists and, with a `#fragment`, to a heading of it), the README stays short,
and docs/testing.md names every folder of tests and which of them are slow."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from tests.conftest import SLOW_FOLDERS
from worker.dev import config_reference

ROOT: Final = Path(__file__).resolve().parents[2]
README_MAX_LINES: Final = 200
_LINK: Final = re.compile(r"\]\(([^)\s]+)\)")
_HEADING: Final = re.compile(r"^#{1,6} +(.+?) *$", re.MULTILINE)
_FENCE: Final = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def anchors(document: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    text = _FENCE.sub("", document.read_text(encoding="utf-8"))
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in _HEADING.findall(text)}


def broken_links(document: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in _LINK.findall(document.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, fragment = target.partition("#")
        path = (document.parent / file).resolve() if file else document
        if not path.is_relative_to(root):
            broken.append(f"{target}: outside the repository")
        elif not path.exists():
            broken.append(f"{target}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            broken.append(f"{target}: no such heading")
    return broken


def test_the_configuration_reference_matches_the_settings_model() -> None:
    document = config_reference.DOCUMENT.read_text(encoding="utf-8")
    assert config_reference.render(document) == document, "run: python -m worker.dev.config_reference --write"
    assert "| `DATABASE_URL` | secret string | **required** |" in document


def test_readme_and_docs_link_only_to_what_exists_in_the_repository() -> None:
    assert len(documents()) >= 10
    broken = {document.name: links for document in documents() if (links := broken_links(document))}
    assert broken == {}
    assert "SPEC.md" not in (ROOT / "README.md").read_text(encoding="utf-8")


def test_a_link_to_a_missing_heading_or_file_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## What waits, for how long\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[a](other.md#what-waits-for-how-long) [b](other.md#nowhere) [c](missing.md) [d](#page) [e](../x)\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "other.md#nowhere: no such heading",
        "missing.md: no such file",
        "#page: no such heading",
        "../x: outside the repository",
    ]


def test_the_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail to docs/"


def test_docs_testing_names_every_test_folder_and_the_slow_ones() -> None:
    text = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `tests/([a-z_]+)/` \| (default|slow) \|", text, flags=re.MULTILINE))
    folders = {path.parent.name for path in (ROOT / "tests").glob("*/test_*.py")}
    assert set(rows) == folders
    assert {name for name, runs in rows.items() if runs == "slow"} == SLOW_FOLDERS
