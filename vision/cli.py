"""``cardbot scan IMAGE... [--json]``: what vision/ reads in each photo.

Human output is one line per image; ``--json`` prints one JSON object per line with ``path``,
``barcodes`` (``{symbology, text}``), ``digits``, ``hints`` and ``ms`` (plus ``error`` when the
file could not be opened). The exit status is 0 when every file could be opened, 1 otherwise:
finding no barcode is an answer, not a failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from core.ports import CardReading
from vision.reader import PyzbarCardReader


def reading_as_dict(path: str, reading: CardReading) -> dict[str, Any]:
    """The JSON shape of one scanned image (the stable ``cardbot scan --json`` contract)."""
    return {
        "path": path,
        "barcodes": [{"symbology": b.symbology, "text": b.text} for b in reading.barcodes],
        "digits": list(reading.digits),
        "hints": list(reading.hints),
        "ms": round(reading.ms, 1),
    }


def reading_as_line(path: str, reading: CardReading) -> str:
    """One human-readable line for a scanned image."""
    if reading.barcodes:
        # json.dumps quotes the text and shows line breaks inside QR payloads as \n.
        found = ", ".join(
            f"{b.symbology} {json.dumps(b.text, ensure_ascii=False)}" for b in reading.barcodes
        )
    elif reading.hints:
        found = "nothing read; hints: " + ", ".join(reading.hints)
    else:
        found = "nothing read"
    if reading.digits:
        found += "; printed digits: " + ", ".join(reading.digits)
    return f"{path}: {found} ({reading.ms:.0f} ms)"


def scan_main(paths: list[str], as_json: bool, out: TextIO | None = None) -> int:
    """Scan each image and print what was read; 0 if every file could be opened, else 1."""
    stream = out if out is not None else sys.stdout
    reader = PyzbarCardReader()
    if reader.ocr is not None:
        reader.ocr.warm_up()  # a second, once: otherwise the first photos are read without OCR
    status = 0
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            status = 1
            reason = exc.strerror or type(exc).__name__
            if as_json:
                record = reading_as_dict(path, CardReading()) | {"error": reason}
                print(json.dumps(record, ensure_ascii=False), file=stream)
            else:
                print(f"{path}: cannot open: {reason}", file=stream)
            continue
        reading = reader.read_sync(data)
        if as_json:
            print(json.dumps(reading_as_dict(path, reading), ensure_ascii=False), file=stream)
        else:
            print(reading_as_line(path, reading), file=stream)
        stream.flush()
    return status
