"""The XML helpers that decide before parsing: the root tag of a head, characters XML 1.0 forbids."""

from __future__ import annotations

import re

import pytest

from qualys_collector.qualys.xml import _FORBIDDEN, NOT_XML, REPLACEMENT, ForbiddenCharacters, root_tag

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


def test_a_long_zero_padded_reference_cut_anywhere_is_replaced() -> None:
    """XML allows any number of leading zeros: a reference longer than the old 16-byte look-back, cut at any byte
    (the parsing processes read their spool in fixed 1 MiB chunks, so one cut place fails on every attempt)."""
    document = b"<A>xx &#0000000000000000000001; yy &#x00000000000000000001F; zz</A>"
    for cut in range(1, len(document)):
        cleaner = ForbiddenCharacters("/x")
        out = b"".join(cleaner.chunks([document[:cut], document[cut:]]))
        assert out.decode() == "<A>xx \ufffd; yy \ufffd; zz</A>".replace("\ufffd;", "\ufffd"), cut
        assert cleaner.replaced == 2, cut


@pytest.mark.parametrize(
    "chunk",
    [
        b"<A>plain \xc3\xa9 text\t\r\n</A>",
        b"<A>&#38; &amp; &#x41;</A>",  # references, none forbidden: kept as they are
        b"<A>\x00\x08\x0b\x0c\x0e\x1f</A>",
        b"<A>&#0; &#x1F; &#31; &#x0b;</A>",
        b"<A>&#9;&#10;&#13;&#32;</A>",
        "<A>\ufffe \uffff \ufffd \uffef &#xFFFF; &#xD800; &#57343; &#57344;</A>".encode(),
    ],
)
def test_the_fast_check_agrees_with_the_pattern(chunk: bytes) -> None:
    cleaner = ForbiddenCharacters("/x")
    assert b"".join(cleaner.chunks([chunk])) == re.sub(_FORBIDDEN, REPLACEMENT, chunk)
    assert cleaner.replaced == len(_FORBIDDEN.findall(chunk))


def test_the_noncharacters_and_surrogates_xml_forbids_are_replaced_and_the_answer_parses() -> None:
    """XML 1.0's Char also excludes U+FFFE, U+FFFF and the surrogates. One U+FFFF in a RESULTS failed the batch
    on every cycle ("PCDATA invalid Char value 65535", found by review), and a surrogate written as a reference
    (how a UTF-16 system writes an emoji: ``&#xD83D;&#xDE00;``) fails the same way. Their neighbours stay."""
    from lxml import etree

    document = (
        "<A>a\ufffeb\uffffc &#xFFFE; &#65535; &#xD83D;&#xDE00; &#55296; &#57343; keep: \ufffd \uffef &#xFFFD; "
        "&#xE000; &#55295; &#57344; \U0001f600</A>"
    ).encode()
    cleaner = ForbiddenCharacters("/x")
    cleaned = b"".join(cleaner.chunks([document[:9], document[9:]]))
    assert cleaner.replaced == 8
    text = etree.fromstring(cleaned).text
    assert text == (
        "a\ufffdb\ufffdc \ufffd \ufffd \ufffd\ufffd \ufffd \ufffd keep: \ufffd \uffef \ufffd \ue000 \ud7ff \ue000 "
        "\U0001f600"
    )
    with pytest.raises(etree.XMLSyntaxError):  # what the parser says without the replacement
        etree.fromstring("<A>\uffff</A>".encode())


#: Every character the cleaner replaces, raw (UTF-8) and as references in each of the forms it matches.
_RAW = [bytes([b]) for b in range(32) if b not in (9, 10, 13)] + ["\ufffe".encode(), "\uffff".encode()]
_REFERENCES = [
    *(f"&#{b};".encode() for b in range(32) if b not in (9, 10, 13)),
    *(f"&#x{b:X};".encode() for b in range(32) if b not in (9, 10, 13)),
    b"&#x0001;",
    b"&#00031;",
    *(f"&#x{c:x};".encode() for c in (0xD800, 0xDBFF, 0xDC00, 0xDFFF, 0xFFFE, 0xFFFF)),
    *(f"&#{c};".encode() for c in (55296, 56319, 56320, 57343, 65534, 65535)),
]


@pytest.mark.parametrize("place", ["<A>x{}y</A>", "<A><![CDATA[x{}y]]></A>", "<A b='x{}y'/>", "<A><!-- x{}y --></A>"])
def test_the_parser_refuses_every_character_the_cleaner_replaces(place: str) -> None:
    """The parsing process parses an answer as it came and cleans it only once the parser refuses it; that is
    right only if the hardened parser refuses every character :data:`_FORBIDDEN` matches, wherever it stands
    (a reference is markup only in text and attributes: in CDATA and comments it is plain text, left as it is)."""
    import io

    from qualys_collector.errors import DataError
    from qualys_collector.qualys.xml import iter_elements

    markup = "CDATA" in place or "--" in place
    for char in _RAW + ([] if markup else _REFERENCES):
        document = place.replace("{}", "\x00").encode().replace(b"\x00", char)
        assert _FORBIDDEN.search(document), document
        with pytest.raises(DataError):
            list(iter_elements(io.BytesIO(b"<R>" + document + b"</R>"), {"A"}))
