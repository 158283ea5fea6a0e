"""Serving: the prediction API over the champion and challenger (not built yet; a later issue)."""
