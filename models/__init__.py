"""Classifiers trained on dancedata shards (kept apart from the library)."""
