"""The Nexmark results as a Markdown table and a PNG bar chart (no plotting library needed).

The chart is drawn into a numpy RGB array (bars, grid lines, and text in a built-in 5x7 pixel
font) and written as a PNG with :mod:`zlib`: matplotlib is not a dependency of StreamHouse.
``python -m benchmarks.nexmark.report results.json`` renders both again from a results file.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

SERIES = (  # (result key, legend label, RGB)
    ("bounded", "StreamHouse bounded", (31, 119, 180)),
    ("continuous", "StreamHouse continuous", (23, 190, 207)),
    ("continuous_p2", "StreamHouse cont. p=2", (214, 39, 40)),
    ("duckdb_json", "DuckDB from JSON", (255, 127, 14)),
    ("flink_p1", "PyFlink p=1", (44, 160, 44)),
    ("flink_p2", "PyFlink p=2", (148, 103, 189)),
)


def _rate(part: dict[str, Any] | None) -> int | None:
    if not part or part.get("status") != "ok":
        return None
    return part.get("events_per_second")


def _cell(part: dict[str, Any] | None) -> str:
    if part is None:
        return "-"
    if part.get("status") != "ok":
        status = str(part.get("status", "-"))
        return "n/a" if status.startswith("cannot run") else status
    return f"{part['events_per_second']:,}"


def _with_cpu(part: dict[str, Any] | None) -> str:
    cell = _cell(part)
    if part and part.get("status") == "ok" and part.get("cpu_seconds") is not None:
        cell += f" ({part['cpu_seconds']:.1f})"
    return cell


def carry_peers(results: dict[str, Any], earlier: dict[str, Any], path: Path) -> None:
    """PyFlink's figures from ``earlier`` (a run over the same generated events), marked with
    when and by which command they were measured."""
    if earlier.get("config") != results.get("config"):
        raise SystemExit(f"{path}: measured over other data (its config differs)")
    results["flink"] = {
        **earlier.get("flink", {}),
        "carried_from": {
            "file": str(path),
            "command": earlier.get("command"),
            "started": earlier.get("started"),
            "cpu": earlier.get("machine", {}).get("cpu"),
        },
    }
    for name, entry in results["queries"].items():
        for key in ("flink_p1", "flink_p2"):
            if key in earlier.get("queries", {}).get(name, {}):
                entry[key] = earlier["queries"][name][key]


def _rss(part: dict[str, Any]) -> str:
    return f"{part['peak_rss_mb']:,.0f}" if part.get("status") == "ok" else "-"


def _p2_cells(entry: dict[str, Any]) -> str:
    """The columns of the continuous run at parallelism 2: events/s (CPU seconds of the
    launcher and its tasks), their peak memory summed, the ratio to PyFlink at 2, and PyFlink's
    JVM CPU seconds over StreamHouse's (less moved by other work on a shared machine)."""
    part = entry.get("continuous_p2") or {}
    flink_part = entry.get("flink_p2") or {}
    rate, flink = _rate(part), _rate(flink_part)
    ratio = f"{rate / flink:.2f}x" if rate and flink else "-"
    ours, theirs = part.get("cpu_seconds"), flink_part.get("jvm_cpu_seconds")
    cpu = f"{theirs / ours:.2f}x" if rate and flink and ours and theirs else "-"
    return f" {_with_cpu(part or None)} | {_rss(part)} | {ratio} | {cpu} |"


def markdown_table(results: dict[str, Any]) -> str:
    """One row per query: events/s of each system, CPU seconds, peak memory, the ratios (and,
    when measured, the continuous run at parallelism 2 next to PyFlink's at 2)."""
    queries = results.get("queries", {})
    p2 = any("continuous_p2" in entry for entry in queries.values())
    lines = [
        "| query | events | SH bounded ev/s (CPU s) | SH continuous ev/s (CPU s) "
        "| cont. peak RSS MB | DuckDB Arrow ev/s | DuckDB JSON ev/s | PyFlink p1 ev/s "
        "| PyFlink p2 ev/s | cont. / best PyFlink | DuckDB JSON / best SH | load | match |"
        + (
            " SH cont. p2 ev/s (CPU s, tasks summed) | cont. p2 peak RSS MB (summed)"
            " | cont. p2 / PyFlink p2 | PyFlink p2 CPU s / cont. p2 CPU s |"
            if p2
            else ""
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        + ("---:|---:|---:|---:|" if p2 else ""),
    ]
    for name, entry in queries.items():
        cont = entry.get("continuous") or {}
        best_sh = max((r for r in (_rate(entry.get("bounded")), _rate(cont)) if r), default=None)
        flink = [r for r in (_rate(entry.get("flink_p1")), _rate(entry.get("flink_p2"))) if r]
        vs_flink = f"{_rate(cont) / max(flink):.2f}x" if flink and _rate(cont) else "-"
        duck = _rate(entry.get("duckdb_json"))
        vs_duck = f"{duck / best_sh:.1f}x" if duck and best_sh else "-"
        loads = [
            part.get(key)
            for part in (entry.get("bounded") or {}, cont)
            for key in ("load_before", "load_after")
        ]
        loads = [x for x in loads if x is not None]
        rss = _rss(cont)
        match = entry.get("match", "-")
        for key in ("match_continuous_rows", "match_continuous_p2_rows"):
            if entry.get(key) is not None:
                match = f"{match} / {entry[key]}"
        lines.append(
            f"| {name} | {entry['events']:,} | {_with_cpu(entry.get('bounded'))} "
            f"| {_with_cpu(cont or None)} | {rss} "
            f"| {_cell(entry.get('duckdb_arrow'))} | {_cell(entry.get('duckdb_json'))} "
            f"| {_cell(entry.get('flink_p1'))} | {_cell(entry.get('flink_p2'))} "
            f"| {vs_flink} | {vs_duck} "
            f"| {f'{min(loads):.1f}-{max(loads):.1f}' if loads else '-'} | {match} |"
            + (_p2_cells(entry) if p2 else "")
        )
    carried = results.get("flink", {}).get("carried_from")
    if carried:
        lines += [
            "",
            f"PyFlink figures: measured over the same events by `{carried['command']}`, "
            f"started {carried['started']} on {carried.get('cpu') or 'an unrecorded CPU'} "
            "(not rerun in this run).",
        ]
    return "\n".join(lines) + "\n"


# -- PNG ---------------------------------------------------------------------------------------

_GLYPHS = {
    "A": "0E 11 11 1F 11 11 11", "B": "1E 11 11 1E 11 11 1E", "C": "0E 11 10 10 10 11 0E",
    "D": "1C 12 11 11 11 12 1C", "E": "1F 10 10 1E 10 10 1F", "F": "1F 10 10 1E 10 10 10",
    "G": "0E 11 10 17 11 11 0F", "H": "11 11 11 1F 11 11 11", "I": "0E 04 04 04 04 04 0E",
    "J": "07 02 02 02 02 12 0C", "K": "11 12 14 18 14 12 11", "L": "10 10 10 10 10 10 1F",
    "M": "11 1B 15 15 11 11 11", "N": "11 11 19 15 13 11 11", "O": "0E 11 11 11 11 11 0E",
    "P": "1E 11 11 1E 10 10 10", "Q": "0E 11 11 11 15 12 0D", "R": "1E 11 11 1E 14 12 11",
    "S": "0F 10 10 0E 01 01 1E", "T": "1F 04 04 04 04 04 04", "U": "11 11 11 11 11 11 0E",
    "V": "11 11 11 11 11 0A 04", "W": "11 11 11 15 15 15 0A", "X": "11 11 0A 04 0A 11 11",
    "Y": "11 11 11 0A 04 04 04", "Z": "1F 01 02 04 08 10 1F", "0": "0E 11 13 15 19 11 0E",
    "1": "04 0C 04 04 04 04 0E", "2": "0E 11 01 02 04 08 1F", "3": "1F 02 04 02 01 11 0E",
    "4": "02 06 0A 12 1F 02 02", "5": "1F 10 1E 01 01 11 0E", "6": "06 08 10 1E 11 11 0E",
    "7": "1F 01 02 04 08 08 08", "8": "0E 11 11 0E 11 11 0E", "9": "0E 11 11 0F 01 02 0C",
    " ": "00 00 00 00 00 00 00", ".": "00 00 00 00 00 0C 0C", ",": "00 00 00 00 0C 04 08",
    "-": "00 00 00 1F 00 00 00", "/": "00 01 02 04 08 10 00", "(": "02 04 08 08 08 04 02",
    ")": "08 04 02 02 02 04 08", ":": "00 0C 0C 00 0C 0C 00", "_": "00 00 00 00 00 00 1F",
    "=": "00 00 1F 00 1F 00 00", "+": "00 04 04 1F 04 04 00", "%": "18 19 02 04 08 13 03",
}  # fmt: skip
_FONT = {
    ch: np.array([[(int(row, 16) >> (4 - x)) & 1 for x in range(5)] for row in rows.split()], bool)
    for ch, rows in _GLYPHS.items()
}


def _text(canvas: np.ndarray, x: int, y: int, text: str, scale: int = 2) -> None:
    for ch in text.upper():
        glyph = _FONT.get(ch, _FONT[" "])
        big = np.kron(glyph, np.ones((scale, scale), bool))
        h, w = big.shape
        if y + h <= canvas.shape[0] and x + w <= canvas.shape[1]:
            canvas[y : y + h, x : x + w][big] = (30, 30, 30)
        x += 6 * scale


def _png(canvas: np.ndarray) -> bytes:
    height, width, _ = canvas.shape
    raw = np.concatenate([np.zeros((height, 1), np.uint8), canvas.reshape(height, -1)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
        + chunk(b"IEND", b"")
    )


def write_chart(results: dict[str, Any], path: Path) -> None:
    """Horizontal bars of events/s per query and system, on a log scale (10K to 100M)."""
    queries = [
        (name, [_rate(entry.get(key)) for key, _, _ in SERIES])
        for name, entry in results.get("queries", {}).items()
    ]
    queries = [(n, rates) for n, rates in queries if any(rates)]
    bar, gap, left, top, width = 7, 10, 120, 90, 1040
    group = bar * len(SERIES) + gap
    height = top + max(1, len(queries)) * group + 40
    canvas = np.full((height, width, 3), 255, np.uint8)
    lo, hi = 4, 8  # log10 of the axis range
    span = width - left - 70

    def xpos(rate: float) -> int:
        return left + int(span * (min(max(math.log10(rate), lo), hi) - lo) / (hi - lo))

    machine = results.get("machine", {})
    title = f"NEXMARK, {results.get('rows', {}).get('bid', 0):,} BIDS: EVENTS/S (LOG SCALE)"
    _text(canvas, 10, 8, title)
    _text(canvas, 10, 28, f"{machine.get('cpus', '?')} CPUS, SHARED; {machine.get('cpu', '')}"[:80])
    for i, (_, label, color) in enumerate(SERIES):
        x = 10 + (i % 3) * 330
        y = 48 + (i // 3) * 18
        canvas[y : y + 12, x : x + 12] = color
        _text(canvas, x + 18, y, label)
    for decade in range(lo, hi + 1):
        x = xpos(10**decade)
        canvas[top - 6 : height - 30, x] = (200, 200, 200)
        label = {4: "10K", 5: "100K", 6: "1M", 7: "10M", 8: "100M"}[decade]
        _text(canvas, x - 12, height - 24, label)
    for q, (name, rates) in enumerate(queries):
        y = top + q * group
        _text(canvas, 10, y + (group - gap) // 2 - 7, name)
        for s, rate in enumerate(rates):
            if rate:
                canvas[y + s * bar : y + (s + 1) * bar - 1, left : xpos(rate)] = SERIES[s][2]
    path.write_bytes(_png(canvas))


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.nexmark.report RESULTS.json [--peers-from PEERS.json]``: redraw
    the table and chart of a results file, after taking PyFlink's figures from another run over
    the same events (e.g. ``--modes '' --peers flink``, which measures PyFlink alone)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m benchmarks.nexmark.report")
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--peers-from", type=Path)
    args = parser.parse_args(argv)
    for path in args.results:
        results = json.loads(path.read_text())
        if args.peers_from is not None:
            carry_peers(results, json.loads(args.peers_from.read_text()), args.peers_from)
            path.write_text(json.dumps(results, indent=2, default=str))
        path.with_suffix(".md").write_text(markdown_table(results))
        write_chart(results, path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
