"""Read a systemd unit file the way systemd does: sections, repeated keys, continuations, comments."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "wan22bot.service"
WORKER_UNIT = REPO / "systemd" / "wan22bot-worker@.service"  # a template: one instance per GPU
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}. An empty assignment resets the list, as in systemd."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line[0] in "#;":
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        m = re.fullmatch(r"\[([^\]]+)\]", line)
        if m:
            current = sections.setdefault(m.group(1), {})
            continue
        if current is None or "=" not in line:
            raise ValueError(f"not a unit file line: {line!r}")
        key, value = (p.strip() for p in line.split("=", 1))
        if value == "":
            current[key] = []
        else:
            current.setdefault(key, []).append(value)
    return sections


def environment(service: dict[str, list[str]]) -> dict[str, str]:
    """All Environment= assignments (several per line, shell-like quoting) merged in order."""
    env: dict[str, str] = {}
    for line in service.get("Environment", []):
        for word in shlex.split(line):
            k, v = word.split("=", 1)
            env[k] = v
    return env


def timespan_seconds(value: str) -> float:
    """A systemd time span parsed by systemd itself."""
    out = subprocess.run([SYSTEMD_ANALYZE, "timespan", value], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"systemd cannot parse the time span {value!r}: {out.stderr.strip()}"
    m = re.search(r"μs:\s*(\d+)", out.stdout)
    assert m, out.stdout
    return int(m.group(1)) / 1e6


def verify(unit_path: Path) -> tuple[int, list[str]]:
    """`systemd-analyze verify`: (exit status, every diagnostic line it printed).

    systemd only warns (exit 0) about unknown keys and unparsable values and ignores them, so a
    unit counts as clean only with exit 0 *and* no diagnostics.
    """
    out = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit_path)], capture_output=True, text=True,
                         timeout=60, cwd=unit_path.parent)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    return out.returncode, lines


def security_exposure(unit_path: Path) -> tuple[float, str]:
    """`systemd-analyze security --offline=true`: (the overall exposure level, the whole report)."""
    out = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(unit_path)],
                         capture_output=True, text=True, timeout=60, cwd=unit_path.parent)
    text = out.stdout + out.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", text)
    assert m, f"no exposure level in the output of systemd-analyze security (exit {out.returncode}):\n{text}"
    return float(m.group(1)), text
