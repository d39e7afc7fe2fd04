"""din-score's peak resident memory, measured in a child process, as the input grows."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from din_export.errors import DinExportError


def peak_rss(command: list[str], log: Path, poll_s: float = 0.02) -> tuple[float | None, float]:
    """Run `command`; -> (peak resident set in MB, or None without /proc; seconds). Reads the child's own
    high-water mark (/proc/PID/status VmHWM, reset by exec), since rusage's ru_maxrss would include this
    process's RSS, inherited at fork."""
    peak_kb = 0
    with open(log, "wb") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        while process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
            time.sleep(poll_s)
        seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise DinExportError(f"{' '.join(command[3:5])} failed: {log.read_text(errors='replace')[-2000:]}")
    return (peak_kb / 1024 if peak_kb else None), seconds


def din_score_memory(model_dir: Path, data_dir: Path, rows: tuple[int, ...], work: Path) -> list[dict[str, Any]]:
    """Peak RSS and speed of `din-score` (a child process) on JSONL files of test requests, cycled to size."""
    with open(data_dir / "test_requests.jsonl", "rb") as f:
        lines = f.read().splitlines(keepends=True)
    results = []
    for n in rows:
        source = work / f"requests-{n}.jsonl"
        with open(source, "wb") as f:
            for start in range(0, n, len(lines)):
                f.writelines(lines[:min(len(lines), n - start)])
        command = [sys.executable, "-c", "from din_runtime.cli import main; main()", str(model_dir), str(source),
                   "-o", str(work / "scores.jsonl")]
        peak_mb, seconds = peak_rss(command, work / "din-score.log")
        source.unlink()
        results.append({"rows": n, "peak_rss_mb": peak_mb, "seconds": seconds, "rows_per_s": n / seconds})
    return results
