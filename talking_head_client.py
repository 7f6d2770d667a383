#!/usr/bin/env python3
"""A small client for the talking-head REST API: upload a portrait, open an avatar session, feed it
audio in real time, read its status, close it. A viewer watches the avatar over WebRTC (the page
with ?avatar_session=ID, or ``client.StreamClient`` with options
{"talking_head": {"drive": "api", "avatar_session": ID}}).

    python talking_head_client.py speech.wav                    # default portrait
    python talking_head_client.py speech.wav --portrait me.jpg  # prints the session id; open the
                                                                # page to watch, then it feeds
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import wave
from pathlib import Path

import aiohttp
import numpy as np


class AvatarAPIError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class AvatarClient:
    def __init__(self, url: str = "http://127.0.0.1:8080", token: str | None = None):
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}  # API key or session token
        self._http: aiohttp.ClientSession | None = None

    async def _request(self, method: str, path: str, **kwargs) -> dict:
        if self._http is None:
            self._http = aiohttp.ClientSession(headers=self._headers)
        async with self._http.request(method, self.url + path, **kwargs) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = {"error": (await resp.text())[:200]}
            if resp.status >= 400:
                raise AvatarAPIError(resp.status, body.get("error", "") if isinstance(body, dict) else str(body))
            return body

    async def upload_portrait(self, image: bytes | str | Path, filename: str | None = None,
                              content_type: str = "image/jpeg") -> dict:
        """-> {"portrait_id", "width", "height", "analysis_ms"}"""
        if not isinstance(image, bytes):
            filename = filename or Path(image).name
            image = Path(image).read_bytes()
        form = aiohttp.FormData()
        form.add_field("image", image, filename=filename or "portrait.jpg", content_type=content_type)
        return await self._request("POST", "/api/portraits", data=form)

    async def create_session(self, portrait_id: str = "default", sample_rate: int | str = 16000,
                             chunk_duration: float = 10.0) -> dict:
        """-> the session's status, with "session_id"."""
        return await self._request("POST", "/api/avatar/sessions", json={
            "portrait_id": portrait_id, "sample_rate": sample_rate, "chunk_duration": chunk_duration})

    async def feed_audio(self, session_id: str, audio: bytes, sample_rate: int | str | None = None,
                         is_final: bool = False) -> dict:
        """``audio``: WAV bytes, or raw 16-bit little-endian mono PCM at ``sample_rate`` (default:
        the session's). ``is_final`` ends the stream (``audio`` may then be empty)."""
        params = {"is_final": "true" if is_final else "false"}
        if sample_rate is not None:
            params["sample_rate"] = str(sample_rate)
        return await self._request("POST", f"/api/avatar/sessions/{session_id}/audio", params=params,
                                   data=audio, headers={"Content-Type": "application/octet-stream"})

    async def status(self, session_id: str) -> dict:
        return await self._request("GET", f"/api/avatar/sessions/{session_id}")

    async def interrupt(self, session_id: str) -> dict:
        """Stop the avatar's speech now; -> {"dropped_seconds", ...status}."""
        return await self._request("POST", f"/api/avatar/sessions/{session_id}/interrupt")

    async def delete_session(self, session_id: str) -> dict:
        return await self._request("DELETE", f"/api/avatar/sessions/{session_id}")

    async def speak_wav(self, session_id: str, path: str | Path, chunk_seconds: float = 0.5) -> None:
        """Feed a 16-bit PCM WAV file in real time, chunk by chunk, then end the stream."""
        with wave.open(str(path), "rb") as w:
            rate, channels = w.getframerate(), w.getnchannels()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, channels)
        mono = pcm.mean(axis=1).astype("<i2")
        step = int(chunk_seconds * rate)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, at in enumerate(range(0, len(mono), step)):
            await self.feed_audio(session_id, mono[at:at + step].tobytes(), sample_rate=rate)
            await asyncio.sleep(max(0.0, start + (i + 1) * chunk_seconds - 0.2 - loop.time()))
        await self.feed_audio(session_id, b"", is_final=True)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


async def _main(args) -> int:
    api = AvatarClient(args.url)
    try:
        portrait = "default"
        if args.portrait:
            portrait = (await api.upload_portrait(args.portrait))["portrait_id"]
        session = await api.create_session(portrait)
        sid = session["session_id"]
        print(json.dumps(session), flush=True)
        print(f"watch it: {args.url}/?avatar_session={sid}", file=sys.stderr, flush=True)
        await asyncio.sleep(args.wait)
        await api.speak_wav(sid, args.wav)
        while (status := await api.status(sid))["state"] == "speaking":
            await asyncio.sleep(0.5)
        print(json.dumps(status), flush=True)
        await api.delete_session(sid)
    except AvatarAPIError as exc:
        print(f"error {exc}", file=sys.stderr)
        return 1
    finally:
        await api.close()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wav", help="16-bit PCM WAV to speak")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--portrait", help="image file to upload as the face")
    parser.add_argument("--wait", type=float, default=5.0, help="seconds to wait for a viewer before speaking")
    sys.exit(asyncio.run(_main(parser.parse_args())))


if __name__ == "__main__":
    main()
