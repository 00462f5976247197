"""The bottom layer: settings, errors and the version. Imported by every package; imports nothing of ours."""
