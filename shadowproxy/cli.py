"""Command line: ``shadowproxy serve | validate | report | reference | replay | demo``.

Exit codes follow the contract: 0 success, 2 invalid config or input (one line per
problem, each naming the dotted key or argument); ``report`` adds 1 reject and 3
insufficient data. An unexpected error exits 70 with its traceback, so that no crash can
be read as a decision.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shadowproxy import __version__
from shadowproxy.config import load_config
from shadowproxy.config.model import Config
from shadowproxy.errors import ConfigError, ModelError, Problem, ShadowProxyError, StateError

if TYPE_CHECKING:
    from shadowproxy.compare.reference import Reference

EXIT_OK = 0
EXIT_INVALID = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE (sysexits.h): an unexpected error, never a decision

log = logging.getLogger("shadowproxy")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shadowproxy",
        description="Shadow-test ML models: proxy to production, mirror to candidates, compare.",
    )
    parser.add_argument("--version", action="version", version=f"shadowproxy {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy until SIGTERM/SIGINT, then drain")
    serve.add_argument("--config", required=True, type=Path)
    validate = sub.add_parser("validate", help="check a config without serving")
    validate.add_argument("--config", required=True, type=Path)
    replay = sub.add_parser("replay", help="re-send the requests of a pair log to a service")
    replay.add_argument("--log", required=True, type=Path, action="append", dest="logs")
    replay.add_argument("--target", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    replay.add_argument("--concurrency", type=int, default=8)
    report = sub.add_parser("report", help="evaluate the promotion gates and write the report")
    report.add_argument("--config", required=True, type=Path)
    report.add_argument(
        "--source", required=True, action="append", dest="sources",
        help="snapshot file, admin URL (http://host:9090), every replica behind a DNS name "
        "(dns+http://headless-service:9090) or prometheus+http://host:9090",
    )  # fmt: skip
    report.add_argument("--out", required=True, type=Path)
    report.add_argument("--candidate", help="report on this candidate only")
    reference = sub.add_parser("reference", help="build the input reference from training data")
    reference.add_argument("--config", required=True, type=Path)
    reference.add_argument("--data", required=True, type=Path, help="CSV with a header, or .npy")
    reference.add_argument("--out", required=True, type=Path)
    reference.add_argument("--bins", type=int, default=10)
    demo = sub.add_parser("demo", help="run production and candidates locally and write a report")
    from shadowproxy.demo import add_arguments

    add_arguments(demo)
    return parser


@dataclass(frozen=True)
class CheckedFiles:
    """What the files a config names held when they were checked.

    A command uses these rather than reading the files again, which could give something
    else than what was checked.
    """

    reference: Reference | None = None
    sampling_key: bytes | None = None


def check_files(config: Config, *, reference: bool = True) -> tuple[CheckedFiles, list[Problem]]:
    """Read and check the files a config names: every local model (hash, format,
    operators), the input reference (unless ``reference`` is false) and the sampling key;
    one problem per bad file."""
    from shadowproxy.config.sampling_key import read_sampling_key
    from shadowproxy.models.check import check_model
    from shadowproxy.protocols import protocol_for
    from shadowproxy.runtime import local_models

    problems = []
    protocol = protocol_for(config)
    for spec in local_models(config):
        try:
            model = check_model(spec.model, spec.where)
        except ModelError as exc:
            # The model's errors already start with the key they are about.
            message = str(exc).removeprefix(f"{spec.where}: ")
            problems.append(Problem(spec.where, message))
            continue
        unfit = protocol.model_problem(model.signature.inputs)
        if unfit is not None:
            problems.append(Problem(spec.where, f"protocol {config.protocol}: {unfit}"))
    loaded_reference = None
    if reference and config.compare.reference is not None:
        from shadowproxy.compare.reference import Reference

        try:
            loaded_reference = Reference.load(config.compare.reference)
        except StateError as exc:
            problems.append(Problem("compare.reference", str(exc)))
    key = None
    if config.sampling.key_file is not None:
        try:
            key = read_sampling_key(config.sampling.key_file)
        except ConfigError as exc:
            problems.extend(exc.problems)
    return CheckedFiles(loaded_reference, key), problems


def _load(path: Path, *, reference: bool = True) -> tuple[Config, CheckedFiles] | None:
    """The config at ``path`` and its files, checked; None (every problem printed) when
    anything is wrong."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None
    files, problems = check_files(config, reference=reference)
    for problem in problems:
        print(problem, file=sys.stderr)
    return None if problems else (config, files)


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if loaded is None:
        return EXIT_INVALID
    config = loaded[0]
    targets = len(config.shadow_targets())
    print(f"{args.config}: valid ({targets} shadow target{'s' if targets != 1 else ''})")
    return EXIT_OK


class _StoppedBeforeServing(BaseException):
    """SIGTERM or SIGINT while ``serve`` checks its files, before the runtime's handlers.

    A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way out
    of the checks holds it up.
    """


def _stop_before_serving(signum: int, frame: object) -> None:
    raise _StoppedBeforeServing(signum)


def cmd_serve(args: argparse.Namespace) -> int:
    from shadowproxy.runtime import Runtime, install_uvloop

    # Checking the files (hashing a large model, the ONNX checker) takes seconds. As PID 1
    # in a container a SIGTERM meanwhile would be ignored, and the pod wait for its SIGKILL;
    # these handlers stop the start at once, until the runtime installs its own.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_before_serving)
    try:
        loaded = _load(args.config)
        if loaded is None:
            return EXIT_INVALID
        config = loaded[0]  # the runtime reads the files again at start and says if they changed
        install_uvloop()

        async def run() -> None:
            await Runtime(config).serve_forever()

        asyncio.run(run())
    except _StoppedBeforeServing:
        print("stop requested before serving: nothing to drain", file=sys.stderr)
        return EXIT_OK
    except ModelError as exc:
        print(f"model refused: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except StateError as exc:
        print(f"comparator state refused: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except ConfigError as exc:  # a file the config names changed after it was checked
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"cannot listen: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    """Exit 0 when every request got an answer, 1 when some failed in transit, 2 on bad input."""
    from shadowproxy.config.loader import redact_url
    from shadowproxy.pairing.log import PairLogError, ReadStats, check_pair_logs, read_pair_log
    from shadowproxy.pairing.replay import replay, target_problem

    if args.concurrency < 1:
        print("--concurrency: must be >= 1", file=sys.stderr)
        return EXIT_INVALID
    # Both checked before anything is sent: a bad one would otherwise show up as requests
    # failed in transit (exit 1), or as an empty replay that exits 0.
    problem = target_problem(args.target)
    if problem is not None:
        print(f"--target: {problem}", file=sys.stderr)
        return EXIT_INVALID
    stats = ReadStats()
    try:
        check_pair_logs(args.logs)
        summary = asyncio.run(
            replay(read_pair_log(args.logs, stats=stats), args.target,
                   concurrency=args.concurrency)
        )  # fmt: skip
    except (FileNotFoundError, PairLogError) as exc:
        print(f"--log: {exc}", file=sys.stderr)
        return EXIT_INVALID
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(summary.statuses.items()))
    print(
        f"replayed {summary.sent} requests to {redact_url(args.target)} "
        f"({statuses or 'no answers'}); "
        f"skipped {summary.skipped_truncated} with a truncated body; "
        f"{stats.torn + stats.invalid} unreadable lines"
    )
    for error, n in summary.errors.items():
        print(f"  {n} failed: {error}", file=sys.stderr)
    return 1 if summary.failed else EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """Exit 0 promote, 1 reject, 3 insufficient data, 2 usage, config or source errors."""
    from shadowproxy.compare.binned import BinnedEvaluator
    from shadowproxy.compare.comparator import reservoir_key_from
    from shadowproxy.compare.decide import report_for
    from shadowproxy.compare.sources import read_sources
    from shadowproxy.report.document import exit_code
    from shadowproxy.report.writer import write_report

    loaded = _load(args.config)
    if loaded is None:
        return EXIT_INVALID
    config, files = loaded
    reference = files.reference
    key = None if files.sampling_key is None else reservoir_key_from(files.sampling_key)
    try:
        merged = read_sources(args.sources, config, reference, reservoir_key=key)
    except StateError as exc:
        print(f"--source: {exc}", file=sys.stderr)
        return EXIT_INVALID
    targets = merged.targets
    candidates = sorted(n for n, t in targets.items() if t.role == "candidate")
    if args.candidate is not None and args.candidate not in candidates:
        print(f"--candidate: no candidate {args.candidate!r} in the sources "
              f"({', '.join(candidates)})", file=sys.stderr)  # fmt: skip
        return EXIT_INVALID
    # Prometheus holds the exported part of the state: its own evaluator says what that
    # decides and marks the rest as needing snapshots.
    evaluator = None
    if merged.kind == "prometheus":
        evaluator = BinnedEvaluator(config.promotion, config.compare.seed)
    report = report_for(config, targets, reference, only=args.candidate, evaluator=evaluator)
    report["source"] = merged.describe()
    try:
        paths = write_report(report, args.out)
    except OSError as exc:
        print(f"--out: cannot write the report to {args.out}: {exc.strerror or exc}",
              file=sys.stderr)  # fmt: skip
        return EXIT_INVALID
    for candidate in report["candidates"]:
        deciding = next((g for g in candidate["gates"] if g["passed"] is False), None)
        if deciding is None:
            deciding = next((g for g in candidate["gates"] if g["passed"] is None), None)
        reason = "" if deciding is None else f"  ({deciding['reason']})"
        print(f"{candidate['name']}: {candidate['decision']}{reason}")
    print(f"source: {merged.kind}, {len(merged.origins)} merged")
    print(f"decision: {report['decision']}; report: {paths[-1]}")
    return exit_code(report["decision"])


def cmd_reference(args: argparse.Namespace) -> int:
    """Exit 0 when the reference was written, 2 on a bad config, argument or data file."""
    from shadowproxy.compare.reference import build_reference, check_bins, check_destination

    def cannot_write(exc: OSError) -> int:
        print(f"--out: cannot write the reference to {args.out}: {exc.strerror or exc}",
              file=sys.stderr)  # fmt: skip
        return EXIT_INVALID

    # The reference the config names may be the very file this command is about to write.
    loaded = _load(args.config, reference=False)
    if loaded is None:
        return EXIT_INVALID
    features = loaded[0].compare.features or None
    try:
        check_bins(args.bins)
    except ValueError as exc:
        print(f"--bins: {exc}", file=sys.stderr)
        return EXIT_INVALID
    # Before the data is read, which may take a while; the write checks again.
    try:
        check_destination(args.out)
    except OSError as exc:
        return cannot_write(exc)
    try:
        reference = build_reference(args.data, features, bins=args.bins)
    except (StateError, ValueError, OSError) as exc:
        print(f"--data: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        reference.save(args.out)
    except OSError as exc:
        return cannot_write(exc)
    names = ", ".join(f.name for f in reference.features)
    print(f"reference of {reference.rows} rows, features {names}: {args.out}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Exit 0 when the demo ran, whatever its decisions."""
    from shadowproxy.demo import run

    try:
        return run(args)
    except KeyboardInterrupt:
        print("demo interrupted; every process it started was stopped", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    commands = {
        "serve": cmd_serve,
        "validate": cmd_validate,
        "replay": cmd_replay,
        "report": cmd_report,
        "reference": cmd_reference,
        "demo": cmd_demo,
    }
    try:
        return commands[args.command](args)
    except ShadowProxyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except Exception:
        # A defect, not a verdict: Python's own exit code 1 would read as "reject" to a
        # pipeline gating on ``report``, so a crash gets a code of its own.
        log.exception("internal error in %s", args.command)
        return EXIT_INTERNAL
