"""The real app with :class:`FakeEngine` under uvicorn, in a process of its own: for tests that
kill a server (``kill -9``) or run two replicas side by side.

    python tests/fake_server.py --port P [--usage-db URL] [--keys-file F] [--redis-url U]
                                [--redis-prefix P] [--frozen-time T]

The settings are the in-process tier's (``in_process.settings``). The settings have no Redis key
prefix and no clock, so ``--redis-prefix`` / ``--frozen-time`` rebuild the app's limiter as
``RedisLimiter(U, prefix=P, clock=lambda: T)``: a test's keys stay its own, and a minute
boundary never falls between two requests.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import uvicorn
from fake_engine import FakeEngine
from in_process import settings

from iama_server.app import create_app
from iama_server.limits import RedisLimiter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--usage-db", help="SQLAlchemy URL of the usage store (default: a fresh SQLite file)")
    parser.add_argument("--keys-file")
    parser.add_argument("--redis-url")
    parser.add_argument("--redis-prefix", default="iama:")
    parser.add_argument("--frozen-time", type=float, help="the limiter's clock, stopped here (epoch seconds)")
    args = parser.parse_args()
    overrides: dict[str, Any] = {"keys_file": args.keys_file, "redis_url": args.redis_url}
    if args.usage_db:
        overrides["usage_db"] = args.usage_db
    app = create_app(settings(**overrides), engine=FakeEngine())
    if args.redis_url and (args.redis_prefix != "iama:" or args.frozen_time is not None):
        frozen = args.frozen_time
        state = app.state.iama
        state.limiter = state.service.limiter = RedisLimiter(
            args.redis_url, prefix=args.redis_prefix, clock=time.time if frozen is None else lambda: frozen
        )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="info")


if __name__ == "__main__":
    main()
