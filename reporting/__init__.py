"""Rendering results for people: the static HTML report."""
