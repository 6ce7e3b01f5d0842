"""Check the built sdist and wheel: print the wheel's files, fail on anything missing.

Usage: python .ci/check_dist.py DIST_DIR   (run from the checkout; needs git)

The wheel must be pure Python (py3-none-any, Root-Is-Purelib), hold every tracked module
of src/conveyor plus py.typed, the LICENSE and the ``conveyor`` entry point, and nothing
but the ``conveyor`` package and its metadata. The sdist must hold every tracked file but
CI's own, so that tests and docs can be run from it.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path


def tracked(*paths: str) -> set[str]:
    out = subprocess.run(["git", "ls-files", *paths], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def check_wheel(wheel: Path) -> list[str]:
    problems = []
    if not wheel.name.endswith("-py3-none-any.whl"):
        problems.append(f"{wheel.name}: not a pure-Python wheel (py3-none-any)")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        print(f"--- {wheel.name}: {len(names)} files")
        for info in zf.infolist():
            print(f"{info.file_size:>9}  {info.filename}")
        info_dir = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        meta = zf.read(f"{info_dir}/WHEEL").decode()
        entry_points = zf.read(f"{info_dir}/entry_points.txt").decode()
    if "Root-Is-Purelib: true" not in meta:
        problems.append("WHEEL does not say Root-Is-Purelib: true")
    if "conveyor = conveyor.cli.__main__:main" not in entry_points:
        problems.append("the conveyor console script is missing from entry_points.txt")
    expected = {p.removeprefix("src/") for p in tracked("src/conveyor")}
    expected |= {"conveyor/py.typed", f"{info_dir}/licenses/LICENSE"}
    problems += [f"missing from the wheel: {n}" for n in sorted(expected - set(names))]
    stray = [n for n in names if not n.startswith(("conveyor/", f"{info_dir}/"))]
    problems += [f"not part of the conveyor package: {n}" for n in stray]
    problems += [f"compiled file in the wheel: {n}" for n in names if n.endswith((".pyc", ".so"))]
    return problems


def check_sdist(sdist: Path) -> list[str]:
    with tarfile.open(sdist) as tf:
        root = tf.getnames()[0].split("/")[0]
        names = {n.removeprefix(f"{root}/") for n in tf.getnames()}
    print(f"--- {sdist.name}: {len(names)} entries")
    wanted = {p for p in tracked() if not p.startswith(".ci/") and p != ".gitignore"}
    return [f"missing from the sdist: {n}" for n in sorted(wanted - names)]


def main(dist: str) -> int:
    wheels = sorted(Path(dist).glob("*.whl"))
    sdists = sorted(Path(dist).glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"check_dist: expected one wheel and one sdist in {dist}", file=sys.stderr)
        return 1
    problems = check_wheel(wheels[0]) + check_sdist(sdists[0])
    for problem in problems:
        print(f"check_dist: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
