"""Updating views: continuous results that change per key (upserts, and tombstones)."""
