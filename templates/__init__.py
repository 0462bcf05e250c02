"""Flex Templates of the pipelines: registry, metadata generator, entry point."""
