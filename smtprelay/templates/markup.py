"""What an HTML body holds, as a mailbox provider's filter sees it: its visible text, images
and links; and the plain-text part made from it when a template has none.

Pure (the standard library's html.parser): a string in, facts out. Must never fetch a link
or an image.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urlsplit

_BLOCKS = frozenset({"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol",
                     "blockquote", "hr", "section", "article", "header", "footer", "title"})
_HIDDEN = frozenset({"script", "style", "head", "template"})


@dataclass
class Link:
    url: str
    text: str = ""

    @property
    def domain(self) -> str:
        try:
            return (urlsplit(self.url.strip()).hostname or "").lower()
        except ValueError:
            return ""


@dataclass
class Facts:
    text: str = ""                              # the visible text, whitespace collapsed per line
    images: int = 0
    links: list[Link] = field(default_factory=list)


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.facts = Facts()
        self._out: list[str] = []
        self._hidden = 0
        self._link: Link | None = None
        self._link_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self._hidden += 1
        elif tag == "img":
            self.facts.images += 1
            alt = dict(attrs).get("alt")
            if alt and not self._hidden:
                self._out.append(f"[{alt}]")
        elif tag == "a":
            href = dict(attrs).get("href")
            if href and not href.startswith(("#", "mailto:")):
                self._link, self._link_text = Link(href), []
        if tag in _BLOCKS:
            self._out.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in _HIDDEN:
            self._hidden -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag == "a" and self._link is not None:
            link, self._link = self._link, None
            link.text = " ".join("".join(self._link_text).split())
            self.facts.links.append(link)
            if link.text and link.url not in link.text:
                self._out.append(f" ({link.url})")
        if tag in _BLOCKS:
            self._out.append("\n")

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        self._out.append(data)
        if self._link is not None:
            self._link_text.append(data)

    def result(self) -> Facts:
        lines = [" ".join(line.split()) for line in "".join(self._out).splitlines()]
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        self.facts.text = text
        return self.facts


def read(source: str) -> Facts:
    reader = _Reader()
    reader.feed(source)
    reader.close()
    return reader.result()


def to_text(source: str) -> str:
    """The plain-text alternative of an HTML body: visible text, links as "text (url)"."""
    return read(source).text + "\n"
