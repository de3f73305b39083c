"""Protocol tests: the real `foresight serve` binary driven over stdio by pytest-lsp.

The model is the tiny random-weights fixture: its suggestions are gibberish but deterministic, so
the server's suggestion for a document is compared, for equality, with `foresight complete` (the
same pipeline and settings) on the text the document should hold. That checks document sync (incremental edits, multi-byte text, emoji) end
to end, not just that some answer came back.
"""
import asyncio
import subprocess
import sys
import time

import pytest
import pytest_lsp
from lsprotocol import types as t
from pygls.exceptions import JsonRpcRequestCancelled
from pytest_lsp import ClientServerConfig, LanguageClient

from conftest import MODEL, foresight_bin, server_command

CONFIG = ClientServerConfig(server_command=server_command())


def cli_complete(text: str, line: int, col: int, tmp_path, suffix=".py") -> str:
    """`foresight complete` on `text` at 1-based line, 1-based character column."""
    f = tmp_path / f"doc{suffix}"
    f.write_bytes(text.encode("utf-8"))
    out = subprocess.run(
        # The settings the `client` fixtures give the server (initializationOptions).
        [foresight_bin(), "complete", f"{f}:{line}:{col}", "--model", MODEL, "--lines", "multi"],
        check=True, capture_output=True,
    ).stdout.decode("utf-8")
    return out[:-1] if out.endswith("\n") else out


def caps(encodings=None, progress=False):
    general = t.GeneralClientCapabilities(position_encodings=encodings) if encodings else None
    window = t.WindowClientCapabilities(work_done_progress=True) if progress else None
    return t.ClientCapabilities(general=general, window=window)


async def inline(client, uri, line, character):
    return await client.text_document_inline_completion_async(
        t.InlineCompletionParams(
            context=t.InlineCompletionContext(trigger_kind=t.InlineCompletionTriggerKind.Automatic),
            text_document=t.TextDocumentIdentifier(uri=uri),
            position=t.Position(line=line, character=character),
        )
    )


async def wait_for_model(client):
    for _ in range(600):
        stats = await client.protocol.send_request_async("foresight/stats", None)
        if stats.model is not None:
            return stats
        await asyncio.sleep(0.05)
    raise AssertionError("the model never loaded")


@pytest_lsp.fixture(config=CONFIG)
async def client(lsp_client: LanguageClient):
    lsp_client.init_result = await lsp_client.initialize_session(
        t.InitializeParams(capabilities=caps(["utf-16"], progress=True), initialization_options={"lines": "multi", "bogusKey": 1})
    )
    await wait_for_model(lsp_client)
    yield
    await lsp_client.shutdown_session()


@pytest_lsp.fixture(config=CONFIG)
async def client8(lsp_client: LanguageClient):
    result = await lsp_client.initialize_session(
        t.InitializeParams(capabilities=caps(["utf-8", "utf-16"]), initialization_options={"lines": "multi"})
    )
    assert result.capabilities.position_encoding == "utf-8"
    await wait_for_model(lsp_client)
    yield
    await lsp_client.shutdown_session()


async def test_initialize_advertises_capabilities_and_defaults_to_utf16(client: LanguageClient):
    caps_ = client.init_result.capabilities
    assert caps_.position_encoding == "utf-16"
    assert caps_.inline_completion_provider is True
    assert caps_.text_document_sync.change == t.TextDocumentSyncKind.Incremental
    assert caps_.completion_provider == t.CompletionOptions()  # advertised, with no trigger characters


async def test_progress_and_warnings_are_reported(client: LanguageClient):
    # $/progress begin and end while the model loaded.
    reports = [r for rs in client.progress_reports.values() for r in rs]
    kinds = [r.kind for r in reports]
    assert "begin" in kinds and "end" in kinds, reports
    logs = [m.message for m in client.log_messages]
    assert any("bogusKey" in m for m in logs), logs
    assert any("loaded" in m for m in logs), logs


async def test_inline_completion_equals_cli(client: LanguageClient, tmp_path):
    text = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n"
    uri = "file:///w/a.py"
    client.text_document_did_open(t.DidOpenTextDocumentParams(t.TextDocumentItem(uri, "python", 1, text)))
    res = await inline(client, uri, 4, 0)
    assert len(res.items) == 1, res
    item = res.items[0]
    assert item.range.start == t.Position(4, 0) and item.range.end == t.Position(4, 0)
    want = cli_complete(text, 5, 1, tmp_path)
    assert item.insert_text.strip(), "never whitespace only"
    assert item.insert_text == want, (item.insert_text, want)


async def test_incremental_edits_with_emoji_utf16(client: LanguageClient, tmp_path):
    uri = "file:///w/e.py"
    client.text_document_did_open(t.DidOpenTextDocumentParams(t.TextDocumentItem(uri, "python", 1, "s = 'héllo'\n")))

    def edit(version, sl, sc, el, ec, new):
        client.text_document_did_change(t.DidChangeTextDocumentParams(
            text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[t.TextDocumentContentChangePartial(range=t.Range(t.Position(sl, sc), t.Position(el, ec)), text=new)],
        ))

    edit(2, 0, 10, 0, 10, " 🦀")          # s = 'héllo 🦀'   (UTF-16 col 10 is before the closing quote)
    edit(3, 0, 11, 0, 13, "🦀🦀")        # replace the crab (UTF-16 columns 11..13) by two crabs
    edit(4, 1, 0, 1, 0, "t = 'ß∑'\n")   # a new line with 2- and 3-byte characters
    edit(5, 1, 6, 1, 7, "")              # delete '∑' (col 6 after "t = 'ß")
    expected = "s = 'héllo 🦀🦀'\nt = 'ß'\n"
    res = await inline(client, uri, 2, 0)
    want = cli_complete(expected, 3, 1, tmp_path)
    got = res.items[0].insert_text if res.items else ""
    assert got == want and got.strip(), (got, want)
    # The position right after the two crabs, in UTF-16 code units, maps to the same cursor.
    res2 = await inline(client, uri, 0, 15)
    want2 = cli_complete(expected, 1, 14, tmp_path)
    got2 = res2.items[0].insert_text if res2.items else ""
    assert got2 == want2, (got2, want2)


async def test_incremental_edits_with_emoji_utf8(client8: LanguageClient, tmp_path):
    client = client8
    uri = "file:///w/u8.py"
    client.text_document_did_open(t.DidOpenTextDocumentParams(t.TextDocumentItem(uri, "python", 1, "x = '🦀'\n")))
    # In UTF-8 the crab spans bytes 5..9 of line 0; replace it with "é∑".
    client.text_document_did_change(t.DidChangeTextDocumentParams(
        text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[t.TextDocumentContentChangePartial(range=t.Range(t.Position(0, 5), t.Position(0, 9)), text="é∑")],
    ))
    expected = "x = 'é∑'\n"
    res = await inline(client, uri, 1, 0)
    want = cli_complete(expected, 2, 1, tmp_path)
    got = res.items[0].insert_text if res.items else ""
    assert got == want and got.strip(), (got, want)


async def test_completion_fallback_inserts_the_suggestion(client: LanguageClient, tmp_path):
    text = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n"
    uri = "file:///w/c.py"
    client.text_document_did_open(t.DidOpenTextDocumentParams(t.TextDocumentItem(uri, "python", 1, text)))
    res = await client.text_document_completion_async(t.CompletionParams(t.TextDocumentIdentifier(uri), t.Position(3, 5)))
    assert res.is_incomplete is True
    assert len(res.items) == 1, res
    item = res.items[0]
    edit = item.text_edit
    # The word before the cursor ("print") is replaced by itself plus the suggestion.
    assert edit.range.start == t.Position(3, 0) and edit.range.end == t.Position(3, 5)
    inline_res = await inline(client, uri, 3, 5)
    assert edit.new_text == "print" + inline_res.items[0].insert_text
    assert item.filter_text == edit.new_text


async def test_result_cache_serves_the_remainder_while_typing(client: LanguageClient):
    text = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n"
    uri = "file:///w/r.py"
    client.text_document_did_open(t.DidOpenTextDocumentParams(t.TextDocumentItem(uri, "python", 1, text)))
    first = (await inline(client, uri, 4, 0)).items[0].insert_text
    ch = first[0]
    client.text_document_did_change(t.DidChangeTextDocumentParams(
        text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[t.TextDocumentContentChangePartial(range=t.Range(t.Position(4, 0), t.Position(4, 0)), text=ch)],
    ))
    before = await client.protocol.send_request_async("foresight/stats", None)
    second = await inline(client, uri, 4, len(ch.encode("utf-16-le")) // 2)
    after = await client.protocol.send_request_async("foresight/stats", None)
    assert after.fromCache == before.fromCache + 1
    assert second.items[0].insert_text == first[1:]


async def stats(client):
    return await client.protocol.send_request_async("foresight/stats", None)


WAIT = 60  # seconds: the bound on each wait below, so a broken server fails a test instead of hanging it


async def bounded(awaitable, what):
    # shield: on a timeout the request is left pending, not cancelled (cancelling a pygls request
    # future breaks its client when the reply comes).
    try:
        return await asyncio.wait_for(asyncio.shield(awaitable), WAIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"{what}: no answer in {WAIT} s") from None


async def wait_for_stats(client, ready, what):
    """Polls foresight/stats (answered without queueing behind the worker) until `ready(stats)`;
    bounded by WAIT, failing with `what` and the last counters."""
    deadline = time.monotonic() + WAIT
    while True:
        now = await stats(client)
        if ready(now):
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (waited {WAIT} s): {now}")
        await asyncio.sleep(0.002)


async def hold(client, closed: bool):
    """Closes or opens the worker's hold gate (foresight/debugHold, a --test-hooks method): while
    it is closed, a job the worker has taken waits before generating until the gate opens or the
    job is cancelled, so a cancel or a newer request always finds a running job."""
    assert await client.protocol.send_request_async("foresight/debugHold", {"closed": closed}) is closed


def assert_one_suggestion_at(res, line, character):
    assert len(res.items) == 1, res
    item = res.items[0]
    assert item.range.start == t.Position(line, character) and item.range.end == item.range.start, item
    assert item.insert_text.strip(), item


GOOD_TEXT = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n"


async def test_cancel_request_stops_generation(client: LanguageClient):
    uri = "file:///w/cancel.py"
    client.text_document_did_open(t.DidOpenTextDocumentParams(t.TextDocumentItem(uri, "python", 1, GOOD_TEXT)))
    await hold(client, True)
    before = await stats(client)
    params = t.InlineCompletionParams(
        context=t.InlineCompletionContext(trigger_kind=t.InlineCompletionTriggerKind.Invoked),
        text_document=t.TextDocumentIdentifier(uri=uri),
        position=t.Position(line=4, character=0),
    )
    future = client.protocol.send_request(t.TEXT_DOCUMENT_INLINE_COMPLETION, params)
    (msg_id,) = [k for k, f in client.protocol._request_futures.items() if f is future]
    # The worker has taken the job, which waits at the closed gate.
    await wait_for_stats(client, lambda s: s.completions == before.completions + 1, "the job never started")
    # pygls's own future.cancel() breaks its client when the reply arrives; send the
    # notification the way an editor does and wait for the server's answer.
    client.protocol.notify(t.CANCEL_REQUEST, t.CancelParams(id=msg_id))
    with pytest.raises(JsonRpcRequestCancelled):
        await bounded(asyncio.wrap_future(future), "the cancelled request")
    # The running job saw its cancel flag and ended cancelled, without a model call.
    after = await wait_for_stats(client, lambda s: s.cancelled != before.cancelled, "the job was never counted cancelled")
    assert after.cancelled == before.cancelled + 1, (before, after)
    assert after.completions == before.completions + 1 and after.modelCalls == before.modelCalls, (before, after)
    await hold(client, False)
    # The server still completes: the same request now gets its suggestion.
    assert_one_suggestion_at(await inline(client, uri, 4, 0), 4, 0)
    final = await stats(client)
    assert final.cancelled == after.cancelled and final.modelCalls == before.modelCalls + 1, (before, final)


async def test_newer_request_supersedes_older(client: LanguageClient):
    uri = "file:///w/sup.py"
    client.text_document_did_open(t.DidOpenTextDocumentParams(t.TextDocumentItem(uri, "python", 1, GOOD_TEXT)))
    await hold(client, True)
    before = await stats(client)
    old = asyncio.ensure_future(inline(client, uri, 4, 0))
    await wait_for_stats(client, lambda s: s.completions == before.completions + 1, "the older job never started")
    # The older job is running (held at the gate) when the newer request arrives.
    new = asyncio.ensure_future(inline(client, uri, 4, 0))
    old_res = await bounded(old, "the superseded request")
    assert len(old_res.items) == 0, ("the superseded request shows nothing", old_res)
    mid = await wait_for_stats(client, lambda s: s.completions == before.completions + 2, "the newer job never started")
    assert mid.cancelled == before.cancelled + 1 and mid.modelCalls == before.modelCalls, (before, mid)
    await hold(client, False)
    assert_one_suggestion_at(await bounded(new, "the newer request"), 4, 0)
    after = await stats(client)
    assert after.cancelled == before.cancelled + 1 and after.modelCalls == before.modelCalls + 1, (before, after)
