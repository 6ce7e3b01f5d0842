"""``conveyor run --pipe`` and ``--pipe-part``: blocks of whole records on each job's stdin.

The real CLI runs in a subprocess (``cli_helpers``). The differential tests run the same
command line through GNU parallel and compare (skipped with a reason when it is not
installed; marker ``gnu``). Hypothesis fuzzes inputs, block sizes and record separators,
in process for the splitting functions (fast, many examples) and through the CLI for a
few, checking that the blocks put together are the input and that no record is split.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.cli.pipe import Records, parse_size, read_blocks, split_file

from cli_helpers import CLI, assert_all_gone, kill_tree, read_pids, run, start, wait_for

GNU = shutil.which("parallel")
if GNU is not None:
    version = subprocess.run([GNU, "--version"], capture_output=True, text=True, check=False)
    GNU = GNU if "GNU parallel" in version.stdout else None
needs_gnu = pytest.mark.skipif(
    GNU is None, reason="GNU parallel is not installed (apt-get install parallel; .ci/run does it)"
)

LINES = "".join(f"{i} {'x' * (i % 37)}\n" for i in range(3000)).encode()  # ~66 KB
CSV = b"id,name\n" + b"".join(b"%d,n%d\n" % (i, i * i) for i in range(2000))
FASTA = b"".join(b">seq%d\n%s\n" % (i, b"ACGT" * (i % 9 + 1)) for i in range(200))


def gnu(*args: str, input: bytes = b"", cwd: Path | None = None) -> subprocess.CompletedProcess:
    """GNU parallel with ARGS; stdout as bytes."""
    assert GNU is not None
    return subprocess.run(
        [GNU, "--will-cite", *args], input=input, capture_output=True, cwd=cwd, check=False
    )


def ours(*args: str, input: bytes = b"", cwd: Path | None = None) -> subprocess.CompletedProcess:
    """conveyor run with ARGS; stdout as bytes."""
    return subprocess.run(
        [*CLI, "run", *args], input=input, capture_output=True, cwd=cwd, check=False, timeout=60
    )


def total(out: bytes) -> int:
    return sum(int(line.split()[0]) for line in out.splitlines())


# --- the CLI on its own -----------------------------------------------------------------


def test_pipe_wc_totals_and_block_count() -> None:
    done = ours("--pipe", "--block", "10k", "wc", "-l", input=LINES)
    assert done.returncode == 0, done.stderr
    counts = done.stdout.split()
    assert sum(map(int, counts)) == 3000
    assert len(counts) == -(-len(LINES) // 10_000)  # every block but the last is full


def test_keep_order_cat_is_byte_exact_including_binary() -> None:
    data = bytes(range(256)) * 40 + b"\n\0\r\n no final newline"
    for block in ("1k", "3000", "1M"):
        done = ours("-k", "--pipe", "--block", block, "cat", input=data)
        assert done.returncode == 0 and done.stdout == data
    done = ours("-k", "--pipe", "--block", "1k", "--recend", "", "cat", input=data)
    assert done.stdout == data


def test_blocks_end_at_records_and_seq_works() -> None:
    done = ours("-k", "-j3", "--pipe", "--block", "1k", "echo {#}; cat; printf '\\0'", input=LINES)
    assert done.returncode == 0, done.stderr
    pieces = done.stdout.split(b"\0")[:-1]
    blocks = []
    for n, piece in enumerate(pieces, 1):
        seq, _, block = piece.partition(b"\n")
        assert seq == str(n).encode()
        assert block.endswith(b"\n") and 0 < len(block) <= 1000
        blocks.append(block)
    assert b"".join(blocks) == LINES


def test_recstart_keeps_records_whole() -> None:
    done = ours(
        "-k", "--pipe", "--block", "100", "--recstart", ">", "cat; printf '\\0'", input=FASTA
    )
    blocks = done.stdout.split(b"\0")[:-1]
    assert b"".join(blocks) == FASTA
    assert all(block.startswith(b">seq") for block in blocks)
    assert len(blocks) > 10


def test_header_goes_before_every_block(tmp_path: Path) -> None:
    (tmp_path / "f.csv").write_bytes(CSV)
    for source in (["--pipe"], ["--pipe-part", "-a", str(tmp_path / "f.csv")]):
        done = ours("-k", *source, "--block", "4k", "--header", ":", "cat; printf '\\0'", input=CSV)
        blocks = done.stdout.split(b"\0")[:-1]
        assert len(blocks) > 3 and all(b.startswith(b"id,name\n") for b in blocks)
        assert b"id,name\n" + b"".join(b[len(b"id,name\n") :] for b in blocks) == CSV


def test_empty_input_runs_no_job() -> None:
    done = ours("--pipe", "echo ran", input=b"")
    assert done.returncode == 0 and done.stdout == b""


def test_retried_block_is_fed_again(tmp_path: Path) -> None:
    # The first attempt of each job fails without reading; the retry must get it all.
    script = "if [ -e m{#} ]; then wc -l; else touch m{#}; exit 1; fi"
    done = ours("--pipe", "--block", "10k", "--retries", "1", script, input=LINES, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert total(done.stdout) == 3000


def test_job_that_reads_nothing_and_joblog(tmp_path: Path) -> None:
    # head -1 closes its stdin early (the rest of the block is dropped, not an error);
    # true reads nothing at all.
    done = ours("-k", "--pipe", "--block", "20k", "head -1", input=LINES)
    assert done.returncode == 0
    assert done.stdout.splitlines()[0] == b"0 "
    log = tmp_path / "log.db"
    done = ours("--pipe", "--block", "20k", "--joblog", str(log), "true", input=LINES * 10)
    assert done.returncode == 0, done.stderr
    listed = subprocess.run([*CLI, "joblog", str(log)], capture_output=True, text=True)
    assert len(listed.stdout.splitlines()) == 1 + -(-len(LINES) * 10 // 20_000)


def test_timeout_kills_a_job_that_does_not_read() -> None:
    t0 = time.monotonic()
    done = ours("--pipe", "--block", "2M", "--timeout", "0.5", "sleep 30", input=LINES * 40)
    assert done.returncode == 2  # two blocks, both timed out
    assert time.monotonic() - t0 < 10


def test_halt_now_stops_while_stdin_is_still_open(tmp_path: Path) -> None:
    proc = start("--pipe", "--block", "1k", "--halt", "now,fail=1", "exit 3", stdin=subprocess.PIPE)
    try:
        assert proc.stdin is not None
        proc.stdin.write(LINES[:5000])
        proc.stdin.flush()
        wait_for(lambda: proc.poll() is not None, 20, "the runner to halt")
        assert proc.returncode == 3  # GNU: fail=1 exits with the failing job's status
    finally:
        kill_tree(proc)


def test_ctrl_c_kills_piped_jobs(tmp_path: Path) -> None:
    proc = start(
        "--pipe",
        "--block",
        "1k",
        "-j2",
        f"echo $$ > {tmp_path}/pid.{{#}}; sleep 60",
        stdin=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(LINES[:5000])
        proc.stdin.flush()
        wait_for(lambda: len(read_pids(tmp_path)) == 2, 20, "two jobs to start")
        proc.send_signal(2)
        proc.wait(20)
        assert proc.returncode == 255
        assert_all_gone(read_pids(tmp_path))
    finally:
        kill_tree(proc)


def test_memory_stays_bounded_for_a_large_stream() -> None:
    # 96 MiB through --pipe with 1 MiB blocks: the runner holds about -j + 2 blocks.
    # Its RSS is sampled (not ru_maxrss, which counts the test process' pages the
    # child shared between fork and exec).
    size = 96 << 20
    proc = subprocess.Popen(
        [*CLI, "run", "-j2", "--pipe", "--block", "1M", "wc -c"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        watched = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                peak = max(peak, watched.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        chunk = (b"y" * 99 + b"\n") * 10_000
        for _ in range(size // len(chunk)):
            proc.stdin.write(chunk)
        proc.stdin.close()
        out = proc.stdout.read()
        proc.wait()
    finally:
        stop.set()
        sampler.join()
        kill_tree(proc)
    assert proc.returncode == 0
    assert total(out) == size // len(chunk) * len(chunk)
    # the interpreter with conveyor imported is ~25-30 MiB; 2 + 2 blocks are 4 MiB
    assert peak < 60 << 20, f"peak RSS {peak >> 20} MiB"


def test_pipe_part_totals_and_parts(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_bytes(LINES)
    done = ours("-k", "--pipe-part", "-a", str(data), "--block", "10k", "cat; printf '\\0'")
    parts = done.stdout.split(b"\0")[:-1]
    assert b"".join(parts) == LINES
    assert all(p.endswith(b"\n") for p in parts)
    assert all(len(p) >= 10_000 for p in parts[:-1]) and len(parts) == 8  # GNU's sizes
    # default: 10 parts per job slot
    done = ours("-j3", "--pipe-part", "-a", str(data), "wc -l")
    assert total(done.stdout) == 3000 and len(done.stdout.splitlines()) == 30
    done = ours("--pipe-part", "--block", "-1", "-j2", "wc -l", "::::", str(data))
    assert total(done.stdout) == 3000 and len(done.stdout.splitlines()) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pipe", "echo", ":::", "a"], "--pipe with ::: inputs"),
        (["--pipe-part", "wc"], "--pipe-part needs -a FILE"),
        (["--pipe", "--block", "1Q", "wc"], "bad --block size '1Q'"),
        (["--pipe", "--block", "0", "wc"], "must not be 0"),
        (["--pipe", "--block", "-2", "wc"], "needs --pipe-part"),
        (["--recend", "x", "echo"], "--recend needs --pipe"),
        (["--recstart", "x", "echo"], "--recstart needs --pipe"),
        (["--block", "1M", "echo"], "--block needs --pipe"),
        (["--regexp", "echo"], "--regexp needs --pipe"),
        (["--pipe", "--regexp", "--recend", "(", "wc"], "bad --recend regular expression"),
        (["--pipe", "echo {}"], "--pipe and {} in COMMAND"),
        (["--pipe"], "--pipe needs a COMMAND"),
        (["--pipe", "-a", "f", "wc"], "--pipe with -a/:::: FILE"),
        (["--pipe-part", "-a", "f", "-N", "2", "wc"], "--pipe-part with -n/-N"),
        (["--pipe", "-N", "0", "wc"], "a job needs at least one record"),
        (["--pipe", "--shuf", "wc"], "--pipe and --shuf"),
        (["--pipe", "--colsep", ",", "wc"], "--pipe and --colsep"),
        (["--pipe-part", "-a", "-", "wc"], "stdin is not seekable"),
        (["--pipe-part", "-a", "/nonexistent/f", "wc"], "cannot read '/nonexistent/f'"),
        (["--pipe-part", "-a", "/", "wc"], "not a seekable file"),
    ],
)
def test_invalid_combinations_name_the_options(args: list[str], message: str) -> None:
    done = run(*args)
    assert done.returncode == 255
    assert message in done.stderr, done.stderr


def test_help_shows_every_option_with_an_example() -> None:
    text = run("--help").stdout
    for flag in ("--pipe ", "--pipe-part", "--block", "--recend", "--recstart", "--regexp"):
        assert flag in text
    assert "Differences from GNU parallel" in text
    assert text.count("e.g. conveyor run --pipe") >= 1


# --- against GNU parallel ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "data"),
    [
        (["--pipe", "--block", "1k", "wc", "-c"], LINES),
        (["--pipe", "--block", "3000", "--recend", "5\n", "wc", "-c"], LINES),
        (["--pipe", "-N", "350", "md5sum"], LINES),
        (["--pipe", "--block", "200", "--recstart", ">", "wc", "-c"], FASTA),
        (["--pipe", "--block", "200", "--recend", "\\n", "--recstart", ">", "md5sum"], FASTA),
        (["--pipe", "--block", "150", "--regexp", "--recstart", ">seq[0-9]*0\n", "md5sum"], FASTA),
        (["--pipe", "-N", "30", "--block", "100", "--recstart", ">", "md5sum"], FASTA),
        (["--pipe", "--block", "3k", "--header", ":", "md5sum"], CSV),
    ],
    ids=["lines", "recend", "N", "recstart", "both", "regexp", "N-recstart", "header"],
)
@pytest.mark.gnu
@needs_gnu
def test_same_blocks_as_gnu(args: list[str], data: bytes) -> None:
    theirs = gnu("-k", *args, input=data)
    mine = ours("-k", *args, input=data)
    assert mine.returncode == theirs.returncode == 0, mine.stderr
    assert mine.stdout == theirs.stdout


@pytest.mark.gnu
@needs_gnu
@pytest.mark.parametrize("block", ["777", "-3"])
def test_pipe_part_same_parts_as_gnu(tmp_path: Path, block: str) -> None:
    (tmp_path / "f").write_bytes(LINES)
    args = ["-k", "-j2", "--pipe-part", "-a", "f", "--block", block, "wc", "-c"]
    theirs, mine = gnu(*args, cwd=tmp_path), ours(*args, cwd=tmp_path)
    assert mine.returncode == theirs.returncode == 0, mine.stderr
    assert mine.stdout == theirs.stdout


@pytest.mark.gnu
@needs_gnu
def test_pipe_part_recstart_and_header_same_as_gnu(tmp_path: Path) -> None:
    (tmp_path / "f.fa").write_bytes(FASTA)
    (tmp_path / "f.csv").write_bytes(CSV)
    for args in (
        ["-k", "--pipe-part", "-a", "f.fa", "--block", "300", "--recstart", ">", "md5sum"],
        ["-k", "--pipe-part", "-a", "f.csv", "--block", "2k", "--header", ":", "md5sum"],
    ):
        theirs, mine = gnu(*args, cwd=tmp_path), ours(*args, cwd=tmp_path)
        assert mine.stdout == theirs.stdout and mine.returncode == 0


# --- fuzzed -------------------------------------------------------------------------------

SEPARATORS = st.sampled_from([(b"\n", b""), (b"", b">"), (b"\n", b">"), (b";;", b""), (b"", b"")])


@st.composite
def records_input(draw: st.DrawFn) -> tuple[bytes, bytes, bytes, list[bytes]]:
    recend, recstart = draw(SEPARATORS)
    body = st.binary(max_size=40).map(
        lambda b: b.replace(b"\n", b"").replace(b">", b"").replace(b";", b"").replace(b"\0", b"")
    )
    records = [recstart + r + recend for r in draw(st.lists(body, max_size=60))]
    if records and draw(st.booleans()):  # no separator after the last record
        records[-1] = records[-1][: len(records[-1]) - len(recend)]
    return recend, recstart, b"".join(records), [r for r in records if r]


def _check_blocks(blocks: list[bytes], data: bytes, recend: bytes, recstart: bytes) -> None:
    assert b"".join(blocks) == data
    assert all(blocks)
    for block, after in itertools.pairwise(blocks):
        assert block.endswith(recend) and after.startswith(recstart)


@settings(max_examples=300, deadline=None)
@given(
    case=records_input(),
    block=st.integers(1, 300),
    chunk=st.integers(1, 50),
    count=st.none() | st.integers(1, 5),
)
def test_read_blocks_fuzzed(
    case: tuple[bytes, bytes, bytes, list[bytes]], block: int, chunk: int, count: int | None
) -> None:
    recend, recstart, data, _ = case
    src = io.BytesIO(data)

    def readinto(view: memoryview) -> int:  # short reads, as from a pipe
        return src.readinto(view[:chunk])

    records = Records(recend, recstart)
    blocks = [bytes(b) for b in read_blocks(readinto, block, records, count)]
    _check_blocks(blocks, data, recend, recstart)
    if count is not None and recend + recstart:  # -N: count records (GNU's counting)
        offset = 0
        for b in blocks[:-1]:
            rest = data[offset:]
            assert records.nth_split(rest, len(rest), count) == len(b)
            offset += len(b)
    elif recend + recstart:  # a block is over --block only when it is one record
        assert all(len(b) <= block or b.count(recend + recstart) <= 1 for b in blocks)


@settings(max_examples=200, deadline=None)
@given(case=records_input(), block=st.integers(1, 300))
def test_split_file_fuzzed(case: tuple[bytes, bytes, bytes, list[bytes]], block: int) -> None:
    recend, recstart, data, _ = case
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        ranges = split_file(f.fileno(), len(data), block, Records(recend, recstart))
        blocks = [os.pread(f.fileno(), n, offset) for offset, n in ranges]
    _check_blocks(blocks, data, recend, recstart)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=records_input(), block=st.integers(1, 200), part=st.booleans())
def test_cli_keep_order_cat_fuzzed(
    tmp_path: Path, case: tuple[bytes, bytes, bytes, list[bytes]], block: int, part: bool
) -> None:
    recend, recstart, data, _ = case
    seps = ["--recend", recend.decode(), "--recstart", recstart.decode()]
    if part:
        (tmp_path / "in").write_bytes(data)
        args = ["--pipe-part", "-a", str(tmp_path / "in")]
    else:
        args = ["--pipe"]
    done = ours("-k", "-j3", *args, "--block", str(block), *seps, "cat; printf '\\0'", input=data)
    assert done.returncode == 0, done.stderr
    blocks = done.stdout.split(b"\0")[:-1]
    _check_blocks(blocks, data, recend, recstart)


def test_parse_size_units() -> None:
    assert parse_size("1M") == 1 << 20 and parse_size("1m") == 10**6
    assert parse_size("2K") == 2048 and parse_size("2k") == 2000
    assert parse_size("1G") == 1 << 30 and parse_size("100") == 100


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
