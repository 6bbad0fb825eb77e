"""Image bytes → ``CardReading``: barcodes (pyzbar, zxing-cpp), printed digits (OCR), hints."""

from vision.reader import DEFAULT_BUDGET_MS, DEFAULT_OCR_BUDGET_MS, PyzbarCardReader

__all__ = ["DEFAULT_BUDGET_MS", "DEFAULT_OCR_BUDGET_MS", "PyzbarCardReader"]
