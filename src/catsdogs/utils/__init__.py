"""Plumbing: atomic files and CSV, hashes, facts about this machine, optional extras."""
