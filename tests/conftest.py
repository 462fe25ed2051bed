"""Shared pytest configuration: fixture plugins for the real services the tests run against."""

pytest_plugins: list[str] = [
    # Each module under tests/fixtures/ provides the fixtures for one real service.
    "tests.fixtures.cluster",
    "tests.fixtures.scripted_model",
    "tests.fixtures.minio",
]
