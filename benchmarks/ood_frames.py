"""What `silr predict` says about frames that are not what the models were trained on.

  python benchmarks/ood_frames.py --model models/proposed_plus/fold1/best.pt
      [--data data/processed/ds_8x.h5] [--folds data/folds.json] [--out /tmp/ood_frames]

Inputs, all written here from files the project has (nothing downloaded):
- `heldout.png`: the first test frame of the model's fold (the control), as a 16-bit PNG;
- `inverted.png`: the same frame inverted (bone dark), as a user with a raw viewer's export
  might give it;
- `ct_slice.dcm` / `ct_slice.png`: a real axial CT slice (pydicom's bundled `CT_small.dcm`,
  Modality CT), as DICOM and the same pixels as a PNG (no tag to go by: presence alone);
- `mr_slice.png`: pydicom's bundled `MR_small.dcm` as a PNG;
- `noise.png`: uniform noise.
Runs the command exactly as a user would (`silr predict --model ... --out ... INPUTS`) and
prints, per input, how many landmarks are called present, the mean score, the mean error
against the ground truth where there is one, and every `silr: warning:` line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file

from silr.data.processed import read_processed
from silr.data.splits import load_folds
from silr.model import checkpoint


def to_png16(path: Path, pixels: np.ndarray) -> None:
    pixels = np.asarray(pixels, dtype=np.float64)
    scaled = (pixels - pixels.min()) / max(float(np.ptp(pixels)), 1e-12)
    Image.fromarray(np.round(scaled * 65535).astype(np.uint16)).save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", required=True)
    parser.add_argument("--data", default="data/processed/ds_8x.h5")
    parser.add_argument("--folds", default="data/folds.json")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ood_frames"))
    args = parser.parse_args()

    card = checkpoint.read_checkpoint(args.model[0])["card"]
    data = read_processed(args.data)
    specimen, frame = sorted(load_folds(args.folds, data)[card.fold].test)[0]
    image = data.specimens[specimen].images[frame]
    truth = data.specimens[specimen].landmarks_xy[frame]
    inputs = args.out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    to_png16(inputs / "heldout.png", image)
    to_png16(inputs / "inverted.png", image.max() - image)
    ct = get_testdata_file("CT_small.dcm")
    (inputs / "ct_slice.dcm").write_bytes(Path(ct).read_bytes())
    to_png16(inputs / "ct_slice.png", pydicom.dcmread(ct).pixel_array)
    to_png16(inputs / "mr_slice.png",
             pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array)
    to_png16(inputs / "noise.png", np.random.default_rng(0).random((180, 180)))
    names = ["heldout.png", "inverted.png", "ct_slice.dcm", "ct_slice.png", "mr_slice.png",
             "noise.png"]
    command = ["silr", "predict", "--model", *args.model, "--out", str(args.out / "predictions"),
               *(str(inputs / n) for n in names)]
    done = subprocess.run(command, capture_output=True, text=True)
    print("$ " + " ".join(command).replace(str(args.out), "OUT"))
    print(f"exit status {done.returncode}; models: {', '.join(args.model)}; control frame: "
          f"specimen {specimen}, frame {frame} (the fold's first test frame)\n")
    print(f"{'input':<14} {'present':>8} {'mean score':>11} {'mean error px':>14}  warnings")
    for name in names:
        stem = Path(name).stem
        record_path = args.out / "predictions" / f"{stem}_landmarks.json"
        if not record_path.exists():  # inputs sharing a stem carry their type: ct_slice_png_*
            record_path = (args.out / "predictions"
                           / f"{stem}_{Path(name).suffix.lstrip('.')}_landmarks.json")
        if not record_path.exists():
            print(f"{name:<14} failed")
            continue
        record = json.loads(record_path.read_text())
        rows = record["landmarks"]
        present = sum(row["present"] for row in rows)
        score = np.mean([row["score"] for row in rows])
        error = "-"
        if name in ("heldout.png", "inverted.png"):
            xy = np.array([[row["frame_x"], row["frame_y"]] for row in rows])
            inside = np.isfinite(truth).all(1) & (truth >= 0).all(1) & (truth <= 179).all(1)
            error = f"{np.linalg.norm(xy - truth, axis=1)[inside].mean():.2f}"
        # the input's own warnings, from its record (stderr interleaves them with the progress bar)
        own = record.get("warnings", [])
        print(f"{name:<14} {present:>5}/14 {score:>11.3f} {error:>14}  {len(own)}")
        for line in own:
            print(f"    {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
