"""Atomic outputs: a stage killed or failing mid-write leaves the previous complete file or none.

- `silr.core.io.atomic_path` and its helpers: the temporary name, publish-on-success, the
  previous file kept on an exception or a full disk, no temporary file left behind.
- The stage writers (checkpoints, predictions CSV, plots) failing half way through a file.
- A real `silr synth` process SIGKILLed while its HDF5 file is being written.
- A scan of src/silr: every call that writes a file outside silr.core.io writes to a temporary
  name that silr.core.io publishes, never to the final path.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fullres_writer import Specimen, blank_frame, write_fullres  # noqa: E402
from silr.core import io as silr_io  # noqa: E402
from silr.core.errors import OutputError  # noqa: E402
from silr.core.io import TMP_PREFIX, atomic_path, ensure_writable, write_json, write_with  # noqa: E402

SRC = Path(silr_io.__file__).parents[1]
SILR = Path(sys.executable).parent / "silr"


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(TMP_PREFIX))


# ------------------------------------------------------------------ silr.core.io


def test_block_writes_a_hidden_temporary_beside_the_target_with_its_suffix(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    with atomic_path(target) as tmp:
        assert (
            tmp.parent == target.parent and tmp.name.startswith(TMP_PREFIX) and tmp.suffix == ".csv"
        )
        tmp.write_text("a,b\n")
        assert not target.exists()  # nothing is published before the block ends
    assert target.read_text() == "a,b\n"
    assert leftovers(target.parent) == []


def test_exception_in_the_block_keeps_the_previous_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"mean_px": 1.5})
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="writer died"), atomic_path(target) as tmp:
        tmp.write_text('{"mean_px": 9')  # half a file
        raise RuntimeError("writer died")
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_exception_with_no_previous_file_leaves_nothing(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        with h5py.File(tmp, "w") as f:
            f["x"] = np.arange(3)
        raise ValueError("late failure")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_is_an_output_error_and_keeps_the_previous_file(tmp_path):
    target = tmp_path / "best.pt"
    target.write_bytes(b"previous checkpoint")

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputError) as caught:
        write_with(target, writer)
    assert str(caught.value) == f"{target}: cannot write: No space left on device"
    assert target.read_bytes() == b"previous checkpoint"
    assert leftovers(tmp_path) == []


def test_a_writer_that_writes_nothing_publishes_nothing(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old plot")
    with pytest.raises(OutputError, match="the writer produced no file"):
        write_with(target, lambda tmp: None)
    assert target.read_bytes() == b"old plot"


def test_json_is_stable_and_nan_becomes_null(tmp_path):
    target = tmp_path / "summary.json"
    write_json(target, {"b": float("nan"), "a": np.float32(0.5), "c": [np.int64(3), float("inf")]})
    assert (
        target.read_text() == '{\n  "a": 0.5,\n  "b": null,\n  "c": [\n    3,\n    null\n  ]\n}\n'
    )
    assert json.loads(target.read_text())["b"] is None


def test_ensure_writable_probes_without_leaving_anything(tmp_path):
    target = tmp_path / "a" / "b" / "fold1.csv"
    ensure_writable(target)
    assert target.parent.is_dir() and list(target.parent.iterdir()) == []
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(OutputError, match="is a directory, expected a file path"):
        ensure_writable(tmp_path / "dir.csv")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="file is a file, expected a directory"):
        ensure_writable(tmp_path / "file" / "x" / "out.json")


# ------------------------------------------------------------------ stage writers failing half way


def half_then_fail(path_argument: int):
    """A stand-in writer: half a file at its path (or open file) argument, then a crash."""

    def write(*args, **kwargs):
        target = args[path_argument]
        if hasattr(target, "write"):
            target.write(b"\x00" * 100)
            target.flush()
        else:
            Path(target).write_bytes(b"\x00" * 100)
        raise RuntimeError("killed mid-write")

    return write


def test_checkpoint_write_failing_half_way_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import torch

    from silr.core.params import Params
    from silr.model import checkpoint
    from silr.model.card import ModelCard

    card = ModelCard.for_run(
        Params(),
        loss_name="proposed",
        fold=1,
        data_hash="d",
        params_hash="p",
        val_score_px=None,
        epoch=0,
    )
    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint(path, {"w": torch.ones(2)}, card)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", half_then_fail(1))
    with pytest.raises(RuntimeError):
        checkpoint.save_checkpoint(path, {"w": torch.zeros(2)}, card)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_predictions_csv_and_plot_failing_half_way_leave_the_previous_files(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.figure import Figure

    from silr.evaluation import plots, results

    csv = tmp_path / "per_specimen.csv"
    png = tmp_path / "figure1.png"
    csv.write_text("old table\n")
    png.write_bytes(b"old png")
    table = pd.DataFrame({"a": [1.0]})
    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail(1))
    with pytest.raises(RuntimeError):
        write_with(csv, lambda tmp: table.to_csv(tmp))  # how report and evaluate write their CSVs
    monkeypatch.setattr(Figure, "savefig", half_then_fail(1))
    figure = plt.figure()
    with pytest.raises(RuntimeError):
        plots.save_png(figure, png)
    plt.close(figure)
    assert csv.read_text() == "old table\n" and png.read_bytes() == b"old png"
    assert leftovers(tmp_path) == []
    assert results.write_with is write_with  # report and evaluate write through results.write_csv


# ------------------------------------------------------------------ a real process, SIGKILLed


def kill_synth_mid_write(target: Path, timeout: float = 180.0) -> tuple[int, int]:
    """Start `silr synth` on `target`, SIGKILL it once its temporary file holds data; returns
    (bytes in the temporary file when killed, exit status)."""
    process = subprocess.Popen(
        [
            str(SILR),
            "synth",
            "--out",
            str(target),
            "--specimens",
            "4",
            "--frames",
            "6",
            "--seed",
            "3",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    size = 0
    try:
        while time.monotonic() < deadline and process.poll() is None:
            temporaries = list(target.parent.glob(f"{TMP_PREFIX}*-{target.name}"))
            size = temporaries[0].stat().st_size if temporaries else 0
            if size >= 256 * 1024:  # the file is being written: kill it now
                break
            time.sleep(0.02)
        assert process.poll() is None, (
            f"silr synth ended ({process.returncode}) before it could be killed "
            f"mid-write: {process.stderr.read().decode()[-2000:]}"
        )
        assert size >= 256 * 1024, "no growing temporary file appeared"
        process.send_signal(signal.SIGKILL)
        return size, process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def test_sigkill_mid_write_keeps_the_previous_complete_file(tmp_path):
    target = tmp_path / "phantom_full_res.h5"
    write_fullres(target, [Specimen("17-1882", [blank_frame(32), blank_frame(32, rot180=1)])])
    before = target.read_bytes()

    size, status = kill_synth_mid_write(target)

    assert status == -signal.SIGKILL and size > 0
    assert target.read_bytes() == before  # the previous version, byte for byte
    with h5py.File(target, "r") as f:  # and still a complete, readable file
        assert np.array_equal(f["17-1882/projections/001/rot-180-for-up"][()], 1)
    # What a kill leaves: at most the hidden temporary file, never a second visible one.
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(TMP_PREFIX))
    assert visible == [target.name]


def test_sigkill_mid_write_without_previous_file_leaves_none(tmp_path):
    target = tmp_path / "phantom_full_res.h5"
    size, status = kill_synth_mid_write(target)
    assert status == -signal.SIGKILL and size > 0
    assert not target.exists()
    assert all(p.name.startswith(TMP_PREFIX) for p in tmp_path.iterdir())


# ------------------------------------------------------------------ the source scan

WRITE_MODES = ("w", "a", "x", "+")


class WriteScan(ast.NodeVisitor):
    """Calls in one module that write a file, and the expression of the path they write."""

    def __init__(self) -> None:
        self.sinks: list[
            tuple[ast.Call, ast.expr, list[ast.AST]]
        ] = []  # call, path, enclosing nodes
        self.stack: list[ast.AST] = []

    def generic_visit(self, node: ast.AST) -> None:
        self.stack.append(node)
        super().generic_visit(node)
        self.stack.pop()

    def visit_Call(self, node: ast.Call) -> None:
        path = sink_path(node)
        if path is not None:
            self.sinks.append((node, path, list(self.stack)))
        self.generic_visit(node)


def _mode(node: ast.Call, position: int) -> str:
    value = (
        node.args[position]
        if len(node.args) > position
        else next((k.value for k in node.keywords if k.arg == "mode"), None)
    )
    return value.value if isinstance(value, ast.Constant) and isinstance(value.value, str) else "r"


def sink_path(node: ast.Call) -> ast.expr | None:
    """The path argument of a file-writing call, or None for any other call."""
    func = node.func
    name = (
        func.attr
        if isinstance(func, ast.Attribute)
        else func.id
        if isinstance(func, ast.Name)
        else ""
    )
    owner = (
        func.value.id
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
        else ""
    )
    first = node.args[0] if node.args else None
    if name in ("File", "ZipFile") or (name == "open" and owner in ("", "io", "gzip", "bz2")):
        return first if any(m in _mode(node, 1) for m in WRITE_MODES) else None
    if name == "save" and owner == "torch":
        return node.args[1] if len(node.args) > 1 else None
    if owner in ("np", "numpy") and name in ("save", "savez", "savez_compressed", "savetxt"):
        return first
    if name in ("savefig", "to_csv", "to_parquet", "to_hdf", "imwrite", "tofile") or (
        name == "save" and owner != "torch"
    ):
        return first
    if isinstance(func, ast.Attribute) and name in ("write_text", "write_bytes", "touch"):
        return func.value  # Path(...).write_text(...): the receiver is the path
    if owner in ("os", "shutil") and name in (
        "replace",
        "rename",
        "copy",
        "copy2",
        "copyfile",
        "move",
    ):
        return node.args[1] if len(node.args) > 1 else None
    return None


def _bound_by_atomic_path(name: str, enclosing: list[ast.AST]) -> bool:
    for node in enclosing:
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if (
                    isinstance(call, ast.Call)
                    and getattr(call.func, "id", getattr(call.func, "attr", "")) == "atomic_path"
                    and isinstance(item.optional_vars, ast.Name)
                    and item.optional_vars.id == name
                ):
                    return True
    return False


def _opened_path(name: str, enclosing: list[ast.AST]) -> ast.expr | None:
    """X in an enclosing `with open(X, "wb") as name`: the path a stream writes to."""
    for node in enclosing:
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if (
                    isinstance(call, ast.Call)
                    and getattr(call.func, "id", "") == "open"
                    and call.args
                    and isinstance(item.optional_vars, ast.Name)
                    and item.optional_vars.id == name
                ):
                    return call.args[0]
    return None


def _in_memory(name: str, enclosing: list[ast.AST]) -> bool:
    """`name = io.BytesIO()` in an enclosing function: a buffer, not a file."""
    for node in enclosing:
        if isinstance(node, (ast.FunctionDef, ast.Lambda)):
            for sub in ast.walk(node):
                if (
                    isinstance(sub, ast.Assign)
                    and any(getattr(t, "id", None) == name for t in sub.targets)
                    and isinstance(sub.value, ast.Call)
                    and getattr(sub.value.func, "attr", "") in ("BytesIO", "StringIO")
                ):
                    return True
    return False


def _params(function: ast.FunctionDef | ast.Lambda) -> list[str]:
    return [a.arg for a in function.args.posonlyargs + function.args.args]


class Checker:
    """Decides whether a path expression names a temporary file of silr.core.io."""

    def __init__(self, modules: dict[str, ast.Module]) -> None:
        self.modules = modules
        self.calls: dict[str, list[tuple[ast.Call, list[ast.AST]]]] = {}
        for tree in modules.values():
            self._index_calls(tree, [])

    def _index_calls(self, node: ast.AST, stack: list[ast.AST]) -> None:
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            self.calls.setdefault(name, []).append((node, list(stack)))
        for child in ast.iter_child_nodes(node):
            self._index_calls(child, stack + [node])

    def safe(self, path: ast.expr, enclosing: list[ast.AST], depth: int = 0) -> bool:
        if not isinstance(path, ast.Name) or depth > 5:
            return False
        name = path.id
        if _bound_by_atomic_path(name, enclosing) or _in_memory(name, enclosing):
            return True
        opened = _opened_path(name, enclosing)
        if opened is not None:  # a stream is as safe as the path it was opened on
            return self.safe(opened, enclosing, depth + 1)
        function = next(
            (
                n
                for n in reversed(enclosing)
                if isinstance(n, (ast.FunctionDef, ast.Lambda)) and name in _params(n)
            ),
            None,
        )
        if function is None:
            return False
        position = _params(function).index(name)
        if isinstance(function, ast.Lambda):
            # write_with(path, lambda tmp: ...): the lambda's argument is silr.core.io's
            # temporary name.
            parent = enclosing[enclosing.index(function) - 1] if function in enclosing else None
            return (
                isinstance(parent, ast.Call)
                and getattr(parent.func, "id", getattr(parent.func, "attr", "")) == "write_with"
                and len(parent.args) > 1
                and parent.args[1] is function
                and position == 0
            )
        calls = self.calls.get(function.name, [])
        passed_to_write_with = [
            c
            for c, _ in self.calls.get("write_with", [])
            if len(c.args) > 1 and getattr(c.args[1], "id", None) == function.name
        ]
        if passed_to_write_with and position == 0:
            return True
        # A helper that writes in place to the path its callers give it (write_phantom,
        # write_processed): every caller must pass a temporary name.
        if not calls:
            return False
        for call, stack in calls:
            argument = (
                call.args[position]
                if len(call.args) > position
                else next((k.value for k in call.keywords if k.arg == name), None)
            )
            if argument is None or not self.safe(argument, stack, depth + 1):
                return False
        return True


def scan_sources(sources: dict[str, str]) -> tuple[list[str], list[str]]:
    """(writes that are safe, writes to a final path) as 'module:line' strings."""
    modules = {name: ast.parse(text) for name, text in sources.items()}
    checker = Checker(modules)
    safe, unsafe = [], []
    for name, tree in modules.items():
        scan = WriteScan()
        scan.visit(tree)
        for call, path, enclosing in scan.sinks:
            where = f"{name}:{call.lineno}"
            (safe if checker.safe(path, enclosing) else unsafe).append(where)
    return safe, unsafe


def package_sources() -> dict[str, str]:
    return {
        str(p.relative_to(SRC)): p.read_text()
        for p in sorted(SRC.rglob("*.py"))
        if p.name != "io.py"
    }


def test_every_stage_writes_through_silr_io():
    safe, unsafe = scan_sources(package_sources())
    assert unsafe == [], f"files written directly at their final path (use silr.core.io): {unsafe}"
    # The scan sees the real writers (else it would pass by seeing nothing).
    modules = {where.split(":")[0] for where in safe}
    assert {
        "model/checkpoint.py",
        "stages/synth.py",
        "data/processed.py",
        "evaluation/plots.py",
        "evaluation/results.py",
        "inference/writers.py",
    } <= modules, safe


def test_scan_catches_writes_to_final_paths():
    sources = {
        "bad.py": """
import h5py, torch
from silr.core.io import atomic_path, write_with

def write_direct(path):
    with h5py.File(path, "w") as f:
        f["x"] = 1

def stage(out):
    write_direct(out)                      # a helper writing in place, called with the final path
    torch.save({}, out)                    # the final path
    with atomic_path(out) as tmp:
        torch.save({}, tmp)                # fine
    write_with(out, lambda tmp: open(tmp, "w").write("x"))   # fine
    with open(out, "a") as handle:         # appending to the final path
        handle.write("x")
    out.write_text("x")                    # Path.write_text on the final path
    with atomic_path(out) as tmp, open(tmp, "wb") as stream:
        torch.save({}, stream)             # fine: a stream on the temporary name
    with open(out, "wb") as stream:        # the final path ...
        torch.save({}, stream)             # ... and a stream on it
"""
    }
    safe, unsafe = scan_sources(sources)
    assert unsafe == ["bad.py:6", "bad.py:11", "bad.py:15", "bad.py:17", "bad.py:20", "bad.py:21"]
    assert safe == ["bad.py:13", "bad.py:14", "bad.py:18", "bad.py:19"]
