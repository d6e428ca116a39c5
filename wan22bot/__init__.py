"""wan22bot: photo-to-video automation around Wan 2.2 image-to-video."""

__version__ = "0.1.0"
