"""Media formats and buffers every transport and pipeline share.

    audio.py    the pipelines' sample rate, resampling, PCM16, decoding files to 16 kHz mono
    buffers.py  AudioRing (sample-clocked audio) and LatestFrame (the newest video frame)
"""
