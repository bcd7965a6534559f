"""The one exception type for mistakes a user can fix: `cli` prints it as one line and exits with code 2."""


class RoadmapError(Exception):
    """A user error: bad input, a missing file, an unknown step. The message names the file and the key."""
