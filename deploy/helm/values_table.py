"""The values table of docs/deploy.md, generated from the comments of deploy/helm/unigap/values.yaml.

Supports the layout values.yaml keeps: two-space indentation, one key per line, a `# -- text` block
(continued by plain `# text` lines) describing the key that follows it, and a trailing `# text` on a
key's line (continued by comment lines indented past the key) describing that key. A plain comment
block right above a key describes it too. Every leaf value gets a row, with its default as YAML
loads it and its own description; a described key with values below it gets a row of its own.

    python deploy/helm/values_table.py            # print the table
    python deploy/helm/values_table.py --write    # replace the table in docs/deploy.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "deploy" / "helm" / "unigap" / "values.yaml"
DOC = ROOT / "docs" / "deploy.md"
BEGIN, END = "<!-- values-table: begin -->", "<!-- values-table: end -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w.-]*):(?P<rest>.*)$")


def _comments(text: str) -> dict[str, str]:
    """Dotted key path -> the description its comments give (see the module docstring)."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []  # a comment block waiting for the key below it
    last: str | None = None  # the key whose trailing comment a deeper comment line continues
    last_col = 0
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            pending, last = [], None
            continue
        if stripped.startswith("#"):
            body = stripped.lstrip("#").strip()
            col = len(line) - len(line.lstrip())
            if last is not None and col > last_col and not stripped.startswith("# --"):
                out[last] += " " + body
            elif stripped.startswith("# --"):
                pending = [stripped[4:].strip()]
            else:
                pending.append(body)
            continue
        m = _KEY.match(line)
        if not m:  # a list item or a continued flow value
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m["key"]))
        path = ".".join(k for _, k in stack)
        _, _, comment = m["rest"].partition(" #")
        if comment.strip():
            out[path] = comment.strip()
            last, last_col = path, indent
        elif pending:
            out[path] = " ".join(pending)
            last = None
        else:
            last = None
        pending = []
    return out


def _leaves(values: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows += _leaves(value, path + ".")
        else:
            rows.append((path, value))
    return rows


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell: `|` would end the cell, `<release>` would read as HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def table(values_path: Path = VALUES) -> str:
    """The markdown table: one row per leaf value, its default, and its description."""
    text = values_path.read_text()
    described = _comments(text)
    lines = ["| value | default | what it decides |", "|---|---|---|"]
    sections_done: set[str] = set()
    for path, default in _leaves(yaml.safe_load(text)):
        parts = path.split(".")
        for i in range(1, len(parts)):  # a described section gets its own row before its first value
            section = ".".join(parts[:i])
            if section in described and section not in sections_done:
                sections_done.add(section)
                lines.append(f"| `{section}` | | {_cell(described[section])} |")
        shown = json.dumps(default) if not isinstance(default, str) else (f'"{default}"' if default == "" else default)
        lines.append(f"| `{path}` | `{_cell(shown)}` | {_cell(described.get(path, ''))} |")
    return "\n".join(lines) + "\n"


def embedded(doc: Path = DOC) -> str:
    """The table docs/deploy.md holds between its two markers."""
    text = doc.read_text()
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"replace the table in {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if not args.write:
        sys.stdout.write(table())
        return 0
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        print(f"{DOC.relative_to(ROOT)} has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    DOC.write_text(head + BEGIN + "\n" + table() + rest[rest.index(END) :])
    return 0


if __name__ == "__main__":
    sys.exit(main())
