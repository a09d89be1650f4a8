"""MAML versus evolution strategies: runtime and peak memory (filled by its own issue)."""
