"""The container image, checked without a container engine.

The Dockerfile is parsed and held to the rules of the deployment (slim Debian base, locked
dependencies before the source, numeric unprivileged user, exec-form entrypoint, no build
tools at run time, OCI labels) and to checkov's Dockerfile policies. Then its build stage is
replayed for real: the same COPY and RUN steps, with the same ENV, in a fresh virtualenv and
a context filtered by .dockerignore; the runtime stage's RUN steps run as root in a private
mount namespace, over overlays that stand in for the base image's /usr/local, /etc and
/var/lib; and the runtime stage's ENTRYPOINT (tini, from the init stage, in front of
shadowproxy) and CMD are started as its USER, with the source tree and the config read-only
and only the VOLUMEs writable, until the admin port reports ready and SIGTERM ends the
process with exit code 0. Last, the entrypoint runs as PID 1 of a PID namespace of its own
and must reap the helpers a crashing local model leaves behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import string
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests.support.models import BuiltModel
from tests.support.proxy import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BASE_IMAGE = "python:3.11-slim-bookworm"
CONFIG_PATH = "/etc/shadowproxy/config.yaml"
STATE_DIR = "/var/lib/shadowproxy"
IMAGE_VENV = "/opt/venv"
IMAGE_TINI = "/usr/bin/tini"
# Debian's static tini, which the init stage installs and .ci/system-deps installs here.
HOST_TINI = "/usr/bin/tini-static"
# The PATH of the official python images; the base interpreter is put in front of it.
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


BUILD_TOOLS = re.compile(
    r"\b(apt-get|apt|aptitude|dpkg|gcc|g\+\+|cc|make|build-essential|pip3?\s+install|"
    r"curl|wget)\b"
)


# ---- the Dockerfile as data ------------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [value for name, value in self.instructions if name == instruction]

    def index(self, instruction: str, predicate: str = "") -> int:
        """Position of the first ``instruction`` whose value contains ``predicate``."""
        for i, (name, value) in enumerate(self.instructions):
            if name == instruction and predicate in value:
                return i
        raise AssertionError(f"no {instruction} containing {predicate!r} in stage {self.name}")


def _stages() -> list[Stage]:
    stages: list[Stage] = []
    for item in DockerfileParser(str(DOCKERFILE)).structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"unexpected FROM {value!r}"
            stages.append(Stage(words[0], name))
        elif instruction != "COMMENT":
            assert stages, f"{instruction} before the first FROM"
            stages[-1].instructions.append((instruction, value))
    return stages


def _stage(name: str) -> Stage:
    matches = [stage for stage in _stages() if stage.name == name]
    assert len(matches) == 1, f"expected one stage named {name}"
    return matches[0]


def _env_pairs(value: str) -> list[tuple[str, str]]:
    pairs = []
    for word in shlex.split(value):
        key, sep, val = word.partition("=")
        assert sep, f"ENV must use the KEY=value form: {value!r}"
        pairs.append((key, val))
    return pairs


def _apply_env(value: str, env: dict[str, str], venv: str | None = None) -> None:
    """One ENV line, expanded as the builder does; with ``venv``, the image's virtualenv
    path is moved there (the rest of the Dockerfile reaches it through $VIRTUAL_ENV)."""
    for key, val in _env_pairs(value):
        if key == "VIRTUAL_ENV" and venv is not None:
            assert val == IMAGE_VENV
            val = venv
        env[key] = string.Template(val).substitute(env)


def _stage_env(stage: Stage, base: dict[str, str], venv: str | None = None) -> dict[str, str]:
    """The environment after the stage's ENV lines."""
    env = dict(base)
    for value in stage.values("ENV"):
        _apply_env(value, env, venv)
    return env


def _user(stage: Stage) -> tuple[int, int]:
    users = stage.values("USER")
    assert users, "the runtime stage sets no USER, so it would run as root"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1].strip())
    assert match, f"USER must be numeric (uid[:gid]) for runAsNonRoot: {users[-1]!r}"
    uid = int(match.group(1))
    gid = int(match.group(2) or match.group(1))
    return uid, gid


def _exec_form(value: str) -> list[str]:
    words = json.loads(value)
    assert isinstance(words, list) and all(isinstance(w, str) for w in words), value
    return words


# ---- .dockerignore, with the builder's matching rules --------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class Ignore:
    rules: tuple[tuple[bool, str, re.Pattern[str]], ...]

    @classmethod
    def load(cls, path: Path) -> Ignore:
        rules = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
            rules.append((negate, pattern, _glob_regex(pattern)))
        return cls(tuple(rules))

    def excluded(self, relative: str) -> bool:
        """A path is left out when the last rule matching it or one of its parent folders
        excludes it; a later ``!`` rule brings it back."""
        parts = relative.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        result = False
        for negate, _, regex in self.rules:
            if any(regex.match(prefix) for prefix in prefixes):
                result = not negate
        return result

    def may_include_below(self, folder: str) -> bool:
        return any(negate and pattern.startswith(folder + "/") for negate, pattern, _ in self.rules)

    def copy_context(self, source: Path, target: Path) -> list[str]:
        """Copy the build context ``docker build`` would send; return its relative paths."""
        sent = []
        for dirpath, dirnames, filenames in os.walk(source):
            here = Path(dirpath).relative_to(source)
            for name in list(dirnames):
                rel = (here / name).as_posix()
                if self.excluded(rel) and not self.may_include_below(rel):
                    dirnames.remove(name)
            for name in filenames:
                rel = (here / name).as_posix()
                if not self.excluded(rel):
                    (target / here).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source / rel, target / rel)
                    sent.append(rel)
        return sorted(sent)


def _copied_sources(stage: Stage) -> list[str]:
    sources = []
    for value in stage.values("COPY"):
        words = shlex.split(value)
        if any(word.startswith("--from") for word in words):
            continue
        sources.extend(word for word in words[:-1] if not word.startswith("--"))
    return sources


# ---- static rules ----------------------------------------------------------------------------


def test_every_stage_starts_from_the_pinned_debian_slim_python() -> None:
    stages = _stages()
    assert [stage.name for stage in stages] == ["init", "build", "runtime"]
    for stage in stages:
        # Debian (glibc) so that the onnxruntime wheels install as they are; pinned by tag.
        assert stage.image == BASE_IMAGE


def test_locked_dependencies_are_installed_before_the_source_is_copied() -> None:
    build = _stage("build")
    lock_copied = build.index("COPY", "requirements.lock")
    deps_installed = build.index("RUN", "-c requirements.lock")
    source_copied = build.index("COPY", "shadowproxy")
    assert lock_copied < deps_installed < source_copied
    # The dependency layer depends on the lock and the project metadata only.
    before_deps = _copied_sources(Stage("", None, build.instructions[:deps_installed]))
    assert sorted(before_deps) == ["pyproject.toml", "requirements.lock"]
    install = build.instructions[deps_installed][1]
    # Runtime dependencies only, each at its locked version, never the test extra.
    assert '["project"]["dependencies"]' in install
    assert "[test]" not in DOCKERFILE.read_text()
    assert "--no-cache-dir" in install and "--only-binary=:all:" in install


def test_runtime_stage_runs_as_a_numeric_unprivileged_user() -> None:
    runtime = _stage("runtime")
    uid, gid = _user(runtime)
    assert uid >= 10000 and gid >= 10000
    # Nothing after USER runs as root again.
    last_user = max(i for i, (name, _) in enumerate(runtime.instructions) if name == "USER")
    assert all(name != "RUN" for name, _ in runtime.instructions[last_user:])
    creates_user = " ".join(runtime.values("RUN"))
    assert f"--uid {uid}" in creates_user and f"--gid {gid}" in creates_user


def test_entrypoint_and_cmd_are_exec_form_so_sigterm_reaches_shadowproxy() -> None:
    runtime = _stage("runtime")
    assert _exec_form(runtime.values("ENTRYPOINT")[-1]) == [IMAGE_TINI, "-s", "--", "shadowproxy"]
    assert _exec_form(runtime.values("CMD")[-1]) == ["serve", "--config", CONFIG_PATH]
    assert runtime.values("STOPSIGNAL") == ["SIGTERM"]


def test_the_init_stage_installs_tini_alone() -> None:
    """The package manager runs in a stage of its own, whose only product is one static
    binary: nothing else of it reaches the runtime stage."""
    init = _stage("init")
    (command,) = init.values("RUN")
    assert re.search(r"apt-get install -y --no-install-recommends tini(\s|$)", command)
    assert command.rstrip().endswith("rm -rf /var/lib/apt/lists/*")
    assert [name for name, _ in init.instructions] == ["RUN"]


def test_runtime_stage_has_no_build_tools_and_no_pip() -> None:
    build, runtime = _stage("build"), _stage("runtime")
    for command in runtime.values("RUN"):
        assert not BUILD_TOOLS.search(command), command
    runtime_run = " ".join(runtime.values("RUN"))
    assert re.search(r"pip uninstall --yes .*\bpip\b", runtime_run)
    # The virtualenv is the only thing taken from the build stage, at the same path (a
    # virtualenv is not relocatable), and it no longer holds pip.
    assert _stage_env(build, {"PATH": IMAGE_PATH})["VIRTUAL_ENV"] == IMAGE_VENV
    assert _stage_env(runtime, {"PATH": IMAGE_PATH})["VIRTUAL_ENV"] == IMAGE_VENV
    assert runtime.values("COPY") == [
        f"--from=build {IMAGE_VENV} {IMAGE_VENV}",
        f"--from=init {HOST_TINI} {IMAGE_TINI}",
    ]
    assert re.search(r"pip uninstall --yes pip setuptools", " ".join(build.values("RUN")))


def test_runtime_environment_suits_a_read_only_root_filesystem() -> None:
    build, runtime = _stage("build"), _stage("runtime")
    env = _stage_env(runtime, {"PATH": IMAGE_PATH})
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].split(":")[0] == f"{env['VIRTUAL_ENV']}/bin"
    # Bytecode is written at build time: the venv in the build stage, the stdlib here.
    assert "compileall" in " ".join(build.values("RUN"))
    assert "compileall" in " ".join(runtime.values("RUN"))
    volumes = [v for value in runtime.values("VOLUME") for v in _exec_form(value)]
    assert sorted(volumes) == ["/tmp", STATE_DIR]
    exposed = sorted(word for value in runtime.values("EXPOSE") for word in value.split())
    assert exposed == ["8080", "9090"]


def test_oci_labels_describe_the_image() -> None:
    labels = DockerfileParser(str(DOCKERFILE)).labels
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    prefix = "org.opencontainers.image."
    assert labels[prefix + "title"] == project["name"]
    assert labels[prefix + "version"] == project["version"]
    assert labels[prefix + "licenses"] == project["license"]
    assert labels[prefix + "description"]
    assert labels[prefix + "source"].startswith("https://")


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    ignore = Ignore.load(DOCKERIGNORE)
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "tests/test_cli.py",
        "bench/results/latest.json",
        "shadowproxy/__pycache__/cli.cpython-311.pyc",
        "shadowproxy.egg-info/PKG-INFO",
        ".pytest_cache/README.md",
        ".hypothesis/examples/x",
        ".coverage",
        "helm/shadowproxy/values.yaml",
        "configs/local-dev.yaml",
    ):
        assert ignore.excluded(path), path
    for source in _copied_sources(_stage("build")):
        target = ROOT / source
        files = [p for p in target.rglob("*.py")] if target.is_dir() else [target]
        assert files, source
        for file in files:
            rel = file.relative_to(ROOT).as_posix()
            assert not ignore.excluded(rel), rel


# ---- checkov ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_checkov_dockerfile_policies_pass_or_are_justified(checkov: Path) -> None:
    # --skip-download: the policies shipped in the package, nothing fetched at run time.
    done = subprocess.run(
        [checkov, "-f", DOCKERFILE, "--framework", "dockerfile", "-o", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )
    report = json.loads(done.stdout)
    summary, results = report["summary"], report["results"]
    assert summary["parsing_errors"] == 0
    assert not results["failed_checks"], [c["check_id"] for c in results["failed_checks"]]
    assert done.returncode == 0, done.stderr[-2000:]
    passed = {check["check_id"] for check in results["passed_checks"]}
    # The policies that matter most were evaluated, not skipped for lack of a resource.
    assert {"CKV_DOCKER_3", "CKV_DOCKER_7", "CKV_DOCKER_8"} <= passed
    text = DOCKERFILE.read_text()
    for check in results["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) > 20, f"{check['check_id']} skipped without a reason"
        assert f"checkov:skip={check['check_id']}:" in text


# ---- the runtime stage's RUN steps, replayed over a stand-in of the base image ---------------

# What the official python image installs into site-packages and the runtime stage removes.
BASE_SITE_PACKAGES = re.compile(
    r"^(pip|setuptools|wheel)(-[^/]*\.dist-info)?$|^(_distutils_hack|pkg_resources)$"
    r"|^distutils-precedence\.pth$|^README\.txt$"
)
STDLIB = "lib/python3.11"


def _base_image_layer(prefix: Path, layer: Path) -> list[str]:
    """An overlay layer that makes ``prefix`` look like the base image's /usr/local.

    ``prefix`` is a CPython 3.11 installed from source, as the base image's is. The official
    image ships no bytecode and nothing in site-packages but pip, setuptools and wheel: the
    layer hides every ``__pycache__`` of the standard library (whiteouts) and replaces
    site-packages (an opaque folder) with copies of just those. Returns what it copied.
    """
    stdlib = prefix / STDLIB
    assert (stdlib / "os.py").is_file() and (prefix / "bin/python").exists(), prefix
    site = layer / STDLIB / "site-packages"
    site.mkdir(parents=True)
    os.setxattr(site, "trusted.overlay.opaque", b"y")
    copied = []
    for entry in sorted((stdlib / "site-packages").iterdir()):
        if BASE_SITE_PACKAGES.match(entry.name):
            copy = shutil.copytree if entry.is_dir() else shutil.copy2
            copy(entry, site / entry.name)
            copied.append(entry.name)
    for folder, dirs, _ in os.walk(stdlib):
        here = Path(folder)
        if here == stdlib:
            dirs.remove("site-packages")
        if "__pycache__" in dirs:
            dirs.remove("__pycache__")
            hidden = layer / here.relative_to(prefix) / "__pycache__"
            hidden.parent.mkdir(parents=True, exist_ok=True)
            os.mknod(hidden, 0o600 | stat.S_IFCHR, os.makedev(0, 0))  # an overlay whiteout
    return copied


# Runs in the private mount namespace: the RUN steps, then what they left, as JSON.
_RUNTIME_REPLAY = """
import grp, importlib.util, json, os, pwd, subprocess, sys
steps, uid, gid = json.loads(sys.argv[1])
python = "/usr/local/bin/python"

def as_user(code):
    return subprocess.run([python, "-c", code], capture_output=True, text=True,
                          user=uid, group=gid, extra_groups=[],
                          # /usr/local/lib is in the image's ld.so.cache, not in this one's.
                          env={"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/usr/local/lib"})

def stat_of(path):
    st = os.stat(path)
    return [oct(st.st_mode & 0o7777), st.st_uid, st.st_gid]

before = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True)
# Each step gets a fresh, writable /tmp of its own, as a build step does. Only the step: this
# interpreter may itself live under /tmp (a checkout there), and must stay visible.
fresh_tmp = 'mount -t tmpfs -o mode=1777 tmpfs /tmp && exec /bin/sh -c "$0"'
for command, env in steps:
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", fresh_tmp, command],
        env=env, capture_output=True, text=True,
    )
    if done.returncode:
        print(json.dumps({"failed": command, "output": done.stdout + done.stderr}))
        sys.exit(0)
pyc = importlib.util.cache_from_source("/usr/local/lib/python3.11/os.py")
test_pycs = [p for p in os.listdir("/usr/local/lib/python3.11/test") if p == "__pycache__"]
user = pwd.getpwuid(uid)
print(json.dumps({
    "pip_before": before.returncode,
    "user": [user.pw_name, user.pw_gid, user.pw_dir, user.pw_shell, grp.getgrgid(gid).gr_name],
    "home_exists": os.path.exists(user.pw_dir),
    "etc": stat_of("/etc/shadowproxy"),
    "state": stat_of("/var/lib/shadowproxy"),
    "os_pyc_flags": int.from_bytes(open(pyc, "rb").read()[4:8], "little"),
    "test_pycache": test_pycs,
    "user_imports": as_user("import asyncio, json, ssl, sqlite3; print('ok')").stdout.strip(),
    "user_pip": as_user("import pip").stderr.strip().splitlines()[-1:],
    "user_setuptools": as_user("import setuptools").stderr.strip().splitlines()[-1:],
    "user_writes": as_user("open('/usr/local/lib/python3.11/x', 'w')").returncode,
    "distributions": sorted(
        json.loads(subprocess.run([python, "-c",
            "import importlib.metadata as m, json; "
            "print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"],
            capture_output=True, text=True, check=True).stdout)
    ),
}))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_runtime_stage_run_steps_strip_pip_compile_the_stdlib_and_add_the_user(
    tmp_path: Path,
) -> None:
    # The RUN steps change the base image's /usr/local, /etc and /var/lib. They run here,
    # as root, in a private mount namespace where those three are overlays whose changes go
    # to tmp_path, and the rest of / is read-only: this machine's files stay as they are.
    # /usr/local is a CPython 3.11 built from source, made to look like the base image's
    # (see _base_image_layer), and /opt is empty, as in the base image (the virtualenv is
    # copied in after these steps).
    runtime = _stage("runtime")
    copy_at = runtime.index("COPY", "--from=build")
    assert all(i < copy_at for i, (name, _) in enumerate(runtime.instructions) if name == "RUN")
    env = {"PATH": IMAGE_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
    steps = []
    for instruction, value in runtime.instructions[:copy_at]:
        if instruction == "ARG":
            name, _, default = value.partition("=")
            env[name] = default
        elif instruction == "ENV":
            _apply_env(value, env)
        elif instruction == "RUN":
            steps.append((value, dict(env)))
        else:
            assert instruction == "LABEL", f"the runtime stage has a {instruction} before COPY"
    assert steps, "the runtime stage has no RUN step"

    prefix = Path(sys.base_prefix)
    copied = _base_image_layer(prefix, tmp_path / "base")
    assert {"pip", "setuptools"} <= set(copied), copied
    mounts = []
    for target, lower in (
        ("/etc", "/etc"),
        ("/var/lib", "/var/lib"),
        ("/usr/local", f"{tmp_path / 'base'}:{prefix}"),
    ):
        name = target.strip("/").replace("/", "-")
        upper, work = tmp_path / "upper" / name, tmp_path / "work" / name
        upper.mkdir(parents=True)
        work.mkdir(parents=True)
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        mounts.append(f"mount -t overlay overlay -o {shlex.quote(options)} {target}")
    mounts.append("mount -t tmpfs -o mode=0755 tmpfs /opt")
    # Anything else the steps might write (a home folder, say) fails instead of landing here.
    mounts.append("mount -o remount,bind,ro /")
    uid, gid = _user(runtime)
    script = " && ".join(
        [
            *mounts,
            shlex.join([sys.executable, "-c", _RUNTIME_REPLAY, json.dumps([steps, uid, gid])]),
        ]
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "failed" not in result, result

    assert result["pip_before"] == 0  # the stand-in had pip, as the base image has
    # pip, setuptools and wheel are gone: the container cannot install code.
    assert not {"pip", "setuptools", "wheel"} & set(result["distributions"])
    assert result["user_pip"] == ["ModuleNotFoundError: No module named 'pip'"]
    assert result["user_setuptools"] == ["ModuleNotFoundError: No module named 'setuptools'"]
    # The standard library is compiled, with bytecode that is never checked against the
    # source (a read-only filesystem could not rewrite it anyway); tests are left out.
    assert result["os_pyc_flags"] == 0b01
    assert result["test_pycache"] == []
    assert result["user_imports"] == "ok"
    assert result["user_writes"] != 0
    # The unprivileged user and group, without a home, a login shell or a lastlog entry.
    assert result["user"] == [
        "shadowproxy",
        gid,
        "/nonexistent",
        "/usr/sbin/nologin",
        "shadowproxy",
    ]
    assert result["home_exists"] is False
    assert result["etc"] == ["0o755", 0, 0]
    assert result["state"] == ["0o750", uid, gid]
    # And this machine is untouched.
    assert not Path("/var/lib/shadowproxy").exists()
    assert "shadowproxy" not in Path("/etc/passwd").read_text()


# ---- the build stage replayed, the runtime stage started -------------------------------------


def _base_python(uid: int, gid: int) -> Path:
    """A Python 3.11 that the image's user can run with its own standard library, as the
    base image's /usr/local/bin/python is (an interpreter under root's home is not)."""
    probe = "import sys, ensurepip, venv; print(sys.version_info[:2], sys.base_prefix)"
    candidates = [sys._base_executable, shutil.which("python3.11", path=IMAGE_PATH)]
    for candidate in filter(None, candidates):
        try:
            as_root = subprocess.run([candidate, "-c", probe], capture_output=True, text=True)
            as_user = subprocess.run(
                [candidate, "-c", probe],
                capture_output=True,
                text=True,
                user=uid,
                group=gid,
                extra_groups=[],
            )
        except OSError:
            continue  # not even executable by that user
        usable = as_root.returncode == as_user.returncode == 0
        if usable and as_root.stdout == as_user.stdout and as_root.stdout.startswith("(3, 11)"):
            return Path(candidate)
    raise AssertionError(f"no Python 3.11 usable by uid {uid} among {candidates}")


@dataclass
class Image:
    """The build stage's result on this machine, with the paths the image would have."""

    root: Path
    venv: Path
    context: Path
    shim: Path
    uid: int
    gid: int


def _replay_build_stage(root: Path, context: Path, venv: Path, shim: Path) -> None:
    build = _stage("build")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "VIRTUAL_ENV", "COV", "PIP_REQUIRE_VIRTUALENV"))
    }
    env["PATH"] = f"{shim}:{IMAGE_PATH}"
    workdir = root / "build-root"
    workdir.mkdir()
    for instruction, value in build.instructions:
        if instruction == "ENV":
            _apply_env(value, env, str(venv))
        elif instruction == "WORKDIR":
            workdir = root / "build-root" / value.strip().lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            *sources, dest = shlex.split(value)
            assert not any(s.startswith("--") for s in sources), value
            target = workdir / dest
            for source in sources:
                path = context / source
                assert path.exists(), f"{source} is not in the build context"
                if path.is_dir():
                    shutil.copytree(path, target, dirs_exist_ok=True)
                elif dest.endswith("/") or len(sources) > 1:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target / path.name)
                else:
                    shutil.copy2(path, target)
        elif instruction == "RUN":
            # The virtualenv is reached through $VIRTUAL_ENV only, so moving it is faithful.
            assert IMAGE_VENV not in value, value
            subprocess.run(["/bin/sh", "-c", value], cwd=workdir, env=env, check=True)
        else:
            raise AssertionError(f"the build stage has a {instruction} this replay ignores")


@pytest.fixture(scope="session")
def image() -> Iterator[Image]:
    uid, gid = _user(_stage("runtime"))
    root = Path(tempfile.mkdtemp(prefix="shadowproxy-image-"))
    try:
        # Readable by the unprivileged user, as the image's files are; writable by root only.
        root.chmod(0o755)
        shim = root / "base-bin"
        shim.mkdir()
        (shim / "python").symlink_to(_base_python(uid, gid))
        context = root / "context"
        context.mkdir()
        sent = Ignore.load(DOCKERIGNORE).copy_context(ROOT, context)
        assert "pyproject.toml" in sent and not any(p.startswith("tests/") for p in sent)
        venv = root / "opt-venv"
        _replay_build_stage(root, context, venv, shim)
        subprocess.run(["chmod", "-R", "a-w", str(context)], check=True)
        yield Image(root, venv, context, shim, uid, gid)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _wait_status(url: str, status: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited early with {proc.returncode}"
        if _get(url) == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered {status}")


@pytest.fixture
def stub_models() -> Iterator[tuple[int, int]]:
    ports = free_port(), free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "shadowproxy.devtools.stub_model", "--host", "127.0.0.1"]
            + ["--port", str(port), "--name", "churn", "--version", version]
        )
        for port, version in zip(ports, ("1", "2"), strict=True)
    ]
    try:
        for port, proc in zip(ports, procs, strict=True):
            _wait_status(f"http://127.0.0.1:{port}/v2/health/ready", 200, 30, proc)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_image_serves_as_its_user_on_a_read_only_tree_and_stops_on_sigterm(
    image: Image, stub_models: tuple[int, int]
) -> None:
    runtime = _stage("runtime")
    run = image.root / f"run-{time.monotonic_ns()}"
    # The VOLUMEs, owned by the image's user as the chart's fsGroup makes them.
    mounts: dict[str, Path] = {}
    for value in runtime.values("VOLUME"):
        for volume in _exec_form(value):
            mounts[volume] = run / volume.strip("/").replace("/", "-")
            mounts[volume].mkdir(parents=True)
            os.chown(mounts[volume], image.uid, image.gid)
    etc = run / "etc-shadowproxy"
    mounts[os.path.dirname(CONFIG_PATH)] = etc

    def inside(path: str) -> str:
        """A path of the container, where this run keeps it."""
        for mount, folder in mounts.items():
            if path == mount or path.startswith(mount + "/"):
                return str(folder) + path[len(mount) :]
        return path

    production, candidate = stub_models
    admin_port = free_port()
    config = {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "protocol": "v2",
        "production": {"name": "churn", "version": "1", "url": f"http://127.0.0.1:{production}"},
        "candidates": [
            {"name": "churn-rc", "version": "2", "url": f"http://127.0.0.1:{candidate}"}
        ],
        "compare": {"snapshot": {"path": inside(f"{STATE_DIR}/snapshot.json")}},
        "pair_log": {"path": inside(f"{STATE_DIR}/pairs.jsonl"), "sample_rate": 1.0},
        "shutdown": {"drain_delay_s": 0.5, "grace_s": 5},
    }
    etc.mkdir()
    (etc / "config.yaml").write_text(yaml.safe_dump(config))
    subprocess.run(["chmod", "-R", "a-w", str(etc)], check=True)

    # The runtime stage's ENV as the container sees it, each path moved where this run
    # keeps it (the virtualenv included), then what the container runtime adds.
    mounts[IMAGE_VENV] = image.venv
    mounts[IMAGE_TINI] = Path(HOST_TINI)
    env = {
        key: ":".join(inside(part) for part in value.split(":"))
        for key, value in _stage_env(runtime, {"PATH": IMAGE_PATH}).items()
    }
    env |= {
        # The user's home in the image is /nonexistent: nothing may need to write there.
        "HOME": str(run / "nonexistent"),
        "TMPDIR": str(mounts["/tmp"]),
        "LANG": "C.UTF-8",
    }
    argv = [
        inside(word)
        for word in _exec_form(runtime.values("ENTRYPOINT")[-1])
        + _exec_form(runtime.values("CMD")[-1])
    ]
    log = run / "output.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=image.context,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            user=image.uid,
            group=image.gid,
            extra_groups=[],
            umask=0o022,
        )
    try:
        _wait_status(f"http://127.0.0.1:{admin_port}/healthz/ready", 200, 120, proc)
        # The signalled process is tini, which runs the entrypoint's interpreter; both as
        # the user.
        assert psutil.Process(proc.pid).cmdline()[:3] == [HOST_TINI, "-s", "--"]
        (server,) = psutil.Process(proc.pid).children()
        cmdline = server.cmdline()
        assert cmdline[1] == str(image.venv / "bin/shadowproxy"), cmdline
        for pid in (proc.pid, server.pid):
            status = Path(f"/proc/{pid}/status").read_text()
            assert re.search(rf"^Uid:\s+{image.uid}\s", status, re.M), status

        body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
        request = urllib.request.Request(
            f"http://127.0.0.1:{config['listen']['port']}/v2/models/churn/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert json.load(response)["model_version"] == "1"

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    output = log.read_text(errors="replace")
    assert code == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    # The state volume received the final snapshot and the pair log, written as the user.
    state = mounts[STATE_DIR]
    for name in ("snapshot.json", "pairs.jsonl"):
        assert (state / name).stat().st_uid == image.uid, name
    assert json.loads((state / "snapshot.json").read_text())


def _crashes(admin_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("shadowproxy_model_crashes_total{")
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("pid1", ["entrypoint", "shadowproxy alone"])
def test_pid_1_of_the_image_reaps_what_a_crashed_worker_leaves_behind(
    image: Image,
    stub_models: tuple[int, int],
    logreg_model: BuiltModel,
    tmp_path: Path,
    pid1: str,
) -> None:
    """Each crash of this candidate's worker orphans the 3 helper processes it started; the
    executor kills them, and they wait for PID 1 to reap them. The image's entrypoint, run
    as PID 1 of a PID namespace of its own, leaves no zombie. shadowproxy alone as PID 1
    would keep every one (this is why the image starts tini)."""
    production, _ = stub_models
    admin_port, traffic_port = free_port(), free_port()
    config = {
        "listen": {"host": "127.0.0.1", "port": traffic_port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "protocol": "v2",
        "production": {"name": "churn", "version": "1", "url": f"http://127.0.0.1:{production}"},
        "candidates": [{
            "name": "local", "version": "2", "model": logreg_model.config(),
            "breaker": {"failures": 1000},
            "executor": {"kind": "process", "warmup_runs": 0, "max_restarts": 1000,
                         "restart_backoff_s": 0.05},
        }],
        "shutdown": {"drain_delay_s": 0, "grace_s": 2},
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    server = [
        str(image.venv / "bin/shadowproxy"),
        "serve",
        "--config",
        str(tmp_path / "config.yaml"),
    ]  # noqa: E501
    entrypoint = _exec_form(_stage("runtime").values("ENTRYPOINT")[-1])
    assert entrypoint[0] == IMAGE_TINI and entrypoint[-1] == "shadowproxy"
    argv = [HOST_TINI, *entrypoint[1:-1], *server] if pid1 == "entrypoint" else server
    env = {
        "PATH": f"{image.venv / 'bin'}:{IMAGE_PATH}",
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp_path),
        "SHADOWPROXY_TEST_FAULTS": json.dumps({"spawn_children": 3, "crash_on_call": 1}),
    }
    log = tmp_path / "output.log"
    with log.open("wb") as out:
        # A PID namespace (and its own /proc) in which argv[0] is PID 1, as in a container.
        namespace = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", *argv],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_status(f"http://127.0.0.1:{admin_port}/healthz/ready", 200, 120, namespace)
        body = json.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                                       "data": [0.5, -1.0, 2.0, 0.1]}]}).encode()  # fmt: skip
        deadline = time.monotonic() + 60
        while _crashes(admin_port) < 3:
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            request = urllib.request.Request(
                f"http://127.0.0.1:{traffic_port}/v2/models/churn/infer",
                data=body, headers={"Content-Type": "application/json"},
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200  # production, whatever the candidate does
            time.sleep(0.1)

        def zombies() -> list[psutil.Process]:
            found = []
            for process in psutil.Process(namespace.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    if process.status() == psutil.STATUS_ZOMBIE:
                        found.append(process)
            return found

        time.sleep(1.0)  # the executor has killed each crashed worker's helpers by now
        if pid1 == "entrypoint":
            deadline = time.monotonic() + 10
            while zombies():
                assert time.monotonic() < deadline, [z.pid for z in zombies()]
                time.sleep(0.1)
        else:
            assert len(zombies()) >= 3 * 2  # all but the last crash's helpers, at least
    finally:
        namespace.kill()  # its PID 1 goes with it (--kill-child), and the namespace
        namespace.wait(30)
