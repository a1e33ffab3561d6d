"""Image sources, decoding, resizing and drawing."""
