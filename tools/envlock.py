"""The Python environment follows requirements.lock exactly.

    python tools/envlock.py requirement NAME   print NAME's locked line with its hashes (bootstrap)
    python tools/envlock.py check              fail, naming each package, where the running
                                               interpreter's environment differs from the lock

`make` syncs .venv with the lock (uv pip sync) whenever the lock changes, and `make test` runs
`check` first, so a package installed, upgraded or removed by hand is caught before any test runs.
The lock is universal: each entry may carry an environment marker, and only entries whose marker
holds here are expected to be installed.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"
# Installed by `python -m venv` itself, not by the lock; uv pip sync may leave it in place.
VENV_SEED = {"pip"}


@dataclass
class Entry:
    name: str  # canonical (PEP 503) name
    version: str
    marker: str  # "" when the entry applies everywhere
    text: str  # the whole entry, hashes included, as written in the lock


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> list[Entry]:
    """Entries of a `uv pip compile --generate-hashes` lock: a `name==version [; marker] \\` line,
    then its `--hash=` continuation lines."""
    entries: list[Entry] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line or line[0] in "# -":
            continue
        block = [line]
        while block[-1].rstrip().endswith("\\") and i < len(lines):
            block.append(lines[i])
            i += 1
        spec, _, marker = line.rstrip(" \\").partition(";")
        name, sep, version = spec.strip().partition("==")
        if not sep:
            raise ValueError(f"{path.name}: not an exact pin: {line!r}")
        entries.append(Entry(canonical(name), version.strip(), marker.strip(), "\n".join(block)))
    return entries


def applies(entry: Entry) -> bool:
    if not entry.marker:
        return True
    from packaging.markers import Marker

    return Marker(entry.marker).evaluate()


def drift(entries: list[Entry], installed: dict[str, str]) -> list[str]:
    """One line per package where `installed` (canonical name -> version) differs from the lock."""
    wanted = {e.name: e.version for e in entries if applies(e)}
    problems = []
    for name, version in sorted(wanted.items()):
        have = installed.get(name)
        if have is None:
            problems.append(f"{name}: locked {version}, not installed")
        elif have != version:
            problems.append(f"{name}: installed {have}, locked {version}")
    for name in sorted(set(installed) - set(wanted) - VENV_SEED):
        problems.append(f"{name}: installed {installed[name]}, not in the lock")
    return problems


def installed_here() -> dict[str, str]:
    from importlib.metadata import distributions

    return {canonical(d.metadata["Name"]): d.version for d in distributions() if d.metadata["Name"]}


def main(argv: list[str]) -> int:
    if argv[:1] == ["requirement"] and len(argv) == 2:
        for entry in read_lock():
            if entry.name == canonical(argv[1]) and applies(entry):
                print(entry.text)
                return 0
        print(f"{argv[1]} is not in {LOCK.name}", file=sys.stderr)
        return 1
    if argv == ["check"]:
        try:
            problems = drift(read_lock(), installed_here())
        except ImportError:  # packaging is locked; without it the environment is not the lock's
            problems = ["packaging: locked, not installed"]
        if problems:
            print(f"The Python environment ({sys.prefix}) does not match {LOCK.name}:", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            print("Run `make sync` to make it match, or `make lock` to change the lock on purpose.", file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
