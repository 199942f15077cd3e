"""The one exception type every refusal of the adapter raises (and its one subclass, for unreadable video files)."""


class AdapterError(ValueError):
    """A request the adapter cannot honour; the message names the problem and the fix."""


class VideoDecodeError(AdapterError):
    """A video file that cannot be read: missing, empty, truncated, not a video, or a backend failure."""
