"""Serving: the on-disk index format and its CURRENT pointer, search by photo, and the HTTP API."""
