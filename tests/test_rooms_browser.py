"""Rooms on the page: two headless Chromium instances join one room and see each other's video; a
participant without a camera has its tile marked as a talking head."""
from __future__ import annotations

import numpy as np

from client import ArrayAudioTrack
from testing.browser import assert_no_page_errors, chromium_page, open_page, pattern_y4m, wait_sessions
from testing.media import espeak
from tests.test_rooms import room_client

TILE_PLAYING_JS = """() => {
    const video = document.querySelector('#room-tiles .tile video');
    return video && video.videoWidth > 0 && video.currentTime > 0;
}"""


async def test_two_pages_in_one_room_see_each_other(media_server, tmp_path):
    server = media_server.server
    wav, y4m = espeak("en+f3"), pattern_y4m(tmp_path / "pattern.y4m")
    async with chromium_page(tmp_path / "a", wav, y4m) as alice, chromium_page(tmp_path / "b", wav, y4m) as bob:
        await open_page(alice, media_server.url)
        await alice.click("#room-create")  # an unguessable name, put in the page's address: the share link
        await alice.wait_for_function("new URLSearchParams(location.search).get('room')")
        link = alice.url
        room = await alice.input_value("#room-name")
        assert len(room) >= 22 and room in link
        await alice.fill("#display-name", "Alice")
        await alice.click("#start")
        await open_page(bob, link)
        assert await bob.input_value("#room-name") == room
        await bob.fill("#display-name", "Bob")
        await bob.click("#start")
        for page, other in ((alice, "Bob"), (bob, "Alice")):
            await page.wait_for_function(TILE_PLAYING_JS, timeout=30_000)
            assert other in await page.text_content("#room-tiles")
        assert len(server.rooms.rooms[room].participants) == 2
        assert await alice.get_attribute("#room-tiles .tile", "data-avatar") == "false"
        assert not await alice.is_visible("#room-tiles .tile .avatar-label")

        # Cy joins from Python without a camera: the pages label his tile a talking head.
        cy = room_client(media_server.url, room, "Cy", [])
        await cy.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True))
        try:
            tile = f"#room-tiles .tile[data-participant='{cy.session_id}']"
            await alice.wait_for_selector(f"{tile}[data-avatar='true'] .avatar-label", state="visible",
                                          timeout=10_000)
        finally:
            await cy.close()
        await alice.wait_for_selector(tile, state="detached", timeout=10_000)

        await bob.click("#stop")  # leaves: Alice's tile of Bob goes
        await alice.wait_for_function("!document.querySelector('#room-tiles .tile')", timeout=10_000)
        await alice.click("#stop")
        await wait_sessions(server, 0, timeout=10)
        assert not server.rooms.rooms
        assert_no_page_errors(alice)
        assert_no_page_errors(bob)
