"""Resumable WebRTC sessions: a client whose connection dropped attaches a new peer connection to
the same session with the ready event's resume token (aiortc clients, in-process server)."""
from __future__ import annotations

import aiohttp
import numpy as np

from client import ArrayAudioTrack, StreamClient
from server.resume import ResumeTokens
from testing.media import espeak, load_audio
from tests.test_server import post, wait_until


async def offer_sdp() -> str:
    """A real offer of a connection that will never be used."""
    client = StreamClient()
    client.pc.addTransceiver("audio", direction="recvonly")
    await client.pc.setLocalDescription(await client.pc.createOffer())
    sdp = client.pc.localDescription.sdp
    await client.pc.close()
    return sdp


async def test_a_dropped_connection_resumes_the_same_session(media_server):
    server = media_server.server
    voice = load_audio(espeak("en+f3", "Hello, I am still here after the network came back."))
    client = StreamClient(media_server.url, ["gender"], {"gender": {"interval": 0.5}})
    await client.connect(ArrayAudioTrack(voice, 16000, loop=True))
    try:
        ready = await client.next_event("ready")
        assert ready["resume_token"] and ready["resume_seconds"] == 30
        assert (await client.next_event("gender", timeout=30))["label"] == "female"
        (session,) = server.sessions.values()
        pipeline, first_pc = session.pipelines["gender"], session.pc

        await client.pc.close()  # the connection drops: the session waits, its pipelines run on
        await wait_until(lambda: session.peer.lost)
        assert server.sessions == {session.id: session} and not session.closing
        session.emit("probe", n=1)  # emitted while nobody is connected: kept for the client

        answer = await client.resume(ArrayAudioTrack(voice, 16000, loop=True))
        assert answer["session_id"] == session.id
        resumed = await client.next_event("resumed")
        assert resumed["session_id"] == session.id and resumed["pipelines"] == ["gender"]
        assert resumed["queued"] >= 1 and resumed["dropped"] == 0
        assert (await client.next_event("probe"))["n"] == 1
        gender = await client.next_event("gender", timeout=30)  # the same pipeline hears the new connection
        assert gender["label"] == "female" and gender["t"] > resumed["t"]
        assert server.sessions == {session.id: session}  # counted once
        assert session.pipelines["gender"] is pipeline and pipeline.options["interval"] == 0.5
        assert session.pc is not first_pc and first_pc.connectionState == "closed"
        client.send({"type": "ping", "id": 3})
        assert (await client.next_event("pong"))["id"] == 3
    finally:
        await client.close()  # "close": the server ends it at once rather than waiting
    await wait_until(lambda: not server.sessions, timeout=5)


async def test_a_silent_client_is_detached_then_freed(settings, media_server):
    """No media or messages (a sleeping laptop): the connection is given up after the heartbeat
    timeout, the session after --resume-seconds more; its token then answers 410."""
    server = media_server.server
    server.settings.heartbeat_timeout, server.settings.resume_seconds = 1.0, 1.5
    client = StreamClient(media_server.url, ["gender"])
    await client.connect()
    try:
        ready = await client.next_event("ready")
        assert ready["resume_seconds"] == 1.5
        client.send({"type": "ping"})  # heard from once (one never heard from is a ghost: closed at once)
        (session,) = server.sessions.values()
        await wait_until(lambda: session.peer.lost, timeout=5)
        assert server.sessions  # waiting for a resume
        await wait_until(lambda: not server.sessions, timeout=5)
        assert session.closed.is_set() and session.audio_out.readyState == "ended"
        status, body = await post(media_server.url, json={"type": "offer", "sdp": await offer_sdp(),
                                                          "resume": ready["resume_token"]})
        assert status == 410 and "ended" in body["error"], body
    finally:
        await client.close()


async def test_bad_tokens_and_resuming_off(settings, media_server):
    server = media_server.server
    sdp = await offer_sdp()
    client = StreamClient(media_server.url, ["gender"])
    await client.connect()
    try:
        token = (await client.next_event("ready"))["resume_token"]
        session_id, signature = token.split(".")
        assert session_id == client.session_id
        forged = ResumeTokens().token(session_id)  # signed by another key
        for bad in ["", "nonsense", f"{session_id}.{signature[:-2]}xx", forged, f"{token}.x", 42, None, ["x"], "é.é"]:
            status, body = await post(media_server.url, json={"type": "offer", "sdp": sdp, "resume": bad})
            assert status == 404 and body["error"] == "unknown resume token", (bad, status, body)
        status, body = await post(media_server.url, json={"type": "offer", "sdp": "v=0 junk", "resume": token})
        assert status == 400 and "SDP" in body["error"]
        assert list(server.sessions) == [session_id] and not server.sessions[session_id].peer.lost
    finally:
        await client.close()
    await wait_until(lambda: not server.sessions, timeout=5)  # "close" ends it at once
    status, body = await post(media_server.url, json={"type": "offer", "sdp": sdp, "resume": token})
    assert status == 410, body

    server.settings.resume_seconds = 0  # off: no token, and a drop ends the session at once
    client = StreamClient(media_server.url, ["gender"])
    await client.connect(ArrayAudioTrack(np.zeros(1600, np.float32), 16000, loop=True))
    ready = await client.next_event("ready")
    assert ready["resume_token"] is None and ready["resume_seconds"] == 0
    await client.pc.close()
    await wait_until(lambda: not server.sessions, timeout=5)
    status, body = await post(media_server.url, json={"type": "offer", "sdp": sdp, "resume": token})
    assert status == 404 and "--resume-seconds 0" in body["error"]
    await client.close()
    async with aiohttp.ClientSession() as http:  # nothing was left behind
        async with http.get(media_server.url + "/health") as resp:
            assert (await resp.json())["sessions"] == 0


async def test_a_resume_replaces_a_connection_still_attached(media_server):
    """The client noticed the drop before the server did (or moved to another network): the new
    connection takes over, the old one is closed."""
    server = media_server.server
    client = StreamClient(media_server.url, ["gender"])
    await client.connect()
    token = (await client.next_event("ready"))["resume_token"]
    (session,) = server.sessions.values()
    old_peer = session.peer
    other = StreamClient(media_server.url)
    try:
        answer = await other.connect(resume=token)
        assert answer["session_id"] == session.id
        assert (await other.next_event("resumed"))["session_id"] == session.id
        assert session.peer is not old_peer and old_peer.lost
        await wait_until(lambda: client.pc.connectionState == "closed" or client.channel.readyState == "closed")
        other.send({"type": "ping", "id": 1})
        assert (await other.next_event("pong"))["id"] == 1
        assert list(server.sessions) == [session.id]
    finally:
        await client.close()
        await other.close()
    await wait_until(lambda: not server.sessions, timeout=5)
