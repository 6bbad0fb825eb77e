"""Image bytes → ``CardReading``: barcodes read by pyzbar, photo-quality hints."""

from vision.reader import DEFAULT_BUDGET_MS, PyzbarCardReader

__all__ = ["DEFAULT_BUDGET_MS", "PyzbarCardReader"]
