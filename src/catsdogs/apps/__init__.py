"""The applications over the library: the two web apps and what they share."""
