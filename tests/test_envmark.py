"""The environment-token killer (conveyor._envmark), for workers and for the CLI's guardian."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conveyor import _envmark

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")


def _sleeper(variable: str, value: str, **popen: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, variable: value}
    return subprocess.Popen(["sleep", "60"], env=env, **popen)  # type: ignore[call-overload]


def _dead(proc: subprocess.Popen[bytes]) -> bool:
    try:
        proc.wait(5.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False
    return True


def test_a_worker_token_finds_its_item_tokens_and_not_a_longer_one() -> None:
    token = _envmark.new_token()
    item = _sleeper(_envmark.VARIABLE, f"{token}:1")
    other_item = _sleeper(_envmark.VARIABLE, f"{token}:10")
    try:
        time.sleep(0.1)
        assert _envmark.kill_marked(f"{token}:1") == 1
        assert _dead(item)
        assert other_item.poll() is None
        assert _envmark.kill_marked(token) == 1
        assert _dead(other_item)
    finally:
        for proc in (item, other_item):
            if proc.poll() is None:
                proc.kill()


def test_a_run_id_is_found_anywhere_in_a_nested_runners_list() -> None:
    token = _envmark.new_token()
    nested = _sleeper("CONVEYOR_RUN_ID", f"outer.1:{token}:inner.2")
    try:
        time.sleep(0.1)
        assert _envmark.kill_marked(token, "CONVEYOR_RUN_ID") == 1
        assert _dead(nested)
    finally:
        if nested.poll() is None:
            nested.kill()


@pytest.mark.parametrize("clean", [False, True])
def test_the_guardian_script_kills_only_when_its_runner_vanishes(clean: bool) -> None:
    """The guardian runs _envmark.py as a script, isolated (-I -S), as cli/guardian.py does."""
    token = _envmark.new_token()
    job = _sleeper("CONVEYOR_RUN_ID", token, start_new_session=True)
    guardian = subprocess.Popen(
        [sys.executable, "-I", "-S", _envmark.__file__, "CONVEYOR_RUN_ID", token],
        stdin=subprocess.PIPE,
    )
    try:
        assert guardian.stdin is not None
        guardian.stdin.write(b"+%d\n" % job.pid + (b".\n" if clean else b""))
        guardian.stdin.close()  # the runner is gone (or ended normally)
        assert guardian.wait(10.0) == 0
        if clean:
            assert job.poll() is None
        else:
            assert _dead(job)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
