"""A replica in a process of its own, for the tests of the accept board: an `HttpEdge` that
borrows the keeper's listener and board, answers ``GET /who`` with its name, and stops when
its stdin closes.

    python -m tests.edge_replica LISTENERS_PATH HOST PORT NAME DEFER_S
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import actors.edge
from actors.edge import HttpEdge, Request, Response, Route
from actors.listeners import borrow_edge


def main(argv: list[str]) -> int:
    path, host, port, name, defer_s = argv
    actors.edge.DEFER_S = float(defer_s)

    def who(request: Request) -> Response:
        return Response.json(200, {"edge": name})

    edge = HttpEdge(host=host, port=0, routes=[Route("GET", "/who", who, public=True)],
                    tokens=[], name=name)
    edge.prepare()
    try:
        sock, board = borrow_edge(Path(path), host, int(port))
        assert board is not None, "the keeper lent no board"
        edge.listen(sock, board)
        deadline = time.monotonic() + 10.0
        while board.slot < 0:  # claimed in the edge's loop
            if time.monotonic() > deadline:
                raise TimeoutError("the edge did not claim a slot of the board")
            time.sleep(0.005)
        print("ready", board.slot, flush=True)
        sys.stdin.read()  # until the test closes it
    finally:
        edge.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
