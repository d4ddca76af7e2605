"""Small modules (issue 13): no module of the package is over 400 lines, so that each keeps to one concern."""

from __future__ import annotations

from pathlib import Path

import worker

LIMIT = 400


def test_no_module_of_the_package_is_over_400_lines() -> None:
    package = Path(worker.__file__).parent
    sizes = {
        str(path.relative_to(package)): len(path.read_text(encoding="utf-8").splitlines())
        for path in package.rglob("*.py")
    }
    assert len(sizes) > 50  # the package itself, not an installed copy missing its modules
    assert {name: lines for name, lines in sizes.items() if lines > LIMIT} == {}
