"""The change stream through redis-py, a real Redis client library (SPEC §13).

Usage: streams_redis_py.py PORT follow  -- xread, xrange, $, BLOCK timeout and wake-up, in
                                           RESP2 and in RESP3 (redis-py's HELLO 3)
       streams_redis_py.py PORT trimmed -- a cursor behind retention gets TRIMMED <first_id>

Exits non-zero (an AssertionError and its message) if the server does not behave as §13
and Redis define; prints one `ok <check>` line per check passed.
"""

import sys
import threading
import time

import redis


def connect(port, protocol=2):
    return redis.Redis(
        host="127.0.0.1", port=port, decode_responses=True, socket_timeout=30, protocol=protocol
    )


def streams(client):
    """STREAMS.INFO as {name: {first_id, last_id}}: maps in RESP3, flat pairs in RESP2."""
    info = {}
    for stream in client.execute_command("STREAMS.INFO"):
        fields = stream if isinstance(stream, dict) else dict(zip(stream[0::2], stream[1::2]))
        info[fields["name"]] = fields
    return info


def xread(client, cursors, **options):
    """xread as [[stream, entries], ...]: redis-py gives RESP3's map as {stream: [entries]}."""
    reply = client.xread(cursors, **options)
    if isinstance(reply, dict):
        return [[name, found[0]] for name, found in reply.items()]
    return reply


def as_id(text):
    batch, index = text.split("-")
    return (int(batch), int(index))


def follow(port, protocol):
    client = connect(port, protocol)
    region = "eu-west"
    profile = client.execute_command("PROFILE.OPEN", region)
    account, card = client.execute_command("ACCOUNT.OPEN", profile, "CHECKING")
    stream = "changes:%d" % (account % len(streams(client)))
    pay_id = "py-pay-%d" % protocol
    paid = client.execute_command("PAY", card, 300, pay_id)
    assert paid[0] == "APPROVED", paid

    # XREAD from 0: every entry, ids increasing, the payment with what its reply said.
    reply = xread(client, {stream: "0"}, count=10_000)
    assert len(reply) == 1 and reply[0][0] == stream, reply
    entries = reply[0][1]
    ids = [as_id(entry_id) for entry_id, _ in entries]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    pays = [f for _, f in entries if f.get("command_id") == pay_id]
    assert len(pays) == 1, entries
    pay = pays[0]
    expected = {
        "kind": "PAY",
        "card": str(card),
        "amount": "300",
        "outcome": "APPROVED",
        "account": str(account),
        "balance": str(paid[1]),
        "spent_7d": str(paid[2]),
    }
    assert {k: pay.get(k) for k in expected} == expected, pay
    assert int(pay["ts"]) > 1_700_000_000_000, pay
    opened = [f for _, f in entries if f["kind"] == "OPEN_ACCOUNT" and f["account"] == str(account)]
    assert len(opened) == 1 and opened[0]["outcome"] == "DONE", entries
    print("ok xread from 0 (RESP%d)" % protocol)

    # STREAMS.INFO's last id is the last entry; XRANGE - + is the same list; COUNT cuts it.
    info = streams(client)[stream]
    assert info["last_id"] == entries[-1][0], (info, entries[-1])
    assert client.xrange(stream, "-", "+") == entries
    assert client.xrange(stream, "-", "+", count=2) == entries[:2]
    middle = entries[len(entries) // 2][0]
    assert client.xrange(stream, middle, "+") == entries[len(entries) // 2 :]
    assert client.xrange(stream, "(" + middle, "+") == entries[len(entries) // 2 + 1 :]
    print("ok xrange (RESP%d)" % protocol)

    # After the last id there is nothing: nil at once, and nil after a BLOCK timeout.
    last = entries[-1][0]
    assert not xread(client, {stream: last}), "nothing after the last id"
    started = time.monotonic()
    assert not xread(client, {stream: "$"}, block=300), "$ sees no old entry"
    waited = time.monotonic() - started
    assert 0.25 <= waited < 5, waited
    print("ok block timeout (RESP%d)" % protocol)

    # A reader blocked on `$` is woken by the next durable entry, and sees only it.
    def pay_later():
        time.sleep(0.3)
        connect(port).execute_command("PAY", card, 7, "py-later-%d" % protocol)

    payer = threading.Thread(target=pay_later)
    started = time.monotonic()
    payer.start()
    woken = xread(client, {stream: "$"}, block=20_000)
    waited = time.monotonic() - started
    payer.join()
    assert 0.25 <= waited < 10, waited
    assert len(woken) == 1 and len(woken[0][1]) == 1, woken
    new_id, new = woken[0][1][0]
    assert new["command_id"] == "py-later-%d" % protocol and as_id(new_id) > as_id(last), woken
    print("ok block wake-up (RESP%d)" % protocol)

    # Several streams in one XREAD: each comes back under its own name.
    names = sorted(streams(client))
    everything = xread(client, {name: "0-0" for name in names}, count=5)
    assert sorted(name for name, _ in everything) == names, everything
    assert all(0 < len(found) <= 5 for _, found in everything), everything
    print("ok several streams (RESP%d)" % protocol)


def trimmed(port):
    client = connect(port)
    info = streams(client)["changes:0"]
    first = info["first_id"]
    assert as_id(first) > (0, 1), info
    try:
        xread(client, {"changes:0": "0-1"})
    except redis.exceptions.ResponseError as error:
        assert str(error) == "TRIMMED " + first, str(error)
    else:
        raise AssertionError("a cursor behind retention is refused")
    # From the start of what is retained, it reads on.
    reply = xread(client, {"changes:0": "0"}, count=1)
    assert reply[0][1][0][0] == first, reply
    print("ok trimmed")


if __name__ == "__main__":
    port, mode = int(sys.argv[1]), sys.argv[2]
    if mode == "follow":
        follow(port, 2)
        follow(port, 3)
    else:
        trimmed(port)
