"""The I/O classes, written async; `_sync/` is generated from them."""
