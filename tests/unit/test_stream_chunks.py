"""A stream output writes whole messages per TLS record: a sender killed mid-batch leaves no torn line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qualys_collector.model import StoredEvent
from qualys_collector.sinks.devo import devo_header
from qualys_collector.sinks.stream import CHUNK_BYTES, CloseThenPeerEof, StreamSink


def events(sizes: list[int]) -> list[StoredEvent]:
    return [StoredEvent(seq=i + 1, tag="vuln.qualys.hosts", body=f'{{"x":"{"a" * n}"}}') for i, n in enumerate(sizes)]


def test_each_chunk_is_whole_lines_within_one_tls_record() -> None:
    sink = StreamSink("devo", devo_header("host"), transport=None, confirmer=CloseThenPeerEof(timeout=1.0))  # type: ignore[arg-type]
    batch = events([700] * 1000 + [40_000] + [10] * 5 + [CHUNK_BYTES - 100])
    frames = [sink.framing.frame(e) for e in batch]
    chunks = list(sink.chunks(batch))
    assert b"".join(chunks) == b"".join(frames)  # every byte, in order
    assert len(chunks) > 40  # a 700 KB batch is many records, not one write
    boundaries = set()
    position = 0
    for frame in frames:
        position += len(frame)
        boundaries.add(position)
    position = 0
    for chunk in chunks:
        position += len(chunk)
        assert position in boundaries, "a chunk ends inside a message"
        assert chunk.endswith(b"\n")
        assert len(chunk) <= CHUNK_BYTES or chunk.count(b"\n") == 1, "only a message longer than a record stands alone"
    assert CHUNK_BYTES == 16_384  # TLS's largest record plaintext (RFC 8446 5.1)


def test_the_devo_header_is_the_sdks_for_every_tag_the_collector_sends() -> None:
    from devo.sender import Sender

    from qualys_collector.engine.summary import SUMMARY_TAG
    from qualys_collector.services.catalog import SERVICES

    tags = {entry.spec.default_tag for entry in SERVICES} | {SUMMARY_TAG, "my.app.ü-tag"}
    assert len(tags) >= 7  # the six services' tags and more: the catalog really was read
    for hostname in ("collector-01", "host.example.com", "ümlaut-host"):
        framing = devo_header(hostname)
        for tag in sorted(tags):
            expected = Sender.compose_mem(tag, hostname=hostname).encode("utf-8")
            assert framing.frame(StoredEvent(seq=1, tag=tag, body="{}")) == expected + b"{}\n"


def test_the_collector_loads_neither_the_sdk_nor_httpxs_command_line_client(tmp_path: Path) -> None:
    """Importing the SDK or pyOpenSSL loads cryptography; httpx's client loads rich and pygments: 18 MB of every
    collector process that it never uses. The certificate chain check at start-up runs in a process of its own."""
    import json
    import subprocess
    import sys

    from qualys_collector.relay import Certs

    certs = Certs.mint(tmp_path / "certs")
    stranger = Certs.mint(tmp_path / "stranger")
    probe = (
        "import json, sys, qualys_collector.cli, qualys_collector.app, qualys_collector.sinks.registry\n"
        "from pathlib import Path\n"
        "from qualys_collector.errors import DeliveryError\n"
        "from qualys_collector.sinks.devo import check_files\n"
        "chain, cert, key, other = (Path(p) for p in sys.argv[1:])\n"
        "check_files('devo', chain, cert, key)\n"
        "try:\n"
        "    check_files('devo', other, cert, key)\n"
        "    refused = None\n"
        "except DeliveryError as exc:\n"
        "    refused = exc.code\n"
        "print(json.dumps([refused, sorted(k for k, v in sys.modules.items() if v is not None)]))"
    )
    paths = [certs.chain, certs.client_cert, certs.client_key, stranger.chain]
    done = subprocess.run([sys.executable, "-c", probe, *map(str, paths)], check=True, capture_output=True)
    refused, modules = json.loads(done.stdout)
    assert refused == 402  # the check really ran: a certificate of another chain is refused
    loaded = {m.split(".")[0] for m in modules}
    assert {"httpx", "lxml", "qualys_collector"} <= loaded
    assert not loaded & {"devo", "OpenSSL", "cryptography", "rich", "pygments"}


def test_the_helper_processes_run_our_modules_whatever_the_working_directory_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m`` puts the working directory first on the module path: a ``qualys_collector`` package there (a
    clone, a checkout of another version) would run instead of ours in the certificate check and the parsing
    processes. Both start with ``-P``."""
    from qualys_collector.relay import Certs
    from qualys_collector.services.hld_process import ParsePool
    from qualys_collector.sinks.certcheck import chain_problem

    certs = Certs.mint(tmp_path / "certs")
    stranger = Certs.mint(tmp_path / "stranger")
    shadow = tmp_path / "cwd" / "qualys_collector"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise SystemExit('a shadowing package ran')\n")
    monkeypatch.chdir(shadow.parent)
    assert chain_problem(certs.chain, certs.client_cert) is None
    refused = chain_problem(stranger.chain, certs.client_cert)
    assert refused is not None  # our check ran, not the shadow (which exits with no answer)
    assert refused[0] == "chain"
    answer, items = tmp_path / "answer.xml", tmp_path / "items.jsonl"
    answer.write_bytes(
        b"<HOST_LIST_VM_DETECTION_OUTPUT><RESPONSE><HOST_LIST/></RESPONSE></HOST_LIST_VM_DETECTION_OUTPUT>"
    )
    pool = ParsePool(1)
    try:
        assert pool.parse(str(answer), str(items), None, 200).error is None
    finally:
        pool.close()


def test_a_certificate_check_that_cannot_run_says_why_not_that_the_files_are_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check runs in a process of its own; when that process cannot run (an interpreter without pyOpenSSL), the
    error said "cannot read the certificate files (IndexError)", which sent users to their files (found by review).
    It now says what the process said. (This package itself it finds: the collector's tree is on its path.)"""
    import subprocess
    import sys

    from qualys_collector.errors import DeliveryError
    from qualys_collector.relay import Certs
    from qualys_collector.sinks.devo import check_files

    certs = Certs.mint(tmp_path / "certs")
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    monkeypatch.setattr(sys, "executable", str(bare / "bin" / "python"))  # the interpreter the check is started with
    with pytest.raises(DeliveryError) as caught:
        check_files("devo", certs.chain, certs.client_cert, certs.client_key)
    assert caught.value.code == 400
    message = str(caught.value)
    assert "the certificate check could not run" in message
    assert "No module named 'OpenSSL'" in message
    assert "cannot read the certificate files" not in message


def test_the_helper_processes_run_the_collectors_own_tree_from_a_source_checkout(tmp_path: Path) -> None:
    """A collector run from a source checkout (``python -m qualys_collector`` in ``src/``, nothing installed)
    imports the package from its working directory, which ``-P`` keeps off its helpers' module path: they ran
    another installed copy, or none (every batch failed: "the parsing process exited"). Here the checkout is a copy
    of this package whose helpers leave a mark; the installed package (this test's own) leaves none."""
    import shutil
    import subprocess
    import sys
    import textwrap

    import qualys_collector
    from qualys_collector.relay import Certs

    checkout = tmp_path / "checkout"
    package = checkout / "qualys_collector"
    shutil.copytree(Path(qualys_collector.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    mark = tmp_path / "mark"
    stamp = '\n    open(__import__("os").environ["QC_MARK"], "a").write(__file__ + "\\n")\n'
    for module in ("qualys/parse_child.py", "sinks/certcheck.py"):
        source = package / module
        text = source.read_text()
        assert text.count('if __name__ == "__main__":\n') == 1
        source.write_text(text.replace('if __name__ == "__main__":\n', 'if __name__ == "__main__":' + stamp))
    certs = Certs.mint(tmp_path / "certs")
    answer, items = tmp_path / "answer.xml", tmp_path / "items.jsonl"
    answer.write_bytes(
        b"<HOST_LIST_VM_DETECTION_OUTPUT><RESPONSE><HOST_LIST/></RESPONSE></HOST_LIST_VM_DETECTION_OUTPUT>"
    )
    script = textwrap.dedent(
        f"""
        import qualys_collector
        from qualys_collector.services.hld_process import ParsePool
        from qualys_collector.sinks.certcheck import chain_problem
        print(qualys_collector.__file__)
        print(chain_problem({str(certs.chain)!r}, {str(certs.client_cert)!r}))
        pool = ParsePool(1)
        try:
            print(pool.parse({str(answer)!r}, {str(items)!r}, None, 200).error)
        finally:
            pool.close()
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"QC_MARK": str(mark)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=checkout, env=env, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    imported, check, parsed = done.stdout.splitlines()
    assert Path(imported).resolve().parent == package.resolve()  # the collector itself ran the checkout
    assert (check, parsed) == ("None", "None")
    marked = sorted(Path(line).resolve() for line in mark.read_text().splitlines())
    assert marked == sorted([(package / "qualys/parse_child.py").resolve(), (package / "sinks/certcheck.py").resolve()])


def test_a_relay_that_never_answers_the_handshake_is_not_blamed_on_the_certificates(tmp_path: Path) -> None:
    """A relay that accepts the TCP connection and never answers (a plain-TCP port, a stalled relay) timed out in
    the handshake with the fix "check that the certificate, key and chain are the ones Devo issued" (review).
    A real listener on loopback that accepts and stays silent."""
    import socket

    from qualys_collector.errors import DeliveryError
    from qualys_collector.relay import Certs
    from qualys_collector.sinks.transport import TlsTransport

    certs = Certs.mint(tmp_path / "certs")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        transport = TlsTransport(
            "devo", "127.0.0.1", port, chain=certs.chain, cert=certs.client_cert, key=certs.client_key, timeout=0.5
        )
        with pytest.raises(DeliveryError) as caught:
            transport.connect()
    assert "timed out" in str(caught.value)
    assert caught.value.fix is not None
    assert "did not answer the TLS handshake" in caught.value.fix
    assert "certificate, key and chain" not in caught.value.fix
