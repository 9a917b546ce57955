from pathlib import Path


def protocols_dir() -> Path:
    return Path(__file__).parent / "protocols"
