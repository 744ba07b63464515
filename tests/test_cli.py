"""The command line: ``validate`` and ``serve`` exit codes and messages, and the entry points."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.models import BuiltModel
from tests.support.proxy import free_port

VENV_BIN = Path(sys.executable).parent
GOOD = """\
listen: {host: 127.0.0.1, port: 0}
admin: {host: 127.0.0.1, port: 0}
production:
  name: churn
  version: "1.4.0"
  url: http://127.0.0.1:18080
candidates:
  - name: churn-rc
    version: "2.0.0"
    url: http://127.0.0.1:18081
    sample_rate: 0.5
    timeout_ms: 50
"""
# Three problems, one per key: an out-of-range port, a negative timeout, an unknown key.
THREE_PROBLEMS = """\
listen: {host: 127.0.0.1, port: 70000}
admin: {host: 127.0.0.1, port: 0}
production:
  name: churn
  url: http://127.0.0.1:18080
candidates:
  - name: churn-rc
    url: http://127.0.0.1:18081
    timeout_ms: -5
limits:
  max_bodyy_bytes: 10
"""
THREE_KEYS = {"listen.port", "candidates[0].timeout_ms", "limits.max_bodyy_bytes"}


def _run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowproxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_validate_good_config_exits_0(tmp_path: Path) -> None:
    result = _run("validate", "--config", str(_write(tmp_path, "good.yaml", GOOD)))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_validate_reports_each_problem_on_a_line_naming_its_key(tmp_path: Path) -> None:
    result = _run("validate", "--config", str(_write(tmp_path, "bad.yaml", THREE_PROBLEMS)))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 3, result.stderr
    keys = {line.split(":", 1)[0] for line in lines}
    assert keys == THREE_KEYS, lines
    assert all(line.split(":", 1)[1].strip() for line in lines), lines
    timeout_line = next(line for line in lines if line.startswith("candidates[0].timeout_ms"))
    assert timeout_line == "candidates[0].timeout_ms: must be > 0"


def test_validate_missing_file_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = _run("validate", "--config", str(missing))
    assert result.returncode == 2
    assert str(missing) in result.stderr


def _local_candidate(tmp_path: Path, data: bytes, sha256: str | None = None) -> Path:
    import hashlib

    (tmp_path / "model.onnx").write_bytes(data)
    digest = sha256 or hashlib.sha256(data).hexdigest()
    text = GOOD.replace(
        "    url: http://127.0.0.1:18081\n",
        f'    model: {{path: model.onnx, sha256: "{digest}"}}\n',
    )
    return _write(tmp_path, "model.yaml", text)


def test_validate_accepts_a_pinned_onnx_model(tmp_path: Path, logreg_model: BuiltModel) -> None:
    config = _local_candidate(tmp_path, logreg_model.path.read_bytes())
    result = _run("validate", "--config", str(config))
    assert result.returncode == 0, result.stderr


def test_validate_refuses_a_missing_model_file(tmp_path: Path) -> None:
    text = GOOD.replace(
        "    url: http://127.0.0.1:18081\n",
        '    model: {path: model.onnx, sha256: "' + "0" * 64 + '"}\n',
    )
    result = _run("validate", "--config", str(_write(tmp_path, "model.yaml", text)))
    assert result.returncode == 2
    assert "candidates[0].model" in result.stderr


def test_validate_refuses_a_pickle_and_says_why(tmp_path: Path) -> None:
    import pickle

    config = _local_candidate(tmp_path, pickle.dumps({"weights": [1.0, 2.0]}))
    result = _run("validate", "--config", str(config))
    assert result.returncode == 2
    assert "candidates[0].model" in result.stderr
    assert "pickle" in result.stderr.lower()
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("command", "features", "fits"),
    [
        ("validate", "[a, b, c, d]", True),
        ("validate", "[a, b, c]", False),
        ("validate", "[a, b, c, d, e]", False),
        ("serve", "[a, b, c]", False),
    ],
)
def test_a_model_the_json_protocol_cannot_feed_is_refused_naming_it(
    tmp_path: Path, logreg_model: BuiltModel, command: str, features: str, fits: bool
) -> None:
    # The logistic regression takes [rows, 4]: three or five named fields can never fit.
    config = _local_candidate(tmp_path, logreg_model.path.read_bytes())
    text = "protocol: json\n" + config.read_text() + f"compare: {{features: {features}}}\n"
    config.write_text(text)
    result = _run(command, "--config", str(config))
    if fits:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("candidates[0].model: protocol json: compare.features names ")
    assert "takes 4" in line


def test_serve_refuses_a_hash_mismatch_before_listening(
    tmp_path: Path, logreg_model: BuiltModel
) -> None:
    traffic, admin = free_port(), free_port()
    config = _local_candidate(tmp_path, logreg_model.path.read_bytes(), sha256="ab" * 32)
    text = (
        config.read_text()
        .replace(
            "listen: {host: 127.0.0.1, port: 0}", f"listen: {{host: 127.0.0.1, port: {traffic}}}"
        )
        .replace("admin: {host: 127.0.0.1, port: 0}", f"admin: {{host: 127.0.0.1, port: {admin}}}")
    )
    config.write_text(text)
    result = _run("serve", "--config", str(config))
    assert result.returncode == 2
    assert "sha256" in result.stderr.lower()
    assert not _listening(traffic) and not _listening(admin)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_a_sigterm_while_serve_checks_its_model_stops_it_at_once(tmp_path: Path) -> None:
    # As PID 1 in a container a SIGTERM nobody handles is ignored: the checks of a large
    # model (seconds) must not be a window in which the pod cannot be stopped.
    from tests.support.models import large_model

    model = large_model(tmp_path)
    admin_port = free_port()
    config = GOOD.replace(
        "admin: {host: 127.0.0.1, port: 0}", f"admin: {{host: 127.0.0.1, port: {admin_port}}}"
    )
    config = config.replace(
        "  url: http://127.0.0.1:18080\n",
        f'  model: {{path: {model.path.name}, sha256: "{model.sha256}"}}\n',
        1,
    )
    path = _write(tmp_path, "big.yaml", config)
    proc = subprocess.Popen(
        [str(VENV_BIN / "shadowproxy"), "serve", "--config", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Signalled once the model file is open: the checks are under way.
        deadline = time.monotonic() + 30
        while not _has_open(proc.pid, model.path) and proc.poll() is None:
            assert time.monotonic() < deadline, "the model file was never opened"
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        assert "stop requested before serving" in stderr
        assert time.monotonic() - signalled < 5  # not after a whole start
        with socket.socket() as probe:  # it never listened
            assert probe.connect_ex(("127.0.0.1", admin_port)) != 0
    finally:
        proc.kill()
        proc.wait()


def _has_open(pid: int, path: Path) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


def test_serve_with_a_bad_config_exits_2_without_listening(tmp_path: Path) -> None:
    traffic, admin = free_port(), free_port()
    text = THREE_PROBLEMS.replace("port: 70000", f"port: {traffic}").replace(
        "admin: {host: 127.0.0.1, port: 0}", f"admin: {{host: 127.0.0.1, port: {admin}}}"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowproxy", "serve", "--config",
         str(_write(tmp_path, "bad.yaml", text))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        seen_listening = False
        while proc.poll() is None:
            seen_listening |= _listening(traffic) or _listening(admin)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2
    assert not seen_listening
    assert "candidates[0].timeout_ms" in stderr
    assert "limits.max_bodyy_bytes" in stderr
    assert "serving" not in stderr


def test_serve_exits_2_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        text = GOOD.replace("listen: {host: 127.0.0.1, port: 0}",
                            f"listen: {{host: 127.0.0.1, port: {port}}}")  # fmt: skip
        result = _run("serve", "--config", str(_write(tmp_path, "taken.yaml", text)))
    assert result.returncode == 2
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_module_help_works() -> None:
    result = _run("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout
    assert "validate" in result.stdout


@pytest.mark.parametrize("args", [["serve"], ["validate"], ["no-such-command"], []])
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = _run(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_console_script_is_installed_and_runs(tmp_path: Path) -> None:
    script = VENV_BIN / "shadowproxy"
    assert script.is_file()
    assert os.access(script, os.X_OK)
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0
    assert "validate" in result.stdout
    good = _write(tmp_path, "good.yaml", GOOD)
    result = subprocess.run(
        [str(script), "validate", "--config", str(good)], capture_output=True, text=True,
        timeout=20,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_validate_refuses_an_unreadable_reference(tmp_path: Path) -> None:
    (tmp_path / "reference.json").write_text('{"schema": "not-a-reference"}')
    text = GOOD + "compare: {reference: reference.json}\n"
    result = _run("validate", "--config", str(_write(tmp_path, "ref.yaml", text)))
    assert result.returncode == 2
    assert result.stderr.startswith("compare.reference:")


@pytest.mark.parametrize("command", ["validate", "serve", "report"])
def test_a_missing_reference_exits_2_naming_its_key(tmp_path: Path, command: str) -> None:
    path = _write(tmp_path, "ref.yaml", GOOD + "compare: {reference: reference.json}\n")
    extra = ["--source", str(tmp_path / "s.json"), "--out", str(tmp_path / "out")]
    result = _run(command, "--config", str(path), *(extra if command == "report" else []))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("compare.reference:"), result.stderr
    assert "reference.json: cannot read" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_sampling_key_is_checked_by_validate_and_refused_by_serve(tmp_path: Path) -> None:
    text = GOOD + "sampling: {key_file: sampling.key}\n"  # relative to the config's folder
    path = _write(tmp_path, "keyed.yaml", text)
    result = _run("validate", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("sampling.key_file: cannot read")
    (tmp_path / "sampling.key").write_bytes(b"too-short\n")
    for command in ("validate", "serve"):
        result = _run(command, "--config", str(path))
        assert result.returncode == 2, (command, result.stderr)
        assert "sampling.key_file:" in result.stderr and "at least 16" in result.stderr
    (tmp_path / "sampling.key").write_bytes(b"a-secret-the-replicas-share\n")
    assert _run("validate", "--config", str(path)).returncode == 0


def test_reference_builds_from_a_csv_and_validate_accepts_it(tmp_path: Path) -> None:
    rows = ["age,balance,plan"] + [f"{20 + i % 50},{i * 10.5},{'ab'[i % 2]}" for i in range(200)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    config = _write(tmp_path, "c.yaml", GOOD + "compare: {features: [age, balance, plan]}\n")
    out = tmp_path / "reference.json"
    result = _run("reference", "--config", str(config), "--data", str(tmp_path / "train.csv"),
                  "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "200 rows" in result.stdout and out.exists()
    text = GOOD + "compare: {features: [age, balance, plan], reference: reference.json}\n"
    assert _run("validate", "--config", str(_write(tmp_path, "v.yaml", text))).returncode == 0
    bad = _run("reference", "--config", str(config), "--data", str(tmp_path / "nope.csv"),
               "--out", str(out))  # fmt: skip
    assert bad.returncode == 2 and "--data" in bad.stderr


def test_reference_builds_the_file_its_config_names_before_it_exists(tmp_path: Path) -> None:
    # The usual order: write the config that names the reference, then build it.
    (tmp_path / "train.csv").write_text("x,y\n" + "".join(f"{i},{i % 3}\n" for i in range(50)))
    text = GOOD + "compare: {features: [x, y], reference: reference.json}\n"
    config = _write(tmp_path, "c.yaml", text)
    assert _run("validate", "--config", str(config)).returncode == 2  # not built yet
    result = _run("reference", "--config", str(config), "--data", str(tmp_path / "train.csv"),
                  "--out", str(tmp_path / "reference.json"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert _run("validate", "--config", str(config)).returncode == 0


def _reference(tmp_path: Path, data: Path, out: Path, *extra: str, features: str = "[age, b]"
               ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    config = _write(tmp_path, "ref.yaml", GOOD + f"compare: {{features: {features}}}\n")
    return _run("reference", "--config", str(config), "--data", str(data), "--out", str(out),
                *extra)  # fmt: skip


def _one_clean_line(result: subprocess.CompletedProcess[str], prefix: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr
    return lines[0]


@pytest.mark.parametrize("where", ["missing-folder", "directory"])
def test_reference_out_that_cannot_be_written_exits_2_naming_it(tmp_path: Path, where: str) -> None:
    data = tmp_path / "train.csv"
    data.write_text("age,b\n1,2\n3,4\n")
    out = tmp_path / "nope" / "r.json" if where == "missing-folder" else tmp_path
    line = _one_clean_line(_reference(tmp_path, data, out), "--out:")
    assert str(out) in line
    reason = "folder" if where == "missing-folder" else "directory"
    assert reason in line, line


def test_reference_refuses_an_npy_header_promising_more_than_the_file(tmp_path: Path) -> None:
    import numpy as np

    data = tmp_path / "big.npy"
    with data.open("wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f8", "fortran_order": False, "shape": (100_000_000_000, 3)}
        )
        fh.write(b"\0" * 64)
    line = _one_clean_line(
        _reference(tmp_path, data, tmp_path / "r.json", features="[a, b, c]"), "--data:"
    )
    assert str(data) in line


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("latin1.csv", "age,b\nzürich,2\n".encode("latin-1"), "not UTF-8"),
        ("quote.csv", b'age,b\n1,"2\n3,4\n', "malformed CSV"),
        ("header.csv", b'"age,b\n1,2\n3,4\n', "malformed CSV"),
        ("cut.npy", None, "cut short"),
    ],
)
def test_reference_data_errors_name_the_file(
    tmp_path: Path, name: str, content: bytes | None, says: str
) -> None:
    data = tmp_path / name
    if content is None:
        import numpy as np

        np.save(data, np.zeros((100, 2)))
        data.write_bytes(data.read_bytes()[:-50])
    else:
        data.write_bytes(content)
    line = _one_clean_line(_reference(tmp_path, data, tmp_path / "r.json"), "--data:")
    assert str(data) in line and says in line, line


def test_reference_reads_a_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    data = tmp_path / "excel.csv"
    data.write_bytes(b"\xef\xbb\xbfage,b\r\n1,2\r\n3,4\r\n")
    result = _reference(tmp_path, data, tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert "features age, b" in result.stdout


@pytest.mark.parametrize("bins", ["0", "1", "100000000000"])
def test_reference_bad_bins_are_reported_as_bins(tmp_path: Path, bins: str) -> None:
    data = tmp_path / "train.csv"
    data.write_text("age,b\n1,x\n3,y\n")  # b is categorical: bins are still checked
    line = _one_clean_line(
        _reference(tmp_path, data, tmp_path / "r.json", "--bins", bins), "--bins:"
    )
    assert bins in line
