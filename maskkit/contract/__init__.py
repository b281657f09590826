"""The file contract of docs/formats.md: labels, the competition layout, manifests, fixes, run folders, predictions."""
