"""Hostile data files: sizes checked before reading, links that leave the file refused, odd
names and non-finite scalars a clean one-line error; `silr predict` batches survive them.

Every hostile file is made here, small; none is committed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import test_predict  # noqa: E402
from conftest import write_tiny_processed  # noqa: E402
from silr import cli  # noqa: E402
from test_bad_input_catalogue import Case, check_failure, edit_fullres, fullres_case  # noqa: E402
from test_bad_input_catalogue import world as world  # noqa: E402,F401 - the fixture
from test_predict import MarkerModel, dot_image, run_predict  # noqa: E402

fake_models = test_predict.fake_models  # the stand-in models fixture, shared
FRAME = "17-1882/projections/001"


def ingest_fails(case: Case, capsys, *words: str) -> str:
    rc = cli.main(case.argv)
    captured = capsys.readouterr()
    return check_failure(
        Case(case.argv, case.outputs, [*case.expected, *words]), rc, captured.out, captured.err
    )


def huge_processed(path: Path, shape=(120, 4096, 4096)) -> Path:
    """A processed-layout file of about 1 MB declaring `shape` float32 frames (chunked,
    unwritten)."""
    write_tiny_processed(path, specimens=(1,), frames=2)
    with h5py.File(path, "r+") as f:
        for name, dtype in (("projs", "f4"), ("segs", "u1")):
            del f[f"01/{name}"]
            f.create_dataset(
                f"01/{name}", shape=shape, dtype=dtype, chunks=(1, 256, 256), compression="gzip"
            )
        del f["01/lands"]
        f["01/lands"] = np.zeros((shape[0], 2, 14), np.float32)
    return path


# ------------------------------------------------------------------ ingest


def test_an_external_link_is_refused(world, capsys):
    other = world.tmp / "elsewhere.h5"
    with h5py.File(other, "w") as f:
        f["pixels"] = np.zeros((32, 32), np.float32)
    link = h5py.ExternalLink(str(other), "pixels")
    edit_fullres(
        world,
        lambda f: (
            f.__delitem__(f"{FRAME}/image/pixels"),
            f.__setitem__(f"{FRAME}/image/pixels", link),
        ),
    )
    line = ingest_fails(fullres_case(world), capsys)
    assert "link" in line.lower()


def test_a_soft_link_cycle_is_a_clean_error(world, capsys):
    def cycle(f: h5py.File) -> None:
        del f[f"{FRAME}/image"]
        f[f"{FRAME}/image"] = h5py.SoftLink(f"/{FRAME}/image")

    edit_fullres(world, cycle)
    ingest_fails(fullres_case(world), capsys)


def test_a_projection_named_with_a_superscript_digit_is_a_clean_error(world, capsys):
    edit_fullres(world, lambda f: f.move(FRAME, "17-1882/projections/²"))
    ingest_fails(fullres_case(world), capsys, "²")


def test_a_nan_scalar_is_a_clean_error(world, capsys):
    def nan_cols(f: h5py.File) -> None:
        del f["proj-params/num-cols"]
        f["proj-params/num-cols"] = np.float64("nan")

    edit_fullres(world, nan_cols)
    ingest_fails(fullres_case(world), capsys, "num-cols")


# ------------------------------------------------------------------ predict: the batch goes on


def _good_png(folder: Path) -> Path:
    path = folder / "good.png"
    Image.fromarray(dot_image(180, 180, slice(3, 4), slice(4, 5))).save(path)
    return path


HOSTILE = {
    "malformed_npy_header": lambda d: (d / "bad.npy").write_bytes(
        b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3, (}"
        + b" " * 50
    ),
    "absurd_npy_values": lambda d: np.save(d / "huge.npy", np.full((64, 64), 3e38, np.float32)),
    "huge_declared_hdf5": lambda d: huge_processed(d / "bomb.h5"),
}


def _write_float64_tiff(path: Path) -> bool:
    try:
        Image.fromarray(np.zeros((64, 64), np.float64)).save(path)
    except (TypeError, OSError, KeyError):
        return False
    return True


@pytest.mark.parametrize("name", list(HOSTILE))
def test_one_hostile_file_fails_alone_and_the_good_frame_is_predicted(
    name, fake_models, tmp_path, capsys
):
    ckpt = fake_models("marker.pt", MarkerModel())
    folder = tmp_path / "in"
    folder.mkdir()
    _good_png(folder)
    HOSTILE[name](folder)
    out = tmp_path / "out"
    code = run_predict("--model", ckpt, "--out", out, folder)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and "1 input(s) failed" in err
    assert (out / "good_landmarks.json").is_file()


def test_a_symlink_loop_in_a_folder_is_reported(fake_models, tmp_path, capsys):
    ckpt = fake_models("marker.pt", MarkerModel())
    folder = tmp_path / "in"
    folder.mkdir()
    _good_png(folder)
    (folder / "loop.png").symlink_to(folder / "loop.png")
    code = run_predict("--model", ckpt, "--out", tmp_path / "out", folder)
    err = capsys.readouterr().err
    assert code == 1 and "loop.png" in err and "symlink loop" in err.lower()


# ------------------------------------------------------------------ bounded memory, measured

BOMB_RUN = textwrap.dedent("""
    import resource, sys
    def peak_mb():
        # VmHWM is this process's own peak; ru_maxrss would include the forking parent's
        # (pytest's) RSS, which Linux carries across fork and exec.
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from silr import cli
    code = cli.main(["ingest", "--raw", {raw!r}, "--out", {out!r}])
    print(f"exit {{code}} peak_rss_mb {{peak_mb():.0f}}")
""")


def test_a_small_file_declaring_8_gb_is_refused_before_reading(tmp_path):
    raw = huge_processed(tmp_path / "bomb.h5")
    assert raw.stat().st_size < 2 * 1024**2
    out = tmp_path / "ds.h5"
    done = subprocess.run(
        [sys.executable, "-c", BOMB_RUN.format(raw=str(raw), out=str(out))],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("exit 2"), done.stdout + done.stderr
    assert float(line.split()[-1]) < 1024, line  # the declaration would need 8 GB
    assert "Traceback" not in done.stderr and done.stderr.count("silr: error:") == 1
    assert "memory budget" in done.stderr and not out.exists()
