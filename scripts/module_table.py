#!/usr/bin/env python3
"""Print docs/architecture.md's module table: each module, the first sentence of its
docstring (what it owns), its line count. Run it to refresh the table after a change:

    python scripts/module_table.py
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules() -> list[Path]:
    """The package's committed modules (the working tree's, if git is unavailable)."""
    try:
        out = subprocess.run(["git", "ls-files", "taskq"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
        paths = [ROOT / p for p in out if p.endswith(".py")]
    except (OSError, subprocess.CalledProcessError):
        paths = list((ROOT / "taskq").rglob("*.py"))
    return sorted((p for p in paths if p.exists()), key=lambda p: (p.parent != ROOT / "taskq", p))


def owns(path: Path) -> str:
    """The docstring's first paragraph (its first sentence when that is long)."""
    doc = (ast.get_docstring(ast.parse(path.read_text())) or "").split("\n\n")[0]
    text = " ".join(doc.split())
    if len(text) > 200:
        text = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    return text.replace("|", "\\|")


def main() -> None:
    print("| module | what it owns | lines |")
    print("|---|---|---:|")
    for path in modules():
        lines = len(path.read_text().splitlines())
        print(f"| `{path.relative_to(ROOT)}` | {owns(path)} | {lines} |")


if __name__ == "__main__":
    main()
