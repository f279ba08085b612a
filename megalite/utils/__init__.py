"""Small utilities shared by every part of megalite."""
