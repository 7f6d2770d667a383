"""Rooms: end of a sentence -> its translated speech heard by the other participant.

Each room has two aiortc participants on a server subprocess: a speaker (translation en -> es)
who says a few espeak-ng sentences with pauses between them, and a listener (es -> en, so it
hears Spanish) who stays silent. The listener's own returned audio track carries only the
speaker's translated speech (its own translation has nothing to say): its k-th burst of sound
(bursts apart by over a second of silence) is the k-th sentence's translation, and the latency of
a sentence is the start of its burst minus the moment the sentence's last voiced sample left the
speaker's client. The speaker's own returned audio carries the same translation (as a lone
session's does): measured the same way, it is the baseline of the same run. A warm-up room (one sentence, not reported) runs first. Run with 1 and 3 rooms
at once:

    python -m bench.rooms_bench --rooms 1,3

With ``--speak es --third fr``, rooms of three: a Spanish speaker (its own translation: into
English), an English listener as above, and a third participant with no pipeline who hears French:
the room translates and speaks the speaker's transcript into French (server/rooms.py), measured
the same way on the third participant's own audio:

    python -m bench.rooms_bench --rooms 1 --speak es --third fr

Figures on a loaded machine are noisy; compare the rows of one run."""
from __future__ import annotations

import asyncio
import time

import numpy as np

from bench import harness
from bench.translation_bench import SENTENCES
from client import ArrayAudioTrack, StreamClient
from testing.media import espeak, frame_level, load_audio
from testing.net import http_get
from testing.server import ServerProcess

RATE = 48000
GAP = 4.0  # seconds of silence after each sentence
AUDIBLE = 0.01  # RMS of a received frame that counts as speech
BURST_GAP = 1.0  # seconds of silence between two translations


class SentenceTrack(ArrayAudioTrack):
    """Sentences separated by silence; notes the wall time at which each one's last voiced sample went out."""

    def __init__(self, clips: list[np.ndarray]):
        parts, self.ends = [np.zeros(RATE, np.float32)], []
        for clip in clips:
            voiced = np.flatnonzero(np.abs(clip) > 0.02)
            self.ends.append(sum(map(len, parts)) + int(voiced[-1]) + 1)
            parts += [clip, np.zeros(int(GAP * RATE), np.float32)]
        super().__init__(np.concatenate(parts), RATE)
        self.sent: list[float] = []  # wall time of each sentence's end

    async def recv(self):
        frame = await super().recv()
        while len(self.sent) < len(self.ends) and self.pos >= self.ends[len(self.sent)]:
            self.sent.append(time.monotonic())
        return frame

    @property
    def seconds(self) -> float:
        return len(self.pcm) / RATE


def burst_latencies(client: StreamClient, sent: list[float]) -> list[float]:
    """Start of the k-th burst of sound on the client's own returned audio minus the k-th sentence's end."""
    own = next(t.mid for t in client.pc.getTransceivers() if t.kind == "audio")
    loud = [t for t, frame in client.by_mid.get(own, []) if frame_level(frame) > AUDIBLE]
    bursts = [t for i, t in enumerate(loud) if i == 0 or t - loud[i - 1] > BURST_GAP]
    return [start - end for start, end in zip(bursts, sent)]


async def run_rooms(url: str, rooms: int, clips: list[np.ndarray], speak: str = "en",
                    third: str | None = None, avatar: bool | None = None) -> dict:
    pairs, thirds = [], []
    hear = "es" if speak == "en" else "en"
    slots = 1 if third is None else 2  # receive slots: one per other participant
    for i in range(rooms):
        room = f"bench-{rooms}-{i}-{time.monotonic_ns()}"
        listener = StreamClient(url, ["translation"], {"translation": {"source": hear, "target": speak}},
                                receive_slots=slots)
        listener.body = {"room": room, "display_name": "listener", "avatar": avatar}
        await listener.connect(ArrayAudioTrack(np.zeros(RATE, np.float32), RATE, loop=True))
        if third is not None:  # no pipeline: hears the others in its language
            other = StreamClient(url, [], receive_slots=slots)
            other.body = {"room": room, "display_name": "third", "hear": third, "avatar": avatar}
            other.keep_frames = 100_000
            await other.connect(ArrayAudioTrack(np.zeros(RATE, np.float32), RATE, loop=True))
            thirds.append(other)
        speaker = StreamClient(url, ["translation"], {"translation": {"source": speak, "target": hear}},
                               receive_slots=slots)
        speaker.body = {"room": room, "display_name": "speaker", "avatar": avatar}
        listener.keep_frames = speaker.keep_frames = 100_000
        pairs.append((speaker, listener, SentenceTrack(clips)))
    await asyncio.gather(*(s.connect(track) for s, _, track in pairs))
    await asyncio.sleep(pairs[0][2].seconds + 25)  # the last sentence's translation arrives
    result = {"listener": [], "speaker": [], "captions": 0, "third": [], "third_captions": 0}
    for other, (_, _, track) in zip(thirds, pairs):
        result["third_captions"] += sum(e["type"] == "translation" and e.get("final") and "participant" in e
                                        for e in harness.drain(other))
        result["third"] += burst_latencies(other, track.sent)
    for speaker, listener, track in pairs:
        result["captions"] += sum(e["type"] == "translation" and e.get("final") and "participant" in e
                                  for e in harness.drain(listener))
        result["listener"] += burst_latencies(listener, track.sent)
        result["speaker"] += burst_latencies(speaker, track.sent)  # its own translation, as a lone session hears it
    await asyncio.gather(*(c.close() for pair in pairs for c in pair[:2]), *(c.close() for c in thirds))
    return result


async def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--rooms", default="1,3", help="rooms of two at once, comma-separated levels")
    parser.add_argument("--sentences", type=int, default=3, help="sentences each speaker says")
    parser.add_argument("--speak", choices=("en", "es"), default="en",
                        help="the speaker's language (the listener hears the other of the two)")
    parser.add_argument("--no-avatar", action="store_true",
                        help="no talking-head stand-ins (the participants send no camera: by default each is "
                             "shown to the others as a talking head, rendered at 25 fps)")
    parser.add_argument("--third", default=None,
                        help="a third participant per room hearing this language (e.g. fr with --speak es)")
    args = parser.parse_args()
    harness.loopback_only()
    clips = [load_audio(espeak("en-us", english) if args.speak == "en" else espeak("es", spanish), rate=RATE)
             for english, spanish in SENTENCES[:args.sentences]]
    rows = []
    assert len(clips) <= len(SENTENCES)
    server = ServerProcess.script("rooms-bench", harness.ROOT / "bench" / "results" / "rooms_bench.log",
                                  "--preload", "translation", "--room-size", "3" if args.third else "2",
                                  "--max-sessions", "16",
                                  "--max-sessions-per-address", "0", "--offer-burst", "20",
                                  "--load-threshold", "0")  # latency is measured here, not admission
    async with server:
        while not (await http_get(f"{server.url}/health"))["ready"]:  # the models are loaded
            await asyncio.sleep(1)
        avatar = False if args.no_avatar else None
        await run_rooms(server.url, 1, clips[:1], args.speak, args.third, avatar)  # warm-up: first inferences, connections
        for rooms in harness.int_list(args.rooms):
            result = await run_rooms(server.url, rooms, clips, args.speak, args.third, avatar)
            ms = [round(x * 1000) for x in result["listener"]]
            own = [round(x * 1000) for x in result["speaker"]]
            pct = lambda values, q: f"{harness.pct(values, q):.0f}" if values else "-"  # noqa: E731
            third = [round(x * 1000) for x in result["third"]]
            rows.append([str(rooms), str(rooms * len(clips)), str(result["captions"]), str(len(ms)),
                         pct(ms, 50), pct(ms, 95), pct(own, 50), pct(own, 95)]
                        + ([str(result["third_captions"]), str(len(third)), pct(third, 50), pct(third, 95)]
                           if args.third else []))
    print(f"rooms bench, commit {harness.git_commit()}, speaker speaks {args.speak}"
          + (", no talking-head stand-ins" if args.no_avatar else "")
          + (f", third participant hears {args.third}" if args.third else "") + "\n")
    print("end of sentence -> its translated speech heard, ms")
    print(harness.markdown_table([f"rooms of {3 if args.third else 2}", "sentences", "captions at the listener",
                                  "heard by the listener", "listener p50", "listener p95", "speaker itself p50",
                                  "speaker itself p95"]
                                 + ([f"captions at the third ({args.third})", "heard by the third",
                                     "third p50", "third p95"] if args.third else []), rows))


if __name__ == "__main__":
    asyncio.run(main())
