import router


def test_version_is_a_string() -> None:
    assert isinstance(router.__version__, str) and router.__version__
