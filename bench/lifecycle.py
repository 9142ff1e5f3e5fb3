"""Session lifecycle: delete with a recovery point against a plain delete, restore, and bulk delete.

Copies of the real sessions the growth scenario built (bench/data.clone_thread),
driven over HTTP against the production-default server; server times come from
its own request log, so both sides of each ratio are measured the same way,
interleaved in one loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from bench import data
from bench.aioclient import Connection
from bench.common import BUSINESS, AppServer, Results, connect, new_user, say, stats, thread_id
from bench.scenarios import HOST, auth


async def _timed(conn: Connection, method: str, path: str, body=None) -> tuple[str, object]:
    rid = uuid.uuid4().hex
    r = await conn.request(method, path, body=body, headers={"X-Request-ID": rid})
    if r.status >= 300:
        raise RuntimeError(f"{method} {path}: {r.status} {r.body[:300]!r}")
    return rid, r


def lifecycle(server: AppServer, db_url: str, templates: dict[tuple[str, int], str], sizes, results: Results) -> None:
    user = new_user()
    mid, big = sizes.turns[1], sizes.turns[-1]
    n = sizes.delete_samples
    with connect(db_url) as conn:
        # Delete with a recovery point vs a plain delete, alternating, on copies of the mid-sized session.
        for mode in ("latest", "full"):
            pairs = []
            for i in range(n + 2):
                pair = []
                for kind in ("plain", "backup"):
                    sid = f"life-{mode}-{kind}-{i}"
                    data.clone_thread(conn, templates[(mode, mid)], user, sid, thread_id(user, sid), BUSINESS)
                    pair.append(sid)
                pairs.append(pair)

            async def deletes(pairs=pairs) -> list[tuple[str, str]]:
                c = Connection(HOST, server.port, auth(user))
                out = []
                try:
                    for plain, backed in pairs:
                        rid_plain, _ = await _timed(c, "DELETE", f"/api/llm/sessions/{plain}")
                        rid_backup, _ = await _timed(c, "DELETE", f"/api/llm/sessions/{backed}?backup=true")
                        out.append((rid_plain, rid_backup))
                finally:
                    await c.close()
                return out[2:]  # two warm-ups

            rids = asyncio.run(deletes())
            log = server.request_log()
            plain = stats([log[a]["duration_ms"] for a, _ in rids if a in log])
            backed = stats([log[b]["duration_ms"] for _, b in rids if b in log])
            ratio = backed["p50"] / plain["p50"]
            results.detail("lifecycle", f"delete_backup_vs_plain_{mode}_{mid}",
                           {"plain_ms": plain, "backup_ms": backed, "ratio_p50": ratio,
                            "rows": data.thread_rows(conn, templates[(mode, mid)])})
            say(f"delete {mid}-turn ({mode}) with backup p50 {backed['p50']:.2f} ms vs plain {plain['p50']:.2f} ms "
                f"-> x{ratio:.2f}")
            results.target(f"delete with backup / plain delete, {mid}-turn session ({mode}), p50 server time",
                           ratio, "x", "<= 1.5", ratio <= 1.5)

        # Restore of the largest session: delete it with a recovery point, then time the restore.
        for mode in ("latest", "full"):
            samples = []
            for i in range(3 if mode == "latest" else 1):
                sid = f"life-restore-{mode}-{i}"
                data.clone_thread(conn, templates[(mode, big)], user, sid, thread_id(user, sid), BUSINESS)

                async def restore(sid=sid) -> str:
                    c = Connection(HOST, server.port, auth(user))
                    try:
                        _, r = await _timed(c, "DELETE", f"/api/llm/sessions/{sid}?backup=true")
                        rid, _ = await _timed(c, "POST", "/api/llm/sessions/restore",
                                              {"backup_id": r.json()["backup"]["backup_id"]})
                        return rid
                    finally:
                        await c.close()

                rid = asyncio.run(restore())
                samples.append(server.request_log()[rid]["duration_ms"])
            rows = data.thread_rows(conn, templates[(mode, big)])
            results.detail("lifecycle", f"restore_{mode}_{big}", {"server_ms": stats(samples), "rows": rows})
            say(f"restore of a {big}-turn session ({mode}, {rows}): server p50 {stats(samples)['p50']:.1f} ms")

    # Bulk delete against the same number of single deletes, on small real sessions.
    count = 100 if sizes.quick else 500
    with connect(db_url) as conn:
        bulk_ids, single_ids = [], []
        for i in range(count):
            for kind, ids in (("bulk", bulk_ids), ("single", single_ids)):
                sid = f"life-{kind}-{i}"
                data.clone_thread(conn, templates[("latest", sizes.turns[0])], user, sid, thread_id(user, sid), BUSINESS)
                ids.append(sid)

    async def bulk_vs_single() -> tuple[float, float]:
        c = Connection(HOST, server.port, auth(user))
        try:
            started = time.perf_counter()
            for sid in single_ids:
                await _timed(c, "DELETE", f"/api/llm/sessions/{sid}")
            single = time.perf_counter() - started
            started = time.perf_counter()
            _, r = await _timed(c, "POST", "/api/llm/sessions/bulk-delete", {"session_ids": bulk_ids})
            bulk = time.perf_counter() - started
            assert r.json()["deleted_count"] == count, r.body[:300]
            return single, bulk
        finally:
            await c.close()

    single_s, bulk_s = asyncio.run(bulk_vs_single())
    res = {"sessions": count, "bulk_per_s": count / bulk_s, "single_per_s": count / single_s}
    results.detail("lifecycle", "bulk_delete", res)
    say(f"bulk delete of {count}: {res['bulk_per_s']:.0f} sessions/s; one DELETE each: {res['single_per_s']:.0f}/s")
