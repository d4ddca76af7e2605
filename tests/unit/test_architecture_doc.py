"""docs/architecture.md against the code: every module it names in backticks exists, and its layer diagram lists
the layers of the import-linter contract in pyproject.toml, in the same order.

Generic on purpose: whatever modules the document names, and whatever layers it draws, are checked."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
DOCUMENT: Final = ROOT / "docs" / "architecture.md"
PACKAGE: Final = ROOT / "worker"
_CODE: Final = re.compile(r"`([^`\s]+)`")
_FENCE: Final = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# Folders of the repository a path may start with; any other path is read relative to worker/.
_REPOSITORY_FOLDERS: Final = (
    "worker/",
    "tests/",
    "deploy/",
    "docs/",
    "scripts/",
    "schemas/",
    "examples/",
    "worker_bench/",
)
_PACKAGES: Final = ("worker", "worker_bench")
_LAYER_NAME: Final = re.compile(r"^(?:worker/)?([a-z_]+)(?:/|\.py)$")


def _prose(text: str) -> str:
    """The document without its fenced blocks (diagrams name modules in their own notation)."""
    return _FENCE.sub("", text)


def _top_level_modules() -> set[str]:
    return {path.stem for path in PACKAGE.iterdir() if path.suffix == ".py" or (path / "__init__.py").exists()}


def _resolves(dotted: str) -> bool:
    """`a.b.c` names a module (of `worker` unless it names another top-level package), or an attribute of one."""
    parts = dotted.split(".")
    if parts[0] not in _PACKAGES:
        parts = ["worker", *parts]
    for split in range(len(parts), 1, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def _path_exists(token: str) -> bool:
    path = token.rstrip("/")
    base = ROOT if f"{path}/".startswith(_REPOSITORY_FOLDERS) else PACKAGE
    if (base / path).exists():
        return True
    # `domain/customer.patch_of`: a module's file, then an attribute of it.
    module, _, attribute = path.rpartition(".")
    if attribute and attribute != "py" and (base / f"{module}.py").exists():
        return _resolves(f"{module.replace('/', '.')}.{attribute}")
    return False


def named_modules(text: str) -> tuple[list[str], list[str]]:
    """Paths (`store/batch.py`, `tests/...`) and dotted names (`worker.store.inline`, `contract.decode`) the prose
    of the document names in backticks; templates (`<name>`, `*`, `NNNN`) and hidden folders are left out."""
    paths, dotted = [], []
    top = _top_level_modules()
    for found in _CODE.findall(_prose(text)):
        token = found.rstrip(".,:;")
        if any(mark in token for mark in ("<", "*", "NNNN", "(", "=")) or token.startswith("."):
            continue
        if "/" in token or token.endswith(".py"):
            paths.append(token)
        elif "." in token and token.removeprefix("worker.").split(".")[0] in top:
            dotted.append(token)
    return paths, dotted


def diagram_layers(text: str) -> list[set[str]]:
    """The layers drawn in the first fenced block after the "Layers" heading, top to bottom: each line that starts
    with module names (`cli/`, `app.py  processes.py`) is a layer; lines starting with `│` continue the one above."""
    section = re.split(r"^## Layers", text, maxsplit=1, flags=re.MULTILINE)[1]
    block = section.split("```", 2)[1]
    layers = []
    for line in block.splitlines()[1:]:
        names = []
        for token in line.split():
            match = _LAYER_NAME.match(token)
            if match is None:
                break
            names.append(match.group(1))
        if names:
            layers.append(set(names))
    return layers


def contract_layers() -> list[set[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    # The contract over the whole package (others may layer a subpackage): the longest one contained in `worker`.
    whole = [
        contract
        for contract in config["tool"]["importlinter"]["contracts"]
        if contract["type"] == "layers" and contract.get("containers") == ["worker"]
    ]
    contract = max(whole, key=lambda contract: len(contract["layers"]))
    return [{name.strip() for name in layer.split("|")} for layer in contract["layers"]]


def test_every_module_the_architecture_names_exists() -> None:
    paths, dotted = named_modules(DOCUMENT.read_text(encoding="utf-8"))
    assert paths and dotted, "no module names found: has the document's notation changed?"
    missing = [path for path in paths if not _path_exists(path)] + [name for name in dotted if not _resolves(name)]
    assert missing == []


def test_the_layer_diagram_is_the_import_linter_contract() -> None:
    drawn = diagram_layers(DOCUMENT.read_text(encoding="utf-8"))
    assert drawn == contract_layers()
    for layer in drawn:
        for name in layer:
            assert (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").exists(), name


def test_the_checks_catch_a_missing_module_and_a_swapped_layer() -> None:
    paths, dotted = named_modules("See `store/nowhere.py` and `service.NoSuchThing`.")
    assert paths == ["store/nowhere.py"] and not _path_exists(paths[0])
    assert dotted == ["service.NoSuchThing"] and not _resolves(dotted[0])
    drawn = diagram_layers("## Layers\n\n```\n store/   sql\n  │\n domain/  no I/O\n```\n")
    assert drawn == [{"store"}, {"domain"}]
    assert drawn != [{"domain"}, {"store"}]
