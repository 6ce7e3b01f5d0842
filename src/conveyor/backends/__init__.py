"""Backends run :class:`conveyor._work.Unit` objects: on threads, on conveyor's own process pool."""
