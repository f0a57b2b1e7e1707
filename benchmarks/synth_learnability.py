"""Can a small CNN learn the 12 DISFA AUs from the synthetic world's 64x64 crops?

Generates a celeb world (written in the real formats), reads it back the way real data is read
(TSV -> JPEG, FaceRectangle -> face box, OpenFace CSVs via pipeline.labels.openface, truth.csv),
crops each face with the corpus's face stage (pipeline.faces, given the generator's box: box + 20%
margin on each side, zero-padded square, grayscale, 64x64),
then trains the same small CNN twice on people 1..80%: once on the true labels, once on the noisy
labeler's labels; both are scored (F1 per AU, threshold 0.5) against the truth on the held-out 20%
of people. Writes benchmarks/results/synth_learnability.json and a contact sheet PNG.

    python benchmarks/synth_learnability.py                     # the full run (~10 min, 2 cores)
    python benchmarks/synth_learnability.py --people 60 --epochs 2   # a smoke run
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.faces import FaceConfig, FaceProcessor  # noqa: E402
from pipeline.labels.openface import read_openface_image_csvs  # noqa: E402
from pipeline.names import msceleb_image_name  # noqa: E402
from pipeline.synth.celeb_world import TRUTH_NAME, TSV_NAME, generate_celeb  # noqa: E402
from pipeline.vocabulary import DISFA_AUS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def read_world(out: Path) -> tuple[list[str], np.ndarray, list[str], list[tuple[str, np.ndarray]]]:
    """(image names, 64x64 crops, identities, (name, image) of 24 people) from the TSV."""
    names, crops, identities, samples, seen = [], [], [], [], set()
    # the corpus's own face stage, told the generator's box instead of detecting one
    faces = FaceProcessor(FaceConfig(detector="none", margin=0.2))
    with open(out / TSV_NAME, encoding="ascii") as tsv:
        for line in tsv:
            mid, rank, _, _, face_id, rectangle, data = line.rstrip("\n").split("\t")
            jpeg = base64.b64decode(data)
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            h, w = image.shape[:2]
            left, top, right, bottom = struct.unpack("<4f", base64.b64decode(rectangle))
            box = (
                round(left * w),
                round(top * h),
                round((right - left) * w),
                round((bottom - top) * h),
            )
            names.append(msceleb_image_name(mid, rank, face_id))
            identities.append(mid)
            face = faces.process(jpeg, known_box=box)
            if not face.accepted:
                raise ValueError(f"{out / TSV_NAME}: {names[-1]}: {face.reject_reason}")
            crops.append(np.frombuffer(face.face, np.uint8).reshape(64, 64))
            if len(samples) < 24 and mid not in seen:
                seen.add(mid)
                samples.append((names[-1], image))  # one image each of the first people
    return names, np.stack(crops), identities, samples


class SmallCnn(nn.Module):
    """Four conv blocks and a linear head: enough for 64x64 grayscale AU detection."""

    def __init__(self, outputs: int):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(1, 16), block(16, 32), block(32, 64), block(64, 64))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(64 * 4 * 4, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_and_score(
    crops: np.ndarray,
    train_labels: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    truth: np.ndarray,
    *,
    epochs: int,
    seed: int,
) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(crops).float().div_(255.0).unsqueeze(1)
    x = (x - x.mean()) / x.std()
    y = torch.from_numpy(train_labels.astype(np.float32))
    model = SmallCnn(y.shape[1])
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = max(1, epochs * (len(train_idx) // 64))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.BCEWithLogitsLoss()
    started = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = rng.permutation(train_idx)
        for start in range(0, len(order) - 63, 64):
            batch = torch.from_numpy(order[start : start + 64])
            xb = x[batch]
            shift = rng.integers(-2, 3, 2)  # small translation: crops are never perfectly aligned
            xb = torch.roll(xb, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            loss = loss_fn(model(xb), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[torch.from_numpy(test_idx[s : s + 256])])
                            for s in range(0, len(test_idx), 256)])  # fmt: skip
    predicted = (logits > 0).numpy()
    actual = truth[test_idx].astype(bool)
    per_au = {}
    for k, au in enumerate(DISFA_AUS):
        tp = int((predicted[:, k] & actual[:, k]).sum())
        denominator = int(predicted[:, k].sum() + actual[:, k].sum())
        per_au[au] = round(2 * tp / denominator, 4) if denominator else 1.0
    return {
        "macro_f1": round(float(np.mean(list(per_au.values()))), 4),
        "f1_per_au": per_au,
        "train_seconds": round(seconds, 1),
    }


def contact_sheet(samples: list[tuple[str, np.ndarray]], truth: pd.DataFrame, path: Path) -> None:
    """A grid of whole images, each captioned with its true DISFA AUs (intensity >= 2)."""
    tiles = []
    for name, image in samples:
        row = truth.loc[name]
        tile = cv2.resize(image, (160, 160), interpolation=cv2.INTER_AREA)
        tile = cv2.copyMakeBorder(tile, 0, 34, 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        aus = [au[2:] for au in DISFA_AUS if row[au] == 1]
        words = " ".join(aus) if aus else "neutral"
        for k, start in enumerate(range(0, max(len(words), 1), 24)):
            cv2.putText(tile, words[start : start + 24], (3, 174 + 14 * k),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
        tiles.append(tile)
    while len(tiles) % 6:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.hstack(tiles[i : i + 6]) for i in range(0, len(tiles), 6)]
    cv2.imwrite(str(path), np.vstack(rows), [cv2.IMWRITE_PNG_COMPRESSION, 9])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=400)
    parser.add_argument("--images-per-person", type=int, default=15)
    parser.add_argument("--rates", default="balanced", help="true AU rate table of the world")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", default=None, help="keep the generated world here (reused)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="synth-learn-"))
    started = time.perf_counter()
    if not (work / TSV_NAME).exists():
        generate_celeb(str(work), people=args.people, images_per_person=args.images_per_person,
                       seed=args.seed, rates=args.rates, use_ray=True, workers=2)  # fmt: skip
    generate_seconds = time.perf_counter() - started
    names, crops, identities, samples = read_world(work)
    truth = pd.read_csv(work / TRUTH_NAME).set_index("image_name").loc[names]
    noisy = read_openface_image_csvs(str(work / "openface")).to_pandas()
    noisy = noisy.set_index(noisy["image_name"] + ".jpg").loc[names]
    clean_y = truth[list(DISFA_AUS)].to_numpy()
    noisy_y = noisy[list(DISFA_AUS)].to_numpy()

    people = sorted(set(identities))
    held_out = set(np.random.default_rng(args.seed).permutation(people)[: len(people) // 5])
    is_test = np.array([mid in held_out for mid in identities])
    train_idx, test_idx = np.flatnonzero(~is_test), np.flatnonzero(is_test)

    clean = train_and_score(crops, clean_y, train_idx, test_idx, clean_y, epochs=args.epochs,
                            seed=args.seed)  # fmt: skip
    print("clean labels", json.dumps(clean))
    noisy_result = train_and_score(crops, noisy_y, train_idx, test_idx, clean_y,
                                   epochs=args.epochs, seed=args.seed)  # fmt: skip
    print("noisy labels", json.dumps(noisy_result))
    label_f1 = {}
    for k, au in enumerate(DISFA_AUS):
        t, n = clean_y[:, k].astype(bool), noisy_y[:, k].astype(bool)
        label_f1[au] = round(2 * int((t & n).sum()) / max(int(t.sum() + n.sum()), 1), 4)

    result = {
        "world": {
            "kind": "celeb",
            "rates": args.rates,
            "people": len(people),
            "images": len(names),
            "train_images": int(len(train_idx)),
            "test_images": int(len(test_idx)),
            "held_out_people": len(held_out),
            "generate_seconds": round(generate_seconds, 1),
            "true_rates": {
                au: round(float(clean_y[:, k].mean()), 4) for k, au in enumerate(DISFA_AUS)
            },
        },
        "crop": "pipeline.faces.FaceProcessor(detector=none) on the generator's FaceRectangle box: "
        "+20% margin per side, zero-padded square, gray, 64x64",
        "model": "4 conv blocks (16-32-64-64) + linear, AdamW one-cycle, batch 64",
        "epochs": args.epochs,
        "clean_labels": clean,
        "noisy_labels": noisy_result,
        "noisy_label_f1_vs_truth": {
            "macro_f1": round(float(np.mean(list(label_f1.values()))), 4),
            "f1_per_au": label_f1,
        },
        "targets": {"clean_macro_f1_at_least": 0.8, "noisy_lower": True},
        "passed": bool(clean["macro_f1"] >= 0.8 and noisy_result["macro_f1"] < clean["macro_f1"]),
        "cpu_count": os.cpu_count(),
        "torch_threads": args.threads,
    }
    (RESULTS / "synth_learnability.json").write_text(json.dumps(result, indent=2) + "\n")
    contact_sheet(samples, truth, RESULTS / "synth_contact_sheet.png")
    print(json.dumps({k: result[k] for k in ("passed", "epochs")}))


if __name__ == "__main__":
    main()
