"""Running out of file descriptors is reported as that, once, not as a storm of tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from agent.fds import fd_usage

# A process with 48 descriptors that uses them all up, then gets connections it cannot
# accept (EMFILE in accept(), which asyncio retries every second): what does it log?
SCRIPT = textwrap.dedent(
    """
    import asyncio, resource, socket, sys
    from agent.fds import loop_exception_handler
    from agent.logs import setup_logging

    async def main():
        asyncio.get_running_loop().set_exception_handler(loop_exception_handler)
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
        hoard = []
        try:
            while True:
                hoard.append(open("/dev/null"))
        except OSError:
            pass
        hoard.pop().close()  # one left for the client socket below
        client = socket.socket()
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", port))
        await asyncio.sleep(3.5)  # asyncio retries accept() every second

    setup_logging("INFO", json_lines=True)
    asyncio.run(main())
    """
)


def test_emfile_is_named_with_its_numbers_once() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    assert records, proc.stderr
    first = records[0]
    assert first["level"] == "ERROR" and "exc" not in first
    assert first["msg"].startswith("out of file descriptors (EMFILE): 48 open, limit 48;")
    assert "raise LimitNOFILE=" in first["msg"]
    # Every retry failed the same way: one line, then one line with the count.
    assert len(records) == 2, records
    assert "[repeated" in records[1]["msg"]


def test_fd_usage_counts_this_process() -> None:
    used, limit = fd_usage()
    with open("/dev/null"), open("/dev/null"):
        assert fd_usage() == (used + 2, limit)
