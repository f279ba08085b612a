"""Exact and near-duplicate removal, in stages that can run on different machines."""
