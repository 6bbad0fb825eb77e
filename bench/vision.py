"""Benchmark vision/ on a folder of barcode photos: accuracy per symbology and latency.

    python bench/vision.py DIR [--json]

Every image under DIR (png, jpg, jpeg, gif, bmp, webp; recursively) is read with the default
``PyzbarCardReader`` on one thread. An image with a sibling ``NAME.txt`` is a *positive*: it is
correct when any returned barcode's text equals the file's text exactly, wrong when something
else was returned, none when nothing was. An image without one is a *negative* and must read to
nothing; anything returned is a false positive. The symbology of an image is its folder relative
to DIR (DIR's own name for images directly in it). ``n`` counts all images; ``negatives`` counts
the images without an expected text, and ``false_positives`` those of them that returned a
barcode. This prints numbers; it is not a test.

Alongside, on the same run: plain pyzbar (``pyzbar.decode`` on the opened picture, no pipeline)
as the baseline to beat, and the figures on a fixed *held-out* quarter of the images (chosen by a
hash of their path) that the cascade order was not tuned on. OCR models are loaded before timing.
Timings are the reader's own (wall clock, what a user waits) and the reading thread's CPU time;
the load average before and after is printed, since other processes inflate the wall figures.
Pin the run to one core for the "per photo on one core" figures: ``taskset -c 0 python ...``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import statistics
import sys
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

# This script is named like the package it measures: drop its own folder from the import path
# so ``import vision`` finds the package, and make the repository importable without installing.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from PIL import Image  # noqa: E402
from pyzbar.pyzbar import decode  # noqa: E402

from bench.premise import fail, require  # noqa: E402
from bot.democard import Shot, render_hard_card_photo  # noqa: E402
from vision import (  # noqa: E402
    DEFAULT_BUDGET_MS,
    PyzbarCardReader,
    symbols,
)
from vision.ocr import OCR_MISSING, RapidOcrDigitReader  # noqa: E402
from vision.symbols import CARD_SYMBOLS  # noqa: E402

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"})


@dataclass
class Tally:
    """Outcome counts and latencies of one group of images."""

    n: int = 0
    correct: int = 0
    wrong: int = 0
    none: int = 0
    false_positives: int = 0
    negatives: int = 0
    ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)

    def add(self, outcome: str, ms: float, cpu_ms: float | None = None) -> None:
        """Count one image's outcome: correct, wrong, none, negative or false_positive."""
        self.n += 1
        self.ms.append(ms)
        if cpu_ms is not None:
            self.cpu_ms.append(cpu_ms)
        if outcome in ("negative", "false_positive"):
            self.negatives += 1
            if outcome == "false_positive":
                self.false_positives += 1
        else:
            setattr(self, outcome, getattr(self, outcome) + 1)

    def summary(self) -> dict[str, float | int]:
        """The counts plus p50/p95 milliseconds, as plain numbers."""
        counts = {k: v for k, v in asdict(self).items() if k not in ("ms", "cpu_ms")}
        timings = {"p50_ms": percentile(self.ms, 50), "p95_ms": percentile(self.ms, 95)}
        if self.cpu_ms:
            timings |= {
                "p50_cpu_ms": percentile(self.cpu_ms, 50),
                "p95_cpu_ms": percentile(self.cpu_ms, 95),
            }
        return {**counts, **timings}


def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile (inclusive method), 0.0 for no values."""
    if not values:
        return 0.0
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1], 1)


def expected_text(image: Path) -> str | None:
    """The exact text an image must decode to, or None when it holds no barcode."""
    sibling = image.with_suffix(".txt")
    if not sibling.is_file():
        return None
    # Bytes, not text mode: payloads contain "\r\n" that universal newlines would rewrite.
    return sibling.read_bytes().decode("utf-8", errors="replace")


def images_under(root: Path) -> list[Path]:
    """Every image file below root, in a stable order."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def held_out(root: Path, image: Path) -> bool:
    """The fixed quarter of images kept out of tuning: first hex digit of md5(path) in 0–3."""
    name = image.relative_to(root).as_posix().encode("utf-8")
    return hashlib.md5(name).hexdigest()[0] in "0123"


def outcome_of(expected: str | None, texts: list[str]) -> str:
    """correct / wrong / none for an image with a barcode; negative / false_positive without."""
    if expected is None:
        return "false_positive" if texts else "negative"
    if expected in texts:
        return "correct"
    return "wrong" if texts else "none"


def plain_pyzbar(data: bytes) -> tuple[list[str], float]:
    """The baseline: pyzbar on the opened picture, card symbologies, no preprocessing."""
    began = time.perf_counter()
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as picture:
            warnings.simplefilter("ignore")  # Pillow's palette notes are not results
            found = decode(picture, symbols=CARD_SYMBOLS)
            texts = [symbols.normalise(f.type, symbols.decode_payload(f.data))[1] for f in found]
    except Exception:
        texts = []
    return texts, (time.perf_counter() - began) * 1000


@dataclass
class Run:
    """Tallies of one benchmark run: ours overall, per folder, held out; plain pyzbar's."""

    overall: Tally = field(default_factory=Tally)
    groups: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    held_out: Tally = field(default_factory=Tally)
    baseline: Tally = field(default_factory=Tally)
    baseline_held_out: Tally = field(default_factory=Tally)


def run(root: Path, reader: PyzbarCardReader, baseline: bool = True) -> Run:
    """Read every image under root with the reader (and plain pyzbar, unless told not to)."""
    result = Run()
    for image in images_under(root):
        expected = expected_text(image)
        data = image.read_bytes()
        cpu_began = time.thread_time()
        reading = reader.read_sync(data)
        cpu_ms = (time.thread_time() - cpu_began) * 1000
        outcome = outcome_of(expected, [barcode.text for barcode in reading.barcodes])
        result.overall.add(outcome, reading.ms, cpu_ms)
        folder = image.parent.relative_to(root).as_posix()
        group = result.groups[root.resolve().name if folder == "." else folder]
        group.add(outcome, reading.ms, cpu_ms)
        unseen = held_out(root, image)
        if unseen:
            result.held_out.add(outcome, reading.ms, cpu_ms)
        if baseline:
            texts, ms = plain_pyzbar(data)
            result.baseline.add(outcome_of(expected, texts), ms)
            if unseen:
                result.baseline_held_out.add(outcome_of(expected, texts), ms)
    result.groups = dict(sorted(result.groups.items()))
    return result


def print_table(result: Run) -> None:
    """Human-readable table: one line per symbology folder, the totals, the comparisons."""
    overall = result.overall
    header = f"{'symbology':<24}{'n':>5}{'correct':>9}{'wrong':>7}{'none':>6}{'fp/neg':>8}"
    print(header + f"{'p50 ms':>9}{'p95 ms':>9}{'p95 cpu':>9}")
    rows = [*result.groups.items(), ("TOTAL", overall), ("held-out quarter", result.held_out)]
    if result.baseline.n:
        rows += [
            ("plain pyzbar: TOTAL", result.baseline),
            ("plain pyzbar: held-out", result.baseline_held_out),
        ]
    for name, tally in rows:
        s = tally.summary()
        negatives = f"{tally.false_positives}/{tally.negatives}" if tally.negatives else "-"
        print(
            f"{name:<24}{tally.n:>5}{tally.correct:>9}{tally.wrong:>7}{tally.none:>6}"
            f"{negatives:>8}{s['p50_ms']:>9.1f}{s['p95_ms']:>9.1f}"
            f"{s.get('p95_cpu_ms', float('nan')):>9.1f}"
        )
    positives = overall.n - overall.negatives
    if positives:
        print(f"correct: {overall.correct / positives:.1%} of {positives} images with a barcode")
    print(f"false positives: {overall.false_positives} of {overall.negatives} images without one")


def random_shot(rng: random.Random) -> Shot:
    """A hard phone photo of a card: each hardship on with some chance, at a random strength."""
    big = rng.random() < 0.25
    canvas = (4000, 3000) if big else (1600, 1200)
    width = rng.uniform(0.3, 0.7) * canvas[0] if big else rng.uniform(700, 1400)
    return Shot(
        tilt_deg=rng.uniform(-60, 60) if rng.random() < 0.5 else rng.uniform(-8, 8),
        keystone=rng.uniform(0, 0.3) if rng.random() < 0.3 else 0.0,
        card_width_px=int(width),
        canvas=canvas,
        blur_px=rng.uniform(0.5, 3.5),
        noise=rng.uniform(1, 8),
        light=rng.choice([rng.uniform(0.3, 0.7), 1.0, rng.uniform(1.2, 1.6)]),
        glare=rng.uniform(0.5, 1.0) if rng.random() < 0.3 else 0.0,
        glare_at=(rng.uniform(0.2, 0.8), rng.uniform(0.4, 0.7)),
        jpeg_quality=rng.choice([90, 75, 50, 35]),
        thumb=(0.42, 0.3, 0.58, 0.71) if rng.random() < 0.15 else None,
    )


def run_synthetic(count: int, reader: PyzbarCardReader) -> dict[str, object]:
    """Read ``count`` seeded hard card photos (bot.democard): how often the number comes out
    of the barcode, of the printed digits only, or not at all; wrong numbers; latency."""
    rng = random.Random(20240601)
    by_barcode = by_digits_only = wrong = 0
    hinted: Counter[str] = Counter()
    ms: list[float] = []
    cpu: list[float] = []
    big_ms: list[float] = []  # 12-megapixel photos (tests check only that the plain pass reads)
    for index in range(count):
        number = "".join(rng.choice("0123456789") for _ in range(16))
        shot = random_shot(rng)
        photo = render_hard_card_photo(number, shot, brand_name=f"Brand {index}")
        began = time.thread_time()
        reading = reader.read_sync(photo)
        cpu.append((time.thread_time() - began) * 1000)
        ms.append(reading.ms)
        if shot.canvas == (4000, 3000):
            big_ms.append(reading.ms)
        texts = [barcode.text for barcode in reading.barcodes]
        if number in texts:
            by_barcode += 1
        elif number in reading.digits:
            by_digits_only += 1
        if (texts and number not in texts) or (reading.digits and number not in reading.digits):
            wrong += 1
        if not texts and not reading.digits:
            hinted[",".join(reading.hints) or "(no hint)"] += 1
    return {
        "n": count,
        "barcode": by_barcode,
        "printed_digits_only": by_digits_only,
        "wrong": wrong,
        "unread_hints": dict(hinted.most_common()),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p50_cpu_ms": percentile(cpu, 50),
        "p95_cpu_ms": percentile(cpu, 95),
        "n_12_megapixel": len(big_ms),
        "p95_ms_12_megapixel": percentile(big_ms, 95) if big_ms else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("dir", type=Path, help="folder of images with sibling NAME.txt files")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--budget-ms",
        type=float,
        default=DEFAULT_BUDGET_MS,
        help=f"time budget per photo (default {DEFAULT_BUDGET_MS:g})",
    )
    parser.add_argument("--no-ocr", action="store_true", help="read barcodes only")
    parser.add_argument("--no-baseline", action="store_true", help="skip plain pyzbar")
    parser.add_argument(
        "--synthetic",
        type=int,
        default=0,
        metavar="N",
        help="also read N seeded hard card photos from bot.democard (barcode vs OCR)",
    )
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        parser.error(f"not a folder: {args.dir}")
    ocr = None if args.no_ocr else RapidOcrDigitReader()
    if ocr is not None:
        try:
            ocr.warm_up()
        except ImportError:
            # Figures "with OCR" taken without it would be wrong: say so, or pass --no-ocr.
            fail(f"{OCR_MISSING} (or run with --no-ocr)")
    require(bool(images_under(args.dir)), f"no images under {args.dir}")
    reader = PyzbarCardReader(budget_ms=args.budget_ms, ocr=ocr)
    load_before = os.getloadavg()[0]
    result = run(args.dir, reader, baseline=not args.no_baseline)
    require(
        result.overall.n > result.overall.negatives,
        f"no image under {args.dir} has a NAME.txt with its expected text: nothing to score",
    )
    synthetic = run_synthetic(args.synthetic, reader) if args.synthetic else None
    load = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    if args.json:
        report = {
            **result.overall.summary(),
            "ocr": ocr is not None,
            "budget_ms": reader.budget_ms,
            "wall_cap_ms": reader.wall_cap_ms,
            "load_average_1min": load,
            "per_symbology": {name: tally.summary() for name, tally in result.groups.items()},
            "held_out": result.held_out.summary(),
        }
        if synthetic is not None:
            report["synthetic_cards"] = synthetic
        if result.baseline.n:
            report["plain_pyzbar"] = result.baseline.summary()
            report["plain_pyzbar_held_out"] = result.baseline_held_out.summary()
        print(json.dumps(report, ensure_ascii=False))
    else:
        print(
            f"OCR: {'on' if ocr is not None else 'off'}; deadline {reader.budget_ms:g} ms CPU, "
            f"{reader.wall_cap_ms:g} ms wall; load average {load['before']} -> {load['after']}"
        )
        print_table(result)
        if synthetic is not None:
            print(f"synthetic hard card photos: {json.dumps(synthetic, ensure_ascii=False)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
