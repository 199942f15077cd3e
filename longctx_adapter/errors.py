"""The one exception type every refusal of the adapter raises."""


class AdapterError(ValueError):
    """A request the adapter cannot honour; the message names the problem and the fix."""
