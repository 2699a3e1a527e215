"""Kill a queue worker's training mid-run, then run silr parallel again: does it resume?

  python benchmarks/queue_kill_resume.py [WORKDIR]     (default /tmp/silr-killexp; a few minutes)

A tiny study (1 loss x 2 folds, 12 epochs) in a fresh copy of this repository: `silr parallel
--jobs 2 --keep`; once fold 1's training has saved epoch 3, its `silr train` process is
SIGKILLed; then `silr parallel` runs again. Prints both runs' messages, the queue, the
resumed experiment's log lines and the epochs in the final training state.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

# tests/ is not a package: the fresh-copy helper of the end-to-end tests is imported from its path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_e2e import fresh_copy  # noqa: E402

root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/silr-killexp")
shutil.rmtree(root, ignore_errors=True)
root.mkdir()
fresh_copy(root)
params = yaml.safe_load((root / "params.yaml").read_text())
params["synth"].update({"frames": [3, 3, 3]})
params["model"].update({"backbone": "hrnet_w18_small", "decoder_channels": []})
params["train"].update({"epochs": 12, "val_every": 1, "batch_size": 2, "device": "cpu"})
params["study"].update({"losses": ["proposed"], "folds": [1, 2]})
(root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
       "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
env.pop("PYTHONPATH", None)
subprocess.run(["git", "add", "-A"], cwd=root, env=env, check=True)
subprocess.run(["git", "commit", "-qm", "tiny"], cwd=root, env=env, check=True)
first = subprocess.Popen(["silr", "parallel", "--jobs", "2", "--keep"], cwd=root, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
store = root / ".silr" / "resume" / "proposed" / "fold1"


def epoch():
    for p in store.glob("*.pt"):
        try:
            return int(torch.load(p, weights_only=True)["resume"]["epoch"])
        except Exception:
            pass
    return 0


while epoch() < 3 and first.poll() is None:
    time.sleep(0.5)
killed_at = epoch()
pids = subprocess.run(["pgrep", "-f", "silr train --loss proposed --fold 1"], capture_output=True,
                      text=True).stdout.split()
for pid in pids:
    os.kill(int(pid), signal.SIGKILL)
print("killed", pids, "at epoch", killed_at, flush=True)
out, err = first.communicate()
print("first silr parallel exit", first.returncode)
print(err[-1500:])
second = subprocess.run(["silr", "parallel", "--jobs", "2", "--keep"], cwd=root, env=env,
                        capture_output=True, text=True)
print("second silr parallel exit", second.returncode)
print(second.stderr[-1200:])
status = subprocess.run(["dvc", "queue", "status"], cwd=root, env=env, capture_output=True,
                        text=True).stdout
print(status)
for line in status.splitlines():
    if "fold1" in line and "Success" in line:
        name = line.split()[1]
        logs = subprocess.run(["dvc", "queue", "logs", name], cwd=root, env=env,
                              capture_output=True, text=True).stdout
        print([row for row in logs.splitlines()
               if "resuming" in row or "already trained" in row or "best validation" in row])
state = next(store.glob("*.pt"))
hist = torch.load(state, weights_only=True)["resume"]["history"]
print("epochs in the final state's history:", [h["epoch"] for h in hist])
