# Generated from _async/ by tools/gen_sync.py: do not edit by hand.
"""The I/O classes, written async; `_sync/` is generated from them."""
