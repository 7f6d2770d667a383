"""Rooms: a call between people, each on their own WebRTC session, through the server.

An offer that names a room (``{"room": "name", "display_name": "...", ...}``) joins it. Each
participant's own pipelines and returned tracks stay as they are; on top of that, every
participant receives

* every other participant's camera and microphone, relayed (aiortc ``MediaRelay``: each inbound
  track is decoded once, whoever receives it; aiortc re-encodes per receiver, as it always does),
  on **receive slots**: the offer's audio and video m-lines after its first of each kind. A
  client that wants to see and hear N others offers N extra ``recvonly`` audio and video
  transceivers; each ``participant_joined`` event says which ``mid`` of each kind carries that
  participant (``slots``), or ``null`` where no slot was free. A slot changes participant with
  ``replaceTrack``: no renegotiation, ever.
* every other participant's shareable pipeline events, tagged ``participant``: gender,
  transcript and translation always; emotion, comment and talking_head when that participant
  lists the pipeline in ``share``.
* the translated speech of the others, in its own returned audio track, in the language it
  hears (``hear``, by default the language the listener speaks: their ``translation.source``).
  A speaker's utterance is recognised once, by its own translation pipeline, which also
  translates it into its ``target``; the room translates and speaks its transcript into each
  other language heard in the room (once per language, however many hear it). Under translated
  speech the speaker's original voice on its slot plays at ``original_volume`` (0: muted).

* a talking head in place of the camera of a participant who sends none (``avatar``; server/standin.py):
  their portrait (``portrait``) speaking what each listener hears from them, rendered only while
  a slot shows it.

``participant_joined`` / ``participant_left`` (participant id, display name, languages) come on
the data channel. A participant whose connection is lost (closed, failed, or silent for
``--heartbeat-timeout``) leaves at once; if its session resumes, it joins again. A room holds at
most ``--room-size`` participants and vanishes with its last one.
"""
from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from dataclasses import dataclass, field

import numpy as np
from aiortc import sdp
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcpeerconnection import or_direction

from pipelines.translation.languages import available_pairs
from server.slots import Slot
from server.standin import StandIn

log = logging.getLogger(__name__)

ROOM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# event type -> the pipeline it comes from
EVENT_PIPELINE = {"gender": "gender", "transcript": "translation", "translation": "translation",
                  "emotion": "emotion", "comment": "commentary", "talking_head": "talking_head"}
ALWAYS_SHARED = frozenset({"gender", "translation"})
DEFAULT_ORIGINAL_VOLUME = 0.15


class RoomError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def new_room_name() -> str:
    """An unguessable room name (128 random bits), for a share link."""
    return secrets.token_urlsafe(16)


@dataclass(eq=False)
class Participant:
    session: object  # WebRTCSession
    display_name: str
    hear: str | None  # the language whose translations it receives
    share: frozenset[str]  # pipelines whose events the others receive
    original_volume: float
    avatar: bool | None = None  # a talking head instead of the camera: always, never, None: without one
    portrait: str = "default"  # the talking head's portrait id
    present: bool = False  # its connection is up
    sources: dict[str, MediaStreamTrack] = field(default_factory=dict)  # its inbound tracks by kind
    slots: dict[str, list[Slot]] = field(default_factory=dict)  # its current connection's receive slots
    speech: asyncio.Task | None = None
    translating: asyncio.Task | None = None  # its speech into the other languages heard in the room
    standin: StandIn | None = None  # its talking head, shown instead of its camera

    @property
    def id(self) -> str:
        return self.session.id

    @property
    def speaks(self) -> str | None:
        translation = self.session.pipelines.get("translation")
        return translation.options["source"] if translation is not None else None

    @property
    def translates_to(self) -> str | None:
        translation = self.session.pipelines.get("translation")
        return translation.options["target"] if translation is not None else None

    def describe(self) -> dict:
        return {"participant": self.id, "display_name": self.display_name,
                "languages": {"speaks": self.speaks, "hears": self.hear,
                              "translated_to": self.translates_to},
                "avatar": self.standin is not None}


def participant_options(body: dict, translation_options: dict | None) -> dict:
    """A room offer's participant fields, checked; raises RoomError (400)."""
    name = body.get("display_name", "")
    if not isinstance(name, str) or len(name) > 64:
        raise RoomError(400, '"display_name" must be a string of at most 64 characters')
    hear = body.get("hear", (translation_options or {}).get("source"))
    if hear is not None and (not isinstance(hear, str) or not re.fullmatch(r"[a-z]{2,3}", hear)):
        raise RoomError(400, '"hear" must be a language code like "es"')
    share = body.get("share", [])
    if not isinstance(share, list) or not all(isinstance(s, str) for s in share):
        raise RoomError(400, '"share" must be a list of pipeline names')
    volume = body.get("original_volume", DEFAULT_ORIGINAL_VOLUME)
    if isinstance(volume, bool) or not isinstance(volume, (int, float)) or not 0 <= volume <= 1:
        raise RoomError(400, '"original_volume" must be a number from 0 (muted) to 1')
    avatar = body.get("avatar")
    if avatar not in (None, True, False):
        raise RoomError(400, '"avatar" must be true, false or null (a talking head when no camera is sent)')
    portrait = body.get("portrait", "default")
    if not isinstance(portrait, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", portrait):
        raise RoomError(400, '"portrait" must be a portrait id (POST /api/portraits)')
    return {"display_name": name.strip(), "hear": hear, "share": ALWAYS_SHARED | frozenset(share),
            "original_volume": float(volume), "avatar": avatar, "portrait": portrait}


class Room:
    def __init__(self, name: str, size: int, on_empty):
        self.name = name
        self.size = size
        self.relay = MediaRelay()
        self.participants: dict[str, Participant] = {}
        self._on_empty = on_empty

    # --- membership ----------------------------------------------------------------------------
    def join(self, session, options: dict) -> Participant:
        participant = Participant(session, **options)
        self.participants[session.id] = participant
        session.room = self
        session.taps.append(lambda type, fields: self._forward(participant, type, fields))
        participant.speech = session.spawn(self._forward_speech(participant), "room-speech")
        participant.translating = session.spawn(self._translate_for_others(participant), "room-translate")
        return participant

    def leave(self, session) -> None:
        """The session closed: out of the room for good."""
        participant = self.participants.get(session.id)
        if participant is None:
            return
        self.detach(session)
        for slot in (s for slots in participant.slots.values() for s in slots):
            slot.stop()
        for source in participant.sources.values():
            source.stop()
        if participant.standin is not None:
            participant.standin.close()
        del self.participants[session.id]
        if not self.participants:
            self._on_empty(self)

    # --- connections (called by the session's peers) ----------------------------------------------
    def attach(self, peer) -> None:
        """A connection is being answered: its audio and video m-lines after the first of each
        kind become receive slots. Called between setRemoteDescription and createAnswer."""
        participant = self.participants[peer.session.id]
        for slot in (s for slots in participant.slots.values() for s in slots):
            slot.stop()
        participant.slots = {"audio": [], "video": []}
        for transceiver in peer.pc.getTransceivers():
            if transceiver.kind in participant.slots and transceiver.sender.track is None:
                slot = Slot(transceiver.kind, transceiver.mid)
                transceiver.sender.replaceTrack(slot)
                transceiver.direction = or_direction(transceiver.direction, "sendonly")
                participant.slots[transceiver.kind].append(slot)
        self._stand_in(participant, peer)
        was_present, participant.present = participant.present, True
        for other in self.others(participant):
            self._assign(participant, other)
            if not was_present:
                other.session.emit("participant_joined", **participant.describe(),
                                   slots=self._assign(other, participant))
        self.refresh()

    def _stand_in(self, participant: Participant, peer) -> None:
        """A talking head stands in for the participant's camera where ``avatar`` says so (by
        default: where this connection's offer sends no video)."""
        wanted = participant.avatar
        if wanted is None:
            wanted = not any(m.kind == "video" and m.direction in ("sendrecv", "sendonly")
                             for m in sdp.SessionDescription.parse(peer.pc.remoteDescription.sdp).media)
        if wanted and participant.standin is None:
            standin = participant.standin = StandIn(participant.session, participant.portrait)

            async def start():
                await standin.start()
                self.refresh()
            participant.session.spawn(participant.session.guard("talking_head", start()), "room-standin")
        elif not wanted and participant.standin is not None:
            participant.standin.close()
            participant.standin = None

    def inbound(self, session, track: MediaStreamTrack) -> MediaStreamTrack:
        """A participant's inbound track: the room relays it; the session reads its own copy."""
        participant = self.participants[session.id]
        old = participant.sources.get(track.kind)
        participant.sources[track.kind] = track
        if old is not None:
            old.stop()
        self.refresh()
        return self.relay.subscribe(track, buffered=True)

    def opened(self, session) -> None:
        """A participant's data channel opened: who is here already."""
        participant = self.participants.get(session.id)
        if participant is None:
            return
        session.emit("room", room=self.name, participant=participant.id, size=self.size)
        for other in self.others(participant):
            session.emit("participant_joined", **other.describe(), slots=self._assign(participant, other))
        self.refresh()

    def detach(self, session) -> None:
        """A participant's connection is lost: the others are told at once."""
        participant = self.participants.get(session.id)
        if participant is None or not participant.present:
            return
        participant.present = False
        for slot in (s for slots in participant.slots.values() for s in slots):
            slot.feed(None)
        for other in self.others(participant):
            other.session.emit("participant_left", participant=participant.id,
                               display_name=participant.display_name)
        self.refresh()

    def others(self, participant: Participant) -> list[Participant]:
        return [p for p in self.participants.values() if p is not participant and p.present]

    # --- media ---------------------------------------------------------------------------------
    def _assign(self, listener: Participant, speaker: Participant) -> dict[str, str | None]:
        """The slot of each kind that carries ``speaker`` to ``listener`` (taking a free one)."""
        mids = {}
        for kind, slots in listener.slots.items():
            slot = next((s for s in slots if s.owner == speaker.id), None) or \
                next((s for s in slots if s.owner is None), None)
            if slot is not None and slot.owner is None:
                slot.feed(speaker.id)
            mids[kind] = slot.mid if slot is not None else None
        return mids

    def refresh(self) -> None:
        """Every slot carries the current track of its participant (or nothing, once it left)."""
        present = {p.id: p for p in self.participants.values() if p.present}
        watched: dict[str, set[str | None]] = {p: set() for p in self.participants}  # talking heads shown
        for listener in present.values():
            for slots in listener.slots.values():
                for slot in slots:
                    speaker = present.get(slot.owner)
                    if speaker is None or speaker is listener:
                        if slot.owner is not None:
                            slot.feed(None)
                        continue
                    language = self.heard_in(speaker, listener)
                    track = speaker.sources.get(slot.kind)
                    if slot.kind == "video" and speaker.standin is not None:
                        watched[speaker.id].add(language)
                        track = speaker.standin.track(language)
                    if track is not None and track is not slot.origin and track.readyState == "live":
                        slot.feed(speaker.id, track, self.relay)
                    if slot.kind == "audio":
                        slot.gain = listener.original_volume if language is not None else 1.0
        for speaker in self.participants.values():
            if speaker.standin is not None:  # nobody sees the others: not rendered
                speaker.standin.keep(watched[speaker.id])

    def heard_in(self, speaker: Participant, listener: Participant) -> str | None:
        """The language ``listener`` hears ``speaker`` translated into, or None: the original
        (no translation wanted, the same language, or no translation serves the pair)."""
        hear, speaks = listener.hear, speaker.speaks
        if hear is None or speaks is None or hear == speaks:
            return None
        if hear == speaker.translates_to or (speaks, hear) in available_pairs(speaker.session.settings.translation):
            return hear
        return None

    def listeners(self, speaker: Participant, language: str | None) -> list[Participant]:
        """The others who hear ``speaker`` in ``language``."""
        return [p for p in self.others(speaker) if self.heard_in(speaker, p) == language]

    # --- events and translated speech ----------------------------------------------------------
    def _forward(self, speaker: Participant, type: str, fields: dict) -> None:
        if type == "config":  # a changed translation target changes who hears the original how loud
            self.refresh()
        pipeline = EVENT_PIPELINE.get(type)
        if pipeline is None or pipeline not in speaker.share or not speaker.present or "participant" in fields:
            return  # not shared, or itself another participant's event forwarded here
        for listener in self.others(speaker):
            if type == "translation" and listener.hear not in (None, fields.get("target_lang")):
                continue  # a translation into another language than it hears
            listener.session.emit(type, participant=speaker.id, **fields)

    async def _forward_speech(self, speaker: Participant) -> None:
        """A speaker's translated speech (into its ``target``), played to the listeners who hear it."""
        queue = speaker.session.subscribe("speech", maxsize=8)
        while True:
            item = await queue.get()
            self._play(speaker, speaker.translates_to, item["samples"], item["sample_rate"])

    def _play(self, speaker: Participant, language: str, samples: np.ndarray, rate: int) -> list[Participant]:
        """``speaker``'s speech in ``language`` to the listeners who hear it (and to the lips of its
        talking head for them); returns those listeners."""
        listeners = self.listeners(speaker, language)
        if speaker.standin is not None and listeners:
            speaker.standin.speak(language, samples, rate)
        for listener in listeners:
            if listener.session.audio_out is not None and \
                    not listener.session.audio_out.push_audio(samples, rate, "room"):
                listener.session.emit_error("translation", "outbound audio queue is full; "
                                            f"{speaker.display_name or speaker.id}'s speech dropped")
        return listeners

    def _other_languages(self, speaker: Participant) -> set[str]:
        """The languages heard in the room that ``speaker``'s own pipeline does not translate into."""
        return {self.heard_in(speaker, p) for p in self.others(speaker)} - {None, speaker.translates_to}

    async def _translate_for_others(self, speaker: Participant) -> None:
        """Each final transcript of ``speaker`` (recognised once, by its translation pipeline),
        translated and spoken into every other language heard in the room: once per language."""
        queue = speaker.session.subscribe("transcript", maxsize=8)
        models = None
        while True:
            item = await queue.get()
            languages = self._other_languages(speaker)
            if not languages or "audio" not in item:
                continue
            if models is None:
                from pipelines.translation.pipeline import TranslationPipeline  # the models are its
                models = await speaker.session.models.shared(TranslationPipeline)
            await asyncio.gather(*(self._translate_into(speaker, models, item, language)
                                   for language in sorted(languages)))

    async def _translate_into(self, speaker: Participant, models, item: dict, language: str) -> None:
        source, timings = item["language"], {}

        async def timed(stage, call):
            t0 = time.perf_counter()
            result = await call
            timings[stage] = round((time.perf_counter() - t0) * 1000, 1)
            speaker.session.observe_inference("translation", stage, time.perf_counter() - t0)
            return result
        try:
            if await asyncio.to_thread(models.translates_text, source, language):
                text = await timed("mt", models.translate(item["text"], source, language))
            else:  # Whisper's translate task, from the audio itself (into English)
                text = (await timed("mt", models.recognize(source, item["audio"], "translate"))).text
            if not text:
                return
            samples, rate = await timed("tts", models.synthesize(text, language))
        except Exception as exc:  # one bad utterance must not end the room's translation
            log.exception("room translation into %s failed", language)
            for listener in self.listeners(speaker, language):
                listener.session.emit_error("translation", f"{speaker.display_name or speaker.id}'s speech "
                                            f"into {language}: {type(exc).__name__}: {exc}")
            return
        listeners = self._play(speaker, language, samples, rate)
        latency = round((time.monotonic() - item["speech_end_time"]) * 1000, 1)
        for listener in listeners:
            listener.session.emit("translation", participant=speaker.id, source_text=item["text"], text=text,
                                  source_lang=source, target_lang=language, final=True,
                                  utterance=item["utterance"], timings_ms=timings,
                                  audio_seconds=round(len(samples) / rate, 3), latency_ms=latency)


class RoomRegistry:
    def __init__(self, settings):
        self.settings = settings  # read when a room is made: --room-size
        self.rooms: dict[str, Room] = {}

    def check(self, name) -> None:
        """Raises RoomError where joining ``name`` now would fail: a bad name (400), a full room (409)."""
        if not isinstance(name, str) or not ROOM_NAME.fullmatch(name):
            raise RoomError(400, '"room" must be 1 to 64 letters, digits, "-" or "_"')
        room = self.rooms.get(name)
        if len(room.participants if room else ()) >= (room.size if room else self.settings.room_size):
            raise RoomError(409, f"room {name!r} is full ({room.size} participants, --room-size)")

    def join(self, name: str, session, options: dict) -> Participant:
        """``session`` joins room ``name``, made if it does not exist; raises RoomError."""
        self.check(name)
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, self.settings.room_size, self._empty)
        return room.join(session, options)

    def counts(self) -> dict[str, int]:
        """For ``/health``: rooms open now, and the participants in them."""
        return {"rooms": len(self.rooms),
                "room_participants": sum(len(room.participants) for room in self.rooms.values())}

    def _empty(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            log.info("room %s is empty and gone", room.name)
