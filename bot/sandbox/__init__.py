"""Sandbox adapters: a card issuer over a CSV card file and a payout provider that moves no
money. Real code paths with real failure modes, chosen by settings (see README.md)."""
