"""The XML helpers that decide before parsing: the root tag of a head, characters XML 1.0 forbids."""

from __future__ import annotations

import pytest

from qualys_collector.qualys.xml import NOT_XML, ForbiddenCharacters, root_tag

DOC = b'\xef\xbb\xbf<?xml version="1.0"?>\n<!-- keep-alive -->\n<!DOCTYPE R [<!ENTITY a "<b>">]>\n<SIMPLE_RETURN>'


def test_the_root_tag_is_decided_only_once_its_name_is_whole() -> None:
    decided = {i: root_tag(DOC[:i]) for i in range(len(DOC) + 1)}
    assert all(tag is None for i, tag in decided.items() if i < len(DOC))  # every cut before the '>' waits
    assert decided[len(DOC)] == "SIMPLE_RETURN"
    assert root_tag(b"<A b='1'>") == "A"
    assert root_tag(b"<A/>") == "A"


@pytest.mark.parametrize("head", [b"----BEGIN_RESPONSE_BODY_CSV\n", b"Date,Action\n", b"  x<A>"])
def test_a_head_that_is_not_xml_says_so(head: bytes) -> None:
    assert root_tag(head) == NOT_XML


def test_forbidden_characters_are_replaced_even_when_a_reference_is_cut_between_chunks() -> None:
    cleaner = ForbiddenCharacters("/x")
    out = b"".join(cleaner.chunks([b"<A>a&#x", b"1;b\x01\tc&amp;&#10;&#31;</A>"]))
    assert out.decode() == "<A>a\ufffdb\ufffd\tc&amp;&#10;\ufffd</A>"
    assert cleaner.replaced == 3
