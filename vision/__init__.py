"""Image bytes → ``CardReading``: barcodes (pyzbar, zxing-cpp), printed digits (OCR), hints."""

from vision.reader import DEFAULT_BUDGET_MS, DEFAULT_WALL_CAP_MS, PyzbarCardReader

__all__ = ["DEFAULT_BUDGET_MS", "DEFAULT_WALL_CAP_MS", "PyzbarCardReader"]
