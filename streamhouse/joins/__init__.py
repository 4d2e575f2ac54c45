"""Streaming joins: append-only stream-stream joins (regular and interval) and window joins."""
