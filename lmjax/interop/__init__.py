"""Interop with other libraries\x27 checkpoints."""
