"""Every relative link and `#anchor` of README.md and docs/*.md leads somewhere: the file or
folder exists, and an anchor names a heading of the page it points into (GitHub's anchors)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.support.markdown_pages import PAGES, Link, anchors, links, slug
from tests.support.paths import ROOT

LINKS = [link for page in PAGES for link in links(page)]
EXTERNAL = ("http://", "https://", "mailto:")


def test_the_pages_have_links_to_check():
    assert len(LINKS) > 100, len(LINKS)


@pytest.mark.parametrize("link", LINKS, ids=lambda link: f"{link.where()}:{link.target}")
def test_a_relative_link_resolves(link: Link):
    if link.target.startswith(EXTERNAL):
        return
    path, _, anchor = link.target.partition("#")
    target = (link.page.parent / unquote(path)).resolve() if path else link.page
    assert target.exists(), f"{link.where()}: {link.target}: no such file or folder"
    assert target.is_relative_to(ROOT), f"{link.where()}: {link.target}: outside the repository"
    if anchor:
        assert target.suffix == ".md", f"{link.where()}: an anchor into a page that is not Markdown"
        assert anchor in anchors(target), (
            f"{link.where()}: {link.target}: no heading of {target.relative_to(ROOT)} has this "
            f"anchor; it has {sorted(anchors(target))}"
        )


def test_every_docs_page_is_linked_from_the_readme():
    readme = ROOT / "README.md"
    linked = {(readme.parent / link.target.partition("#")[0]).resolve() for link in links(readme)}
    unlinked = [page.name for page in PAGES[1:] if page.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link to: {unlinked}"


def test_the_status_page_image_is_shown():
    page = ROOT / "docs" / "deploying.md"
    assert "status-page.png" in {Path(link.target).name for link in links(page)}


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("What the settings buy: `grayscale selftest`", "what-the-settings-buy-grayscale-selftest"),
        ("Custom metric checks (PromQL)", "custom-metric-checks-promql"),
        ("Versions, framing and headers", "versions-framing-and-headers"),
        (
            "Redis restored from an older snapshot, or failed over",
            "redis-restored-from-an-older-snapshot-or-failed-over",
        ),
        ("A candidate that turns bad late: epochs", "a-candidate-that-turns-bad-late-epochs"),
        ("Runs on `server.workers` [here](x.md)", "runs-on-serverworkers-here"),
        ("GrayscaleProxyDown", "grayscaleproxydown"),
    ],
)
def test_anchors_are_githubs(heading: str, anchor: str):
    assert slug(heading) == anchor
