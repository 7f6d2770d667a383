"""What the translation tests share: an English sentence, the Spanish words its translation may
contain, a word splitter, and a client of the WebSocket translation endpoints."""
from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import numpy as np

from media.audio import from_pcm16, to_pcm16

EN_TEXT = "Good morning. I would like a cup of coffee and a glass of water, please."
SPANISH_WORDS = {"buenos", "días", "dias", "quiero", "quisiera", "gustaría", "gustaria", "taza", "café",
                 "cafe", "vaso", "agua", "por", "favor", "un", "una", "de", "y"}


def words(text: str) -> list[str]:
    """Lower-cased words (Spanish letters included), punctuation dropped."""
    return re.findall(r"[\wáéíóúñü']+", text.lower())


async def ws_session(url: str, start: dict, audio: np.ndarray | None, rate: int = 16000,
                     realtime: bool = False, timeout: float = 90):
    """Start a stream, send the audio (in real time or at once), stop; returns (events, pcm)."""
    events, pcm = [], bytearray()
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_json(start)
        started = await ws.receive_json(timeout=30)
        assert started["type"] == "started", started
        events.append(started)
        step = rate // 10
        for i in range(0, len(audio), step):
            await ws.send_bytes(to_pcm16(audio[i:i + step]).tobytes())
            if realtime:
                await asyncio.sleep(0.1)
        await ws.send_json({"type": "stop_stream"})
        while True:
            msg = await ws.receive(timeout=timeout)
            if msg.type == aiohttp.WSMsgType.BINARY:
                pcm += msg.data
                continue
            event = json.loads(msg.data)
            events.append(event)
            if event["type"] == "stopped":
                break
    return events, from_pcm16(bytes(pcm))
