"""Outputs replace only what is ours, and a killed writer's temporaries go on the next run.

- An output path that exists and is a directory, a FIFO or a device node is refused with one
  line (`silr ingest --out NODE` used to rename an HDF5 file over the node and exit 0).
- A `.silr-tmp-<pid>-*` file of a process that no longer runs is removed by the next write
  into its directory; one of a live process, or a fresh one without a pid, is kept.
- A real `silr synth` SIGKILLed mid-write, then rerun: the rerun leaves no temporary.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from silr import cli  # noqa: E402
from silr.core import io as silr_io  # noqa: E402
from silr.core.errors import OutputError  # noqa: E402
from silr.core.io import TMP_PREFIX, atomic_path, clean_stale_temporaries, write_text  # noqa: E402
from test_atomic import kill_synth_mid_write, leftovers  # noqa: E402
from test_bad_input_catalogue import Case, check_failure, fullres_case  # noqa: E402
from test_bad_input_catalogue import world as world  # noqa: E402,F401 - the fixture

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture(autouse=True)
def fresh_clean_cache():
    silr_io._cleaned_dirs.clear()
    yield
    silr_io._cleaned_dirs.clear()


# ------------------------------------------------------------------ only regular files are replaced


def test_a_fifo_at_the_output_path_is_refused_and_kept(tmp_path):
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    with pytest.raises(
        OutputError, match="exists and is a FIFO, expected a regular file path; not replaced"
    ):
        write_text(fifo, "{}")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert leftovers(tmp_path) == []


def test_a_directory_at_the_output_path_is_refused(tmp_path):
    (tmp_path / "out.json").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        write_text(tmp_path / "out.json", "{}")


def test_a_symlink_is_replaced_not_written_through(tmp_path):
    """DVC's symlink cache makes outputs links into the cache: the link goes, the cache stays."""
    cached = tmp_path / "cache_copy"
    cached.write_text("cached\n")
    link = tmp_path / "out.txt"
    link.symlink_to(cached)
    write_text(link, "new\n")
    assert not link.is_symlink() and link.read_text() == "new\n"
    assert cached.read_text() == "cached\n"


@pytest.mark.parametrize("kind", ["fifo", "chardev"])
def test_ingest_out_onto_a_node_fails_in_one_line_and_keeps_the_node(kind, world, capsys):
    case = fullres_case(world)
    out = Path(case.argv[case.argv.index("--out") + 1])
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(out)
    else:
        if not IS_ROOT:
            pytest.skip("making a device node needs root")
        os.mknod(
            out, stat.S_IFCHR | 0o600, os.makedev(1, 3)
        )  # a node made for the test: /dev/null's numbers
    rc = cli.main(case.argv)
    captured = capsys.readouterr()
    line = check_failure(
        Case(case.argv, [], [str(out), "not replaced"]), rc, captured.out, captured.err
    )
    assert "FIFO" in line or "character device" in line
    mode = os.lstat(out).st_mode
    assert stat.S_ISFIFO(mode) if kind == "fifo" else stat.S_ISCHR(mode)
    assert leftovers(out.parent) == []


# ------------------------------------------------------------------ stale temporaries


def test_a_dead_writers_temporary_is_removed_by_the_next_write(tmp_path):
    orphan = tmp_path / f"{TMP_PREFIX}{dead_pid()}-0123abcd-table.csv"
    orphan.write_text("half a ta")
    write_text(tmp_path / "other.txt", "x\n")
    assert not orphan.exists()
    assert (tmp_path / "other.txt").read_text() == "x\n"


def test_a_live_writers_temporary_is_kept(tmp_path):
    live = tmp_path / f"{TMP_PREFIX}{os.getppid()}-0123abcd-table.csv"  # our parent runs
    live.write_text("being written")
    no_pid = tmp_path / f"{TMP_PREFIX}0123abcd-old.csv"  # an older silr's name, fresh: kept
    no_pid.write_text("old")
    write_text(tmp_path / "other.txt", "x\n")
    assert live.exists() and no_pid.exists()


def test_an_old_temporary_without_a_pid_goes_after_a_day(tmp_path):
    old = tmp_path / f"{TMP_PREFIX}0123abcd-old.csv"
    old.write_text("old")
    past = time.time() - silr_io.STALE_AFTER_S - 60
    os.utime(old, (past, past))
    assert clean_stale_temporaries(tmp_path) == [old]
    assert not old.exists()


def test_cleaning_leaves_other_files_and_directories_alone(tmp_path):
    (tmp_path / "data.h5").write_text("mine")
    (tmp_path / f"{TMP_PREFIX}{dead_pid()}-0123abcd-dir").mkdir()
    assert clean_stale_temporaries(tmp_path) == []
    assert (tmp_path / "data.h5").exists()


def test_our_own_temporary_is_never_removed(tmp_path):
    target = tmp_path / "t.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("x")
        assert clean_stale_temporaries(tmp_path) == []
        assert tmp.exists()
    assert target.read_text() == "x"


@pytest.mark.slow
def test_a_rerun_after_sigkill_leaves_no_temporary(tmp_path):
    target = tmp_path / "phantom_full_res.h5"
    size, status = kill_synth_mid_write(target)
    assert status == -signal.SIGKILL and size > 0
    assert leftovers(tmp_path)  # the kill left its temporary
    rerun = subprocess.run(
        [
            str(Path(sys.executable).parent / "silr"),
            "synth",
            "--out",
            str(target),
            "--specimens",
            "2",
            "--frames",
            "1",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert leftovers(tmp_path) == []
