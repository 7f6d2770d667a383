"""The Python package (pyproject.toml): a wheel built from a copy of this checkout, installed with
no downloads (``--no-deps``) into a temporary virtual environment that sees .venv's packages
through a ``.pth`` file, and its commands ``mms-server`` and ``mms-client`` run from a folder
outside the repository, so only the installed copy can answer."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import aiohttp
import pytest

from testing.net import LOOPBACK, free_port
from testing.server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
ROOTS = ("server", "media", "tracks", "inference", "pipelines")  # the packages the wheel carries
UV = Path(sys.executable).parent / "uv"


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)
    assert result.returncode == 0, f"{argv} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """(wheel, the installed venv's bin folder, a folder outside the repository, environment)."""
    tmp = tmp_path_factory.mktemp("package")
    src = tmp / "src"  # what git would commit: built out of tree, the checkout stays clean
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file() and not (ROOT / name).is_symlink():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp / "dist"), str(src)])
    wheel, = (tmp / "dist").glob("*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    bin_dir = venv / "bin"
    purelib = run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}  # .venv's packages
    (Path(purelib.strip()) / "mms-test-dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    run([str(UV), "pip", "install", "--python", str(bin_dir / "python"), "--no-deps", "--offline", "--no-cache",
         str(wheel)])
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return wheel, bin_dir, cwd, env


def test_dependencies_come_from_requirements_in():
    """pyproject.toml's dependencies are requirements.in's runtime part (before "# Tests"), with the
    same ranges; its extras (tests, benchmarks, optional backends) are lines of requirements.in too."""
    runtime, every = [], []
    for line in (ROOT / "requirements.in").read_text().splitlines():
        if line.startswith("# Tests"):
            runtime = list(every)
        if line.split("#")[0].strip():
            every.append(line.split("#")[0].strip())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    missing = [r for r in runtime if r not in project["dependencies"] + extras]
    assert not missing, f"requirements.in needs {missing}: add to pyproject.toml's dependencies (or an extra)"
    invented = [r for r in project["dependencies"] + extras if r not in every]
    assert not invented, f"pyproject.toml names {invented}, which requirements.in does not"
    assert [r for r in project["dependencies"] if r in runtime] == project["dependencies"]
    assert project["scripts"] == {"mms-server": "server.cli:main", "mms-client": "client:main"}


def test_wheel_holds_every_package_the_page_and_the_docs(build):
    wheel = build[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = [p.parent for root in ROOTS for p in (ROOT / root).rglob("__init__.py")]
    missing = [str(p.relative_to(ROOT)) for p in packages
               if f"{p.relative_to(ROOT).as_posix()}/__init__.py" not in names]
    assert not missing, f"packages missing from pyproject.toml's list: {missing}"
    page = [p for p in (ROOT / "static").rglob("*") if p.is_file()]
    assert page and all(f"server/static/{p.relative_to(ROOT / 'static').as_posix()}" in names for p in page)
    assert all(f"server/docs/{p.name}" in names for p in (ROOT / "docs").glob("*.md"))
    assert "client.py" in names and not any(n.startswith(("tests/", "testing/", "bench/")) for n in names)


async def test_commands_start_from_the_installed_copy(build, tmp_path, monkeypatch):
    _, bin_dir, cwd, env = build
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the server subprocess inherits this environment

    async def command(*argv) -> str:
        proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, out.decode()
        return out.decode()

    port = free_port()
    server = ServerProcess("mms-server", [str(bin_dir / "mms-server"), "--host", LOOPBACK, "--port", str(port),
                                          "--ice-host", LOOPBACK, "--log-level", "WARNING"], port,
                           tmp_path / "server.log")
    server.cwd = cwd
    server.start()  # the server, both --help runs and the import check at once: they are all start-up
    try:
        where, server_help, client_help = await asyncio.gather(
            command(str(bin_dir / "python"), "-c",
                    "import client, server.app; print(server.app.__file__, server.app.STATIC, client.__file__)"),
            command(str(bin_dir / "mms-server"), "--help"), command(str(bin_dir / "mms-client"), "--help"))
        assert all(path.startswith(str(bin_dir.parent)) for path in where.split()), where
        assert "usage: mms-server" in server_help and "--pipelines" in server_help
        assert "usage: mms-client" in client_help and "--record" in client_help
        health = await server.wait_healthy(timeout=120)
        assert "gender" in health["pipelines"]
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/") as resp:
                assert resp.status == 200 and "<html" in (await resp.text()).lower()
            async with http.get(server.url + "/static/app.js") as resp:
                assert resp.status == 200
    finally:
        code = await server.stop()
    assert code == 0, server.log_tail()
