"""The documentation in the repository: the configuration reference matches the settings model, and no document
links outside the repository (web addresses aside)."""

from __future__ import annotations

import re
from pathlib import Path

from worker.dev import config_reference

ROOT = Path(__file__).resolve().parents[2]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_configuration_reference_matches_the_settings_model() -> None:
    document = config_reference.DOCUMENT.read_text(encoding="utf-8")
    assert config_reference.render(document) == document, "run: python -m worker.dev.config_reference --write"
    assert "| `DATABASE_URL` | secret string | **required** |" in document


def test_readme_and_docs_link_nothing_outside_the_repository() -> None:
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(documents) >= 3
    for document in documents:
        for target in _LINK.findall(document.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = (document.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(ROOT), f"{document.name} links outside the repository: {target}"
            assert path.exists(), f"{document.name} links to a missing file: {target}"
    assert "SPEC.md" not in (ROOT / "README.md").read_text(encoding="utf-8")
