"""The flatness leaderboard of the real model zoo (``../shared/models``): published figures, the
scoring plan, and the tables and report written to ``docs/leaderboard.md`` and ``docs/leaderboard/``."""

from .published import PUBLISHED_FILE, Entry, best_robust, difference, entries_at, load_published

__all__ = ["PUBLISHED_FILE", "Entry", "best_robust", "difference", "entries_at", "load_published"]
