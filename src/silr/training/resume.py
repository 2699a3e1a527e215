"""Resume state of a training run: what it is, where it is kept, whether a state belongs to
this run, and the random states that make a resumed run end where an uninterrupted one ends.

The state of a run lives outside DVC's outputs, in a resume store: `.silr/resume/` in the
workspace, or the folder `$SILR_RESUME_DIR` names (an absolute path shared by every
workspace: queued experiments, other clones on one machine), as
`<store>/<loss>/fold<k>/seed<s>/<run hash>.pt`. Outside the outputs, because DVC's run-cache skips
every stage with a `persist` output; keyed by the run hash, so that runs of other params
(a sweep in parallel workers) never overwrite each other's state.

A state may be resumed only when it was written for the same params, data, code and
device type (`RunIdentity`). The code part is the hash of the source of every `silr`
module the training stage imports, directly or indirectly, found by reading the imports
(`imported_modules`), so that an edit to any of them (say `silr.core.coords`) makes DVC rerun
the stage *and* makes the rerun retrain instead of handing back the old weights.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from silr.core.errors import CheckpointError
from silr.core.params import stable_hash
from silr.data.splits import Fold
from silr.model import checkpoint

__all__ = [
    "DEFAULT_RESUME_DIR", "RESUME_DIR_ENV", "RESUME_FORMAT_VERSION", "ResumeState", "RunIdentity",
    "code_hash", "data_hash_of", "file_sha256", "find_resume_state", "imported_modules",
    "prune_finished_states", "read_resume_state", "restore_rng_states", "resume_root", "rng_states",
    "run_folder", "seed_everything", "state_path",
]

RESUME_FORMAT_VERSION = 1
RESUME_DIR_ENV = "SILR_RESUME_DIR"
DEFAULT_RESUME_DIR = ".silr/resume"
TRAINING_ENTRY_MODULE = "silr.stages.train"
PACKAGE = "silr"


# ------------------------------------------------------------------ identity

@dataclass
class RunIdentity:
    """The hashes a resumable checkpoint must match."""

    params_hash: str
    data_hash: str
    code_hash: str
    device: str

    def to_dict(self) -> dict[str, str]:
        return {"params": self.params_hash, "data": self.data_hash, "code": self.code_hash,
                "device": self.device}

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> RunIdentity:
        return cls(params_hash=data["params"], data_hash=data["data"], code_hash=data["code"],
                   device=data["device"])

    @property
    def run_hash(self) -> str:
        return stable_hash(self.to_dict())

    def differences(self, stored: Mapping[str, Any]) -> list[str]:
        return [name for name, value in self.to_dict().items() if stored.get(name) != value]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_hash_of(data_path: str | Path, fold: Fold) -> str:
    """Hash of the processed file's bytes and of the fold's split (train / val / test frames)."""
    split = {"train": [list(k) for k in fold.train], "val": [list(k) for k in fold.val],
             "test": [list(k) for k in fold.test], "test_specimen": fold.test_specimen}
    return stable_hash({"file": file_sha256(data_path), "split": split})


def _module_file(name: str) -> Path | None:
    """The source file of module `name` (a package's __init__.py), or None if it is not a module."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _imports_of(name: str, source: str) -> set[str]:
    """Every `silr...` module named by an import anywhere in `source` (function-level imports too,
    since the stage imports heavy modules lazily), with the packages that hold them."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = name.rsplit(".", node.level)[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            # `from silr import coords` names a module; `from silr.x import f` names a function.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    modules = set()
    for candidate in found:
        if candidate != PACKAGE and not candidate.startswith(PACKAGE + "."):
            continue
        parts = candidate.split(".")
        # Importing silr.a.b runs silr/__init__.py and silr/a/__init__.py as well.
        modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {module for module in modules if _module_file(module) is not None}


def imported_modules(entry: str = TRAINING_ENTRY_MODULE) -> dict[str, Path]:
    """{module name: source file} of `entry` and every silr module it imports, transitively."""
    seen: dict[str, Path] = {}
    pending = [entry]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            raise ModuleNotFoundError(f"{name}: no Python source to hash for the resume identity")
        seen[name] = path
        pending.extend(sorted(_imports_of(name, path.read_text()) - set(seen)))
    return dict(sorted(seen.items()))


def code_hash(modules: Iterable[tuple[str, Path]] | None = None) -> str:
    """Hash of the names and source bytes of the training stage's modules (`imported_modules`)."""
    digest = hashlib.sha256()
    for name, path in (modules if modules is not None else imported_modules().items()):
        digest.update(name.encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------ random states

def seed_everything(seed: int, generator: torch.Generator) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    generator.manual_seed(seed)


def rng_states(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a run touches (plain values and tensors: weights_only-loadable)."""
    numpy_state = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": numpy_state[0], "key": torch.from_numpy(numpy_state[1].astype(np.int64)),
                  "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]),
                  "cached_gaussian": float(numpy_state[4])},
        "python": [version, list(internal), gauss],
        "augment": generator.get_state(),
    }


def restore_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["key"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"],
                         numpy_state["cached_gaussian"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    generator.set_state(states["augment"])


# ------------------------------------------------------------------ the state in last.pt

@dataclass(frozen=True)
class ResumeState:
    """A run's state in the resume store: the checkpoint's `resume` entry (`to_dict`, plain values
    and tensors, loadable with weights_only=True) and the network's weights, which the checkpoint
    stores beside it as its "model_state"."""

    identity: RunIdentity  # the run that wrote it
    epoch: int  # completed epochs
    finished: bool
    optimizer: dict[str, Any]  # the optimiser's state_dict
    rng: dict[str, Any]  # every random state (`rng_states`)
    best_score: float | None
    best_epoch: int
    best_state: dict[str, torch.Tensor] | None  # the best weights so far (CPU tensors)
    history: list[dict[str, float]]  # one entry per completed epoch
    model_state: dict[str, torch.Tensor] | None = None  # the weights; not part of `to_dict`

    def to_dict(self) -> dict[str, Any]:
        """The `resume` entry of the state file: everything but the network's weights."""
        return {
            "version": RESUME_FORMAT_VERSION,
            "identity": self.identity.to_dict(),
            "run_hash": self.identity.run_hash,
            "epoch": self.epoch,
            "finished": self.finished,
            "optimizer": self.optimizer,
            "scheduler": None,  # constant learning rate (the paper's AdamW at 1e-4)
            "rng": self.rng,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "history": self.history,
            "dvclive_step": len(self.history),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any],
                  model_state: dict[str, torch.Tensor] | None = None) -> ResumeState:
        """The state from a `resume` entry (and the checkpoint's weights); KeyError, TypeError or
        ValueError when an entry is missing or of the wrong kind."""
        return cls(identity=RunIdentity.from_dict(data["identity"]), epoch=int(data["epoch"]),
                   finished=bool(data["finished"]), optimizer=dict(data["optimizer"]),
                   rng=dict(data["rng"]), best_score=data["best_score"],
                   best_epoch=int(data["best_epoch"]), best_state=data["best_state"],
                   history=list(data["history"]), model_state=model_state)


def read_resume_state(path: Path, identity: RunIdentity) -> tuple[ResumeState | None, str]:
    """(the resume state of last.pt with its weights, "") or (None, why not)."""
    if not path.exists():
        return None, ""
    try:
        payload = checkpoint.read_checkpoint(path)
    except CheckpointError as exc:
        return None, f"ignoring {exc}; starting from scratch"
    unreadable = (f"ignoring {path}: it holds no resume state this silr can read; "
                  f"starting from scratch")
    resume = payload.get("resume")
    if not isinstance(resume, dict) or resume.get("version") != RESUME_FORMAT_VERSION:
        return None, unreadable
    different = identity.differences(resume.get("identity", {}))
    if different:
        return None, (f"ignoring {path}: it was written for different {', '.join(different)} "
                      f"(run hash {resume.get('run_hash')}, this run {identity.run_hash}); "
                      f"starting from scratch")
    try:
        return ResumeState.from_dict(resume, payload["model_state"]), ""
    except (KeyError, TypeError, ValueError):
        return None, unreadable


# ------------------------------------------------------------------ the resume store

def resume_root(explicit: str | Path | None = None) -> Path:
    """The resume store: `explicit`, else $SILR_RESUME_DIR, else `.silr/resume` (relative to the
    workspace)."""
    return Path(explicit or os.environ.get(RESUME_DIR_ENV) or DEFAULT_RESUME_DIR)


def run_folder(root: str | Path, loss_name: str, fold: int, seed: int) -> Path:
    """The store's folder of (loss, fold, training seed): runs of other seeds never prune each
    other's states, and the same seed asked for twice (train.seed again in study.seeds) finds the
    finished state and re-emits it instead of training again."""
    return Path(root) / loss_name / f"fold{fold}" / f"seed{seed}"


def state_path(folder: Path, identity: RunIdentity) -> Path:
    return folder / f"{identity.run_hash}.pt"


def find_resume_state(folder: Path, identity: RunIdentity) -> tuple[ResumeState | None, str]:
    """The resume state of this run in `folder`, or (None, why there is none worth saying).

    When only states of other runs of the same loss and fold are there, the message names the
    newest one and what differs (params, data, code, device), so a rerun that starts from
    scratch says why."""
    own = state_path(folder, identity)
    if own.exists():
        return read_resume_state(own, identity)
    others = sorted(folder.glob("*.pt"), key=lambda path: path.stat().st_mtime, reverse=True) \
        if folder.is_dir() else []
    for other in others:
        _, message = read_resume_state(other, identity)
        if message:
            return None, message
    return None, ""


def prune_finished_states(folder: Path, keep: Path) -> list[Path]:
    """Delete the finished states of other runs of this loss and fold (their results are in DVC's
    run-cache); unfinished ones stay, since another worker may be resuming them. Returns the
    deleted."""
    deleted = []
    for other in folder.glob("*.pt") if folder.is_dir() else []:
        if other == keep:
            continue
        try:
            resume = checkpoint.read_checkpoint(other).get("resume")
        except CheckpointError:
            continue  # not ours to judge (or being written): leave it
        if isinstance(resume, dict) and resume.get("finished"):
            other.unlink(missing_ok=True)
            deleted.append(other)
    return deleted
