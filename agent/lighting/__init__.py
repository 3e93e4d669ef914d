"""Lighting: the pole's luminaires on their own clock (schedules, adaptive dimming, fail-safe)."""
