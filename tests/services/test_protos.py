"""The API definition is lint-clean and the committed generated code matches it."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_buf_lint_clean():
    buf = shutil.which("buf", path=str(Path(sys.executable).parent))
    assert buf, "buf (the buf-bin package) is not installed"
    out = subprocess.run([buf, "lint"], cwd=ROOT / "protos", capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_generated_code_is_current():
    out = subprocess.run([sys.executable, "protos/generate.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_generated_code_imports_as_services_api():
    from services.api import generation_pb2_grpc, judge_pb2, judge_pb2_grpc  # noqa: F401

    assert judge_pb2.ScoreRequest().HasField("threshold") is False
