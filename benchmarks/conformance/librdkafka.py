"""librdkafka's own test suite against ``streamhouse serve``: ``make conformance``.

    python -m benchmarks.conformance.librdkafka [--source DIR] [--only 0001,0055]

Builds librdkafka 2.0.2's test runner from Debian's source package (``apt-get source
librdkafka``; see ``fetch_librdkafka.sh``), then runs the selection of
``selection.toml`` one test number at a time, each against a fresh ``serve`` with a fresh data
directory, and writes a table (test, result, seconds, first error) to
``benchmarks/results/conformance_librdkafka.md`` and the same as JSON beside it.

A test number's result is librdkafka's own verdict for each of its tests (PASSED, FAILED,
SKIPPED by the suite itself); a runner that hangs past ``test_timeout_s`` is TIMEOUT.
Not part of ``make test``: the whole selection takes about 45 minutes (0113 alone 15).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.log.kafka import _free_port, _start_server

log = logging.getLogger("conformance")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SELECTION = HERE / "selection.toml"
RESULTS = ROOT / "benchmarks" / "results" / "conformance_librdkafka"
DEFAULT_SOURCE = ROOT / "build" / "conformance" / "librdkafka-2.0.2"
CONFIGURE = ["--no-download", "--disable-gssapi", "--disable-lz4-ext", "--disable-curl"]
"""librdkafka's own configure: zstd (libzstd-dev), zlib and OpenSSL from Debian, its bundled
LZ4; no SASL/GSSAPI and no libcurl (the tests that need them are left out)."""

_ANSI = re.compile(r"\x1b\[[0-9;]*m|\x1b\(B")
_VERDICT = re.compile(r"^\|\s*(\d{4}_\w+)\s*\|\s*(PASSED|FAILED|SKIPPED|RUNNING)\s*\|")
_WAITING = re.compile(r"test\(s\) running|postponing")  # the runner's once-a-second lines
_FAILURE = re.compile(r"(TEST FAILURE|Test assertion failed|### Test .* failed|FAIL[: ])")


@dataclass
class Outcome:
    number: str
    test: str
    result: str
    seconds: float
    first_error: str


def ensure_runner(source: Path) -> Path:
    """The built ``tests/test-runner`` of ``source``, fetching, patching and building what is
    missing."""
    runner = source / "tests" / "test-runner"
    if not source.exists():
        subprocess.run(["bash", str(HERE / "fetch_librdkafka.sh"), str(source.parent)], check=True)
    patched = apply_patches(source)
    if runner.exists() and not patched:
        return runner
    jobs = f"-j{os.cpu_count() or 2}"
    if not (source / "Makefile.config").exists():
        subprocess.run(["./configure", *CONFIGURE], cwd=source, check=True)
    subprocess.run(["make", jobs, "libs"], cwd=source, check=True)
    subprocess.run(["make", jobs, "build"], cwd=source / "tests", check=True)
    return runner


def apply_patches(source: Path) -> bool:
    """Apply each of ``patches/*.patch`` not applied yet (a stamp file each); whether any was.

    They are fixes librdkafka made after 2.0.2 to the client itself, without which a test
    hangs in the client whatever the broker answers (each patch says which)."""
    applied = False
    for patch in sorted((HERE / "patches").glob("*.patch")):
        stamp = source / f".applied-{patch.stem}"
        if not stamp.exists():
            subprocess.run(["patch", "-p1", "--forward", "-i", str(patch)], cwd=source, check=True)
            stamp.touch()
            applied = True
    return applied


def broker_tests(source: Path) -> set[str]:
    """Numbers of the suite's tests that need a broker (neither TEST_F_LOCAL nor MANUAL)."""
    text = (source / "tests" / "test.c").read_text()
    table = text[text.index("struct test tests[] = {") :]
    table = table[: table.index("\n};")]
    numbers = set()
    for block in re.split(r"(?=_TEST\()", table)[1:]:
        name, flags = re.match(r"_TEST\((\w+),\s*([^,)]*)", block).groups()  # type: ignore[union-attr]
        if "LOCAL" not in flags and "MANUAL" not in flags:
            numbers.add(name[:4])
    return numbers


def check_selection(selection: dict, source: Path) -> None:
    run, left_out = set(selection["run"]), set(selection["left_out"])
    if run & left_out:
        raise SystemExit(f"both run and left out: {sorted(run & left_out)}")
    unlisted = broker_tests(source) - run - left_out
    if unlisted:
        raise SystemExit(f"tests neither run nor left out (with a reason): {sorted(unlisted)}")


def run_number(
    runner: Path, number: str, selection: dict, scratch: Path
) -> tuple[list[Outcome], str]:
    """Run one test number in each of its scenarios; its outcomes and the runner's output.

    A test skipped in one scenario and run in another keeps the verdict of the run."""
    by_test: dict[str, Outcome] = {}
    outputs = []
    for scenario in selection["scenarios"].get(number, ["default"]):
        found, output = _run_scenario(runner, number, scenario, selection, scratch)
        outputs.append(output)
        for outcome in found:
            if outcome.test not in by_test or by_test[outcome.test].result == "SKIPPED":
                by_test[outcome.test] = outcome
    output = "\n".join(outputs)
    outcomes = [as_kafka_4(o, output, selection) for o in by_test.values()]
    return sorted(outcomes, key=lambda o: o.test), output


AS_KAFKA_4 = "FAILED (Kafka 4.0 too)"
"""The result of a test that failed where ``[as_kafka_4]`` says a Kafka 4.0 broker fails it."""


def as_kafka_4(outcome: Outcome, output: str, selection: dict) -> Outcome:
    """``outcome`` as AS_KAFKA_4 if it failed in the subtest ``[as_kafka_4]`` names for its
    number: the last line before the first failure that matches ``progress`` must match
    ``subtest``. Any other failure stays a failure."""
    known = selection.get("as_kafka_4", {}).get(outcome.number)
    if known is None or outcome.result not in ("FAILED", "ERROR"):
        return outcome
    before = output.split("\n### Test", 1)[0]
    reached = re.findall(known["progress"], before)
    if reached and re.search(known["subtest"], reached[-1]):
        return Outcome(outcome.number, outcome.test, AS_KAFKA_4, outcome.seconds,
                       f"{outcome.first_error} [in {reached[-1]}]")  # fmt: skip
    return outcome


def _run_scenario(
    runner: Path, number: str, scenario: str, selection: dict, scratch: Path
) -> tuple[list[Outcome], str]:
    noautocreate = scenario == "noautocreate"
    data = scratch / f"data-{number}"
    port = _free_port()
    env = {f"STREAMHOUSE_{name.upper()}": value for name, value in selection["serve"].items()}
    if noautocreate:
        env["STREAMHOUSE_AUTO_CREATE_TOPICS"] = "false"
    server = _start_server(data, port, env=env, log_path=scratch / f"serve-{number}.log")
    conf = scratch / f"test-{number}.conf"
    conf.write_text(
        f"bootstrap.servers=127.0.0.1:{port}\n"
        f"test.timeout.multiplier={selection['timeout_multiplier']}\n"
    )
    tests = runner.parent
    env = {
        **os.environ,
        "TESTS": number,
        "TEST_KAFKA_VERSION": selection["broker_version"],
        "RDKAFKA_TEST_CONF": str(conf),
        "LD_LIBRARY_PATH": f"{tests.parent / 'src'}:{tests.parent / 'src-cpp'}",
    }
    env["TEST_SCENARIO"] = scenario
    env["KAFKA_PATH"] = str(HERE / "kafka")  # kafka-topics.sh through the admin API
    env["BROKERS"] = f"127.0.0.1:{port}"
    env["CONFORMANCE_PYTHON"] = sys.executable
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    started = time.monotonic()
    try:
        done = subprocess.run(
            [str(runner), "-L", "-p1"],
            cwd=tests,
            env=env,
            capture_output=True,
            timeout=_timeout_s(number, selection),
        )
        output = _ANSI.sub("", (done.stdout + done.stderr).decode(errors="replace"))
        timed_out = False
    except subprocess.TimeoutExpired as exc:
        output = _ANSI.sub(
            "", ((exc.stdout or b"") + (exc.stderr or b"")).decode("utf-8", "replace")
        )
        timed_out = True
    finally:
        seconds = round(time.monotonic() - started, 1)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(data, ignore_errors=True)
    first_error = first_failure(output)
    verdicts: dict[str, str] = {}
    for line in output.splitlines():
        found = _VERDICT.match(line.strip())
        if found:
            verdicts[found.group(1)] = found.group(2)
    if timed_out:
        verdicts = {name: "TIMEOUT" for name in verdicts} or {number: "TIMEOUT"}
        first_error = first_error or f"no verdict within {_timeout_s(number, selection)} s"
    if not verdicts:
        verdicts = {number: "ERROR"}
        first_error = (
            first_error or output.strip().splitlines()[-1][:300] if output else "no output"
        )
    return [
        Outcome(number, name, result, seconds, first_error if result != "PASSED" else "")
        for name, result in sorted(verdicts.items())
    ], output


def _timeout_s(number: str, selection: dict) -> float:
    """How long the runner gives one test number: ``test_timeout_s`` unless ``[timeouts]``
    names it."""
    return selection.get("timeouts", {}).get(number, selection["test_timeout_s"])


def first_failure(output: str) -> str:
    """The suite's first failure: the test and place (``### Test "..." failed at ...``) and the
    message on the line after it; else the first line that says a test failed."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("### Test"):
            where = line.strip("# ").split(" at ", 2)
            message = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return f"{' at '.join(where[:2])}: {message}"[:300]
    return next((line.strip()[:300] for line in lines if _FAILURE.search(line)), "")


def write_table(outcomes: list[Outcome], selection: dict, started: str, label: str) -> None:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.result] = counts.get(outcome.result, 0) + 1
    summary = ", ".join(f"{n} {result.lower()}" for result, n in sorted(counts.items()))
    lines = [
        f"# librdkafka {selection['librdkafka']} test suite against `streamhouse serve`",
        "",
        f"Run {started}{f' on {label}' if label else ''} ({os.cpu_count()} CPUs),"
        f" one test number at a time against a fresh `serve`: {summary}.",
        "Selection and the reasons for each test left out: `benchmarks/conformance/selection.toml`.",
        "",
        "| test | result | s | first error |",
        "|---|---|---:|---|",
    ]
    for o in outcomes:
        error = o.first_error.replace("|", "\\|")
        lines.append(f"| {o.test} | {o.result} | {o.seconds:g} | {error} |")
    lines += ["", "Left out:", ""]
    lines += [f"- {number}: {why}" for number, why in sorted(selection["left_out"].items())]
    lines += ["", f"{AS_KAFKA_4}: a Kafka 4.0 broker fails the same subtest.", ""]
    lines += [
        f"- {number}: {known['reason']}"
        for number, known in sorted(selection.get("as_kafka_4", {}).items())
    ]
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n" + _notes())
    RESULTS.with_suffix(".json").write_text(
        json.dumps({"started": started, "outcomes": [asdict(o) for o in outcomes]}, indent=1) + "\n"
    )


NOTES = "What the failures wait on"
"""The heading of the hand-written notes under the table, kept when a re-run rewrites it."""


def _notes() -> str:
    """The notes under the table written so far (from their heading on), to keep."""
    table = RESULTS.with_suffix(".md")
    text = table.read_text() if table.exists() else ""
    at = text.find(f"\n{NOTES}")
    return text[at:] if at >= 0 else ""


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=Path(os.environ.get("LIBRDKAFKA_SOURCE", DEFAULT_SOURCE)),
        help="librdkafka's unpacked source (fetched and built there if missing)",
    )
    parser.add_argument("--only", default="", help="comma-separated test numbers")
    parser.add_argument("--label", default="", help="what was run (e.g. a commit), for the table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    signal.signal(signal.SIGTERM, _stop)  # so that the running test's serve is stopped too
    selection = tomllib.loads(SELECTION.read_text())
    runner = ensure_runner(args.source.resolve())
    check_selection(selection, args.source)
    numbers = [n for n in selection["run"] if not args.only or n in args.only.split(",")]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    started += f" (load {os.getloadavg()[0]:.1f} at the start)"
    outcomes: list[Outcome] = []
    if args.only and RESULTS.with_suffix(".json").exists():  # re-run some: keep the others
        earlier = json.loads(RESULTS.with_suffix(".json").read_text())
        started = f"{earlier['started']} (re-run {started}: {args.only})"
        outcomes = [Outcome(**o) for o in earlier["outcomes"] if o["number"] not in numbers]
    with tempfile.TemporaryDirectory(prefix="conformance-") as tmp:
        scratch = Path(tmp)
        for number in numbers:
            found, output = run_number(runner, number, selection, scratch)
            outcomes = sorted([*outcomes, *found], key=lambda o: o.test)
            (RESULTS.parent / "conformance_logs").mkdir(exist_ok=True)
            saved = RESULTS.parent / "conformance_logs" / f"{number}.txt"
            if any(o.result not in ("PASSED", "SKIPPED") for o in found):  # AS_KAFKA_4 too
                kept = [line for line in output.splitlines() if not _WAITING.search(line)]
                saved.write_text("\n".join(kept)[-30000:])
            else:
                saved.unlink(missing_ok=True)  # an earlier failure's log no longer applies
            for o in found:
                log.info("%s %s %.0f s %s", o.test, o.result, o.seconds, o.first_error)
            write_table(outcomes, selection, started, args.label)


if __name__ == "__main__":
    main()
