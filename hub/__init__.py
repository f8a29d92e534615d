"""The Blindmatch hub: tag store, matcher, disclosure routing, audit log."""
