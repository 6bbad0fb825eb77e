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
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

# This script is named like the package it measures: drop its own folder from the import path
# so ``import vision`` finds the package, and make the repository importable without installing.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from vision import DEFAULT_BUDGET_MS, PyzbarCardReader  # noqa: E402

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

    def add(self, outcome: str, ms: float) -> None:
        """Count one image's outcome: correct, wrong, none, negative or false_positive."""
        self.n += 1
        self.ms.append(ms)
        if outcome in ("negative", "false_positive"):
            self.negatives += 1
            if outcome == "false_positive":
                self.false_positives += 1
        else:
            setattr(self, outcome, getattr(self, outcome) + 1)

    def summary(self) -> dict[str, float | int]:
        """The counts plus p50/p95 milliseconds, as plain numbers."""
        counts = {k: v for k, v in asdict(self).items() if k != "ms"}
        return {**counts, "p50_ms": percentile(self.ms, 50), "p95_ms": percentile(self.ms, 95)}


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


def run(root: Path, reader: PyzbarCardReader) -> tuple[Tally, dict[str, Tally]]:
    """Read every image under root; the overall tally and one per symbology folder."""
    overall = Tally()
    groups: dict[str, Tally] = defaultdict(Tally)
    for image in images_under(root):
        expected = expected_text(image)
        reading = reader.read_sync(image.read_bytes())
        texts = [barcode.text for barcode in reading.barcodes]
        if expected is None:
            outcome = "false_positive" if texts else "negative"
        elif expected in texts:
            outcome = "correct"
        else:
            outcome = "wrong" if texts else "none"
        overall.add(outcome, reading.ms)
        folder = image.parent.relative_to(root).as_posix()
        groups[root.resolve().name if folder == "." else folder].add(outcome, reading.ms)
    return overall, dict(sorted(groups.items()))


def print_table(overall: Tally, groups: dict[str, Tally]) -> None:
    """Human-readable table: one line per symbology folder, then the totals."""
    header = f"{'symbology':<24}{'n':>5}{'correct':>9}{'wrong':>7}{'none':>6}{'fp/neg':>8}"
    print(header + f"{'p50 ms':>9}{'p95 ms':>9}")
    for name, tally in [*groups.items(), ("TOTAL", overall)]:
        s = tally.summary()
        negatives = f"{tally.false_positives}/{tally.negatives}" if tally.negatives else "-"
        print(
            f"{name:<24}{tally.n:>5}{tally.correct:>9}{tally.wrong:>7}{tally.none:>6}"
            f"{negatives:>8}{s['p50_ms']:>9.1f}{s['p95_ms']:>9.1f}"
        )
    positives = overall.n - overall.negatives
    if positives:
        print(f"correct: {overall.correct / positives:.1%} of {positives} images with a barcode")
    print(f"false positives: {overall.false_positives} of {overall.negatives} images without one")


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
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        parser.error(f"not a folder: {args.dir}")
    overall, groups = run(args.dir, PyzbarCardReader(budget_ms=args.budget_ms))
    if args.json:
        report = {
            **overall.summary(),
            "per_symbology": {name: tally.summary() for name, tally in groups.items()},
        }
        print(json.dumps(report, ensure_ascii=False))
    else:
        print_table(overall, groups)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
