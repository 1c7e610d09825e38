"""How a run shows itself: progress lines or bar (progress) and third-party noise filtering (quiet); neither decides
anything about a result."""
