"""The docs and the files they name: every repository path that code, a help text, the Makefile or a
doc names exists; no private note is cited; no iteration name is left; generated doc tables are
current. Pure text checks over the files git tracks (or would track), so they run in a second."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Where a path may start: the repository's own top-level folders. A path under runs/, reports/ or
# /tmp is an output a command writes, not a file of the repository, so it is never checked.
TOP = (
    "unigap",
    "docs",
    "bench",
    "results",
    "deploy",
    "tests",
    "services",
    "pipelines",
    "protos",
    "docker",
    "recipes",
    "experiments",
    ".ci",
)
PATH = re.compile(r"(?<![\w./:@-])((?:" + "|".join(re.escape(t) for t in TOP) + r")/[\w.*/$<>{}\[\]-]*[\w*/])")
SCANNED = re.compile(r"(\.(md|py|ya?ml|toml|txt|proto|tpl)|Makefile|Dockerfile|/run)$")


def _files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(f for f in out.splitlines() if (ROOT / f).is_file())


FILES = _files()


def _text(name: str) -> str:
    try:
        return (ROOT / name).read_text()
    except UnicodeDecodeError:
        return ""


def _exists(path: str, base: Path = ROOT) -> bool:
    if "*" in path:
        return any(base.glob(path))
    return (base / path.rstrip("/")).exists()


def named_paths(text: str) -> set[str]:
    """Repository-relative paths in `text`: a name with an extension, a glob, or a folder ending in `/`.
    Placeholders (`<name>`, `$s`, `{x}`) are not paths, nor are slash-joined names without an
    extension (`deploy/unigap-judge` for kubectl, an annotation key), nor what a command writes
    (the value of `--json`, `--markdown`, `--out`, `--store` or `--report`)."""
    found = set()
    for m in PATH.finditer(text):
        if re.search(r"--(json|markdown|out|store|report)[ =]$", text[max(0, m.start() - 12) : m.start()]):
            continue
        path = m.group(1).rstrip(".")
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if not re.search(r"[$<>{}\[\]]", path) and (path.endswith("/") or "." in last or "*" in last):
            found.add(path)
    return found


def test_named_paths_finds_paths_and_skips_outputs_and_placeholders():
    text = (
        "see docs/method.md, `bench/gpu.py` and results/best-of/*.json; not s3://unigap/store, "
        "runs/x.json, /tmp/unigap/a.py, results/<recipe>/s$s.json, deploy/unigap-judge, "
        "or unigap.v1.GenerationService/Generate; written: --json results/new/s0.json."
    )
    assert named_paths(text) == {"docs/method.md", "bench/gpu.py", "results/best-of/*.json"}


# results/ holds measurements, services/api/ code protoc writes (it names protos by their import path).
@pytest.mark.parametrize(
    "name",
    [f for f in FILES if SCANNED.search(f) and not f.startswith(("results/", "services/api/"))],
)
def test_every_file_a_file_names_exists(name):
    """Paths are relative to the repository root, or to the naming file's top folder (a proto import)."""
    top = ROOT / name.split("/", 1)[0]
    missing = sorted(p for p in named_paths(_text(name)) if not _exists(p) and not _exists(p, top))
    assert not missing, f"{name} names files the repository does not have: {missing}"


def test_no_private_note_is_cited():
    notes = [stem + ".md" for stem in ("METHOD", "FINDINGS", "ENVIRONMENT", "DESIGN")]  # spelt so as not to match
    hits = [(f, n) for f in FILES for n in notes if n in _text(f)]
    assert not hits, f"cite docs/ instead: {hits}"


def test_no_iteration_names_outside_results():
    out = subprocess.run(
        ["git", "grep", "-nE", "[Ss](top|ession) [0-9]+", "--", ".", ":!results"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and not out.stdout, out.stdout


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_deploy_doc_values_table_is_generated_from_values_yaml():
    spec = importlib.util.spec_from_file_location("values_table", ROOT / "deploy" / "helm" / "values_table.py")
    values_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(values_table)
    assert values_table.embedded() == values_table.table(), (
        "docs/deploy.md's values table is stale: python deploy/helm/values_table.py --write"
    )
    text = values_table.table()
    assert "| `trainer.procsPerNode` | `1` | torchrun processes (DDP ranks)" in text
    assert "| `judge.mode` | `likelihood` | how the judge reads the understanding branch" in text


def test_values_table_follows_the_comments(tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(
        "# -- The section.\n# More of it.\nsection:\n  a: 1        # what a is\n"
        '                # and more of a\n  b: ""\n\n# -- A top value.\ntop: [x]\n'
    )
    spec = importlib.util.spec_from_file_location("values_table", ROOT / "deploy" / "helm" / "values_table.py")
    values_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(values_table)
    assert values_table.table(values).splitlines()[2:] == [
        "| `section` | | The section. More of it. |",
        "| `section.a` | `1` | what a is and more of a |",
        '| `section.b` | `""` |  |',
        '| `top` | `["x"]` | A top value. |',
    ]
