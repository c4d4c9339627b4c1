"""The version is defined once and repeated consistently."""

import re
from importlib.metadata import version
from pathlib import Path

import explora_geo

ROOT = Path(__file__).parents[1]


def test_citation_matches_package_version() -> None:
    text = (ROOT / 'CITATION.cff').read_text()
    match = re.search(r'^version:\s*"?([^"\s]+)"?\s*$', text, re.MULTILINE)
    assert match is not None, 'CITATION.cff has no version line'
    assert match.group(1) == explora_geo.__version__


def test_pyproject_reads_the_version_from_the_package() -> None:
    text = (ROOT / 'pyproject.toml').read_text()
    assert 'dynamic = ["version"]' in text
    assert 'version = { attr = "explora_geo.__version__" }' in text
    assert not re.search(r'^version\s*=\s*"', text, re.MULTILINE)


def test_installed_metadata_agrees() -> None:
    assert version('explora-geo') == explora_geo.__version__


def test_changelog_names_the_version() -> None:
    assert f'## {explora_geo.__version__}' in (ROOT / 'CHANGELOG.md').read_text()
