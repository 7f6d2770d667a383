"""Transports: how a session's media and messages reach the pipelines.

    session.py    Session: the pipelines of one client, the control protocol, lifetime
    webrtc.py     WebRTCSession: a peer connection, its tracks and ``events`` data channel
    websocket.py  SocketSession: PCM16 audio and JSON events over one WebSocket
"""
